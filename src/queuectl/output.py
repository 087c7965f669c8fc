"""Rendering results: Rich tables on a terminal, tab-separated text when piped, JSON on request.

Only this module and the CLI write to the terminal. Rich is imported only when a table is
drawn, which keeps the commands that print nothing, or print plain text, quick to start.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from queuectl.tables import utcnow

if TYPE_CHECKING:
    from queuectl.models import Job


@dataclass
class Style:
    """How to print: as a Rich table or plain text, with or without colour."""

    color: str = "auto"  # auto, always or never

    def use_rich(self) -> bool:
        if self.color == "always":
            return True
        return sys.stdout.isatty()

    def colored(self) -> bool:
        if self.color == "never" or os.environ.get("NO_COLOR"):
            return False
        return self.color == "always" or sys.stdout.isatty()


def print_json(data: Any) -> None:
    """Write data to stdout as indented JSON."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def iso(value: datetime | None) -> str | None:
    """Format a time as ISO 8601 in UTC, to the second."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def local_time(value: datetime | None) -> str:
    """Format a time in the user's time zone for tables."""
    if value is None:
        return ""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(value: datetime | None, now: datetime | None = None) -> str:
    """Format the time since a moment, such as '4s' or '3m 5s'."""
    if value is None:
        return ""
    seconds = max(0, int(((now or utcnow()) - value).total_seconds()))
    return duration(seconds)


def duration(seconds: float) -> str:
    """Format seconds as '45s', '3m 5s' or '2h 10m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86_400}d {seconds % 86_400 // 3600}h"


def print_table(style: Style, title: str | None, columns: Sequence[str],
                rows: Iterable[Sequence[Any]]) -> None:
    """Print rows as a Rich table on a terminal, or as tab-separated lines otherwise."""
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if not style.use_rich():
        for row in rows:
            sys.stdout.write("\t".join(escape_controls(_one_line(cell)) for cell in row) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # In Rich 15, no_color alone still writes bold and italic escapes. force_terminal=False
    # writes none at all, as NO_COLOR and --color never require.
    colored = style.colored()
    console = Console(no_color=not colored, force_terminal=colored, highlight=False)
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        # Ids and commands are never cut short: they wrap instead.
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not markup: commands and errors are user input, shown as typed.
        table.add_row(*(Text(escape_controls(cell, keep="\n")) for cell in row))
    console.print(table)


def _one_line(cell: str) -> str:
    return cell.replace("\t", " ").replace("\r", " ").replace("\n", " ")


# C0 and C1 control characters and DEL, which can move the cursor or retitle a terminal.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str, keep: str = "") -> str:
    """Show control characters as \\xNN escapes, except those in `keep`.

    Job commands, errors and output come from users and programs: printed raw, an escape
    sequence in them would act on the reader's terminal.
    """
    def replace(match: re.Match) -> str:
        character = match.group()
        return character if character in keep else f"\\x{ord(character):02x}"

    return _CONTROL_CHARACTERS.sub(replace, text)


def job_summary(job: Job) -> dict[str, Any]:
    """Return the fields of a job that listings show, in the stable JSON form."""
    return {
        "id": job.id,
        "state": job.state,
        "command": job.command,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "run_at": iso(job.run_at),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "exit_code": job.exit_code,
        "last_error": job.last_error,
    }


def job_detail(job: Job) -> dict[str, Any]:
    """Return every field of a job, in the stable JSON form."""
    detail = job_summary(job)
    detail.update({
        "timeout": job.timeout,
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "worker_id": job.worker_id,
        "lease_expires_at": iso(job.lease_expires_at),
        "output": job.output,
    })
    return detail


def stderr(message: str) -> None:
    """Write one message line to stderr."""
    sys.stderr.write(message.rstrip("\n") + "\n")
