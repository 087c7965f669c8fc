"""`queuectl top`: a full-screen view of the queue that refreshes about once a second.

`render` turns a snapshot into a Rich renderable and does no I/O, so a test can print one
frame to a string. `run` drives the live screen and reads keys in cbreak mode. It only
ever reads the queue.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from typing import Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from queuectl.models import JobState
from queuectl.output import duration, escape_controls
from queuectl.snapshot import Snapshot

# Seconds between two refreshes of the screen.
REFRESH_INTERVAL = 1.0
# Keys that leave the view.
QUIT_KEYS = ("q", "Q")

STATE_STYLES = {
    JobState.PENDING.value: "yellow",
    JobState.PROCESSING.value: "cyan",
    JobState.COMPLETED.value: "green",
    JobState.FAILED.value: "red",
    JobState.DEAD.value: "bold red",
    JobState.CANCELLED.value: "dim",
}

# C0 and C1 control characters and DEL. Commands and errors are user text, and an escape
# sequence printed raw would move the cursor or change the terminal's state.
def _plain(value: object) -> Text:
    """Return user text as Rich Text: never parsed as markup, on one line, controls escaped."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return Text(escape_controls(text))


def _ago(seconds: float) -> str:
    return f"{duration(max(0.0, seconds))} ago"


def _header(snapshot: Snapshot | None, error: str | None) -> RenderableType:
    grid = Table.grid(expand=True)
    grid.add_column(ratio=1)
    grid.add_column(justify="right")
    updated = snapshot.taken_at.astimezone().strftime("%H:%M:%S") if snapshot else "--:--:--"
    grid.add_row(Text("queuectl top", style="bold"),
                 Text(f"updated {updated}   q quits", style="dim"))
    if snapshot is not None:
        grid.add_row(_plain(snapshot.database), "")
    if error is not None:
        grid.add_row(Text.assemble(("error: ", "bold red"), _plain(error),
                                   (" (retrying)", "dim")), "")
    return grid


def _counts(snapshot: Snapshot) -> RenderableType:
    table = Table(title="Jobs", title_justify="left", title_style="bold", expand=False)
    for state in JobState:
        table.add_column(state.value.upper(), justify="right")
    table.add_column("TOTAL", justify="right")
    cells = [Text(str(snapshot.counts.get(state.value, 0)), style=STATE_STYLES[state.value])
             for state in JobState]
    table.add_row(*cells, Text(str(snapshot.total), style="bold"))
    return table


def _throughput(snapshot: Snapshot) -> RenderableType:
    completed = snapshot.completed_last_minute
    failed = snapshot.failed_last_minute
    line = Text.assemble(
        ("Last minute: ", "bold"),
        (f"{completed} completed/min", "green"), ", ",
        (f"{failed} failed/min", "red" if failed else ""),
    )
    if completed + failed:
        line.append(f", {100 * completed / (completed + failed):.0f}% succeeded")
    return line


def _workers(snapshot: Snapshot) -> RenderableType:
    if not snapshot.workers:
        return Text("No workers running; start some with: queuectl worker start --count 2",
                    style="dim")
    table = Table(title=f"Workers ({len(snapshot.workers)})", title_justify="left",
                  title_style="bold")
    for column in ("WORKER", "HOST", "PID", "QUEUES", "CURRENT JOB", "HEARTBEAT"):
        # Ids are never cut short: they wrap instead.
        table.add_column(column, overflow="fold")
    for worker in snapshot.workers:
        age = (snapshot.taken_at - worker.heartbeat_at).total_seconds()
        current = _plain(worker.current_job) if worker.current_job else Text("idle", style="dim")
        table.add_row(_plain(worker.name), _plain(worker.hostname), str(worker.pid),
                      _plain(worker.queues), current, _ago(age))
    return table


def _failures(snapshot: Snapshot) -> RenderableType:
    if not snapshot.recent_failures:
        return Text("No recent failures", style="dim")
    table = Table(title="Recent failures", title_justify="left", title_style="bold",
                  expand=True)
    table.add_column("ID", overflow="fold")
    table.add_column("QUEUE", overflow="fold")
    table.add_column("STATE")
    table.add_column("ATTEMPTS", justify="right")
    table.add_column("EXIT", justify="right")
    table.add_column("FAILED", no_wrap=True)
    # The error takes the remaining width and is cut with an ellipsis to keep rows short.
    table.add_column("ERROR", ratio=1, no_wrap=True, overflow="ellipsis")
    for job in snapshot.recent_failures:
        age = (snapshot.taken_at - job.updated_at).total_seconds()
        table.add_row(
            _plain(job.id), _plain(job.queue), Text(job.state, style=STATE_STYLES[job.state]),
            f"{job.attempts}/{job.max_retries}",
            "" if job.exit_code is None else str(job.exit_code), _ago(age),
            _plain(job.last_error),
        )
    return table


def render(snapshot: Snapshot | None, error: str | None = None) -> RenderableType:
    """Build one frame: the counts, throughput, workers and recent failures of a snapshot.

    error, when given, is shown under the header, above the last good snapshot if any.
    """
    parts: list[RenderableType] = [_header(snapshot, error)]
    if snapshot is not None:
        parts += [Text(""), _counts(snapshot), _throughput(snapshot), Text(""),
                  _workers(snapshot), Text(""), _failures(snapshot)]
    return Group(*parts)


class KeyReader:
    """Reads single key presses from a terminal without waiting for Enter."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd  # None when stdin is not a terminal: then no key is ever read

    def wait(self, timeout: float) -> str:
        """Return the keys typed within timeout seconds, or "" when none were."""
        if self.fd is None:
            time.sleep(timeout)
            return ""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return ""
        data = os.read(self.fd, 64)
        if not data:  # end of file: the terminal is gone, so stop reading it
            self.fd = None
        return data.decode(errors="replace")


@contextlib.contextmanager
def cbreak_keys(stream=None) -> Iterator[KeyReader]:
    """Put the terminal on stream (default stdin) into cbreak mode, restoring it on exit.

    Cbreak mode delivers each key at once and keeps signals, so Ctrl-C still interrupts.
    """
    import termios
    import tty

    stream = stream if stream is not None else sys.stdin
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None or not os.isatty(fd):
        yield KeyReader(None)
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield KeyReader(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit, so the terminal is restored when top is killed.

    Ctrl-C raises KeyboardInterrupt even where SIGINT was ignored at start, as it is for
    programs that a non-interactive shell starts in the background.
    """

    def leave(_signum, _frame) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, leave)
    previous_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_interrupt)


def run(take_snapshot: Callable[[], Snapshot], describe_error: Callable[[Exception], str],
        console: Console, interval: float = REFRESH_INTERVAL) -> None:
    """Show the live view until a quit key or Ctrl-C (KeyboardInterrupt, left to the caller).

    take_snapshot is called once per refresh. A database error it raises is shown with
    describe_error's message, and the next refresh tries again.
    """
    from sqlalchemy.exc import DBAPIError

    snapshot: Snapshot | None = None
    with _exit_on_sigterm(), cbreak_keys() as keys, \
            Live(console=console, screen=True, auto_refresh=False,
                 redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            error = None
            try:
                snapshot = take_snapshot()
            except DBAPIError as exc:
                error = describe_error(exc)
            live.update(render(snapshot, error), refresh=True)
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                if any(key in QUIT_KEYS for key in keys.wait(remaining)):
                    return
