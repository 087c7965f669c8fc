"""`queuectl top`: one frame rendered to text, `--once`, and the live view in a terminal.

What top shows comes from queuectl.snapshot, whose queries the dashboard tests run on both
backends, so these tests run on SQLite only.
"""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import sys
import termios
from datetime import datetime, timedelta, timezone

import pytest
from rich.console import Console

from queuectl import jobs
from queuectl.snapshot import JobView, Snapshot, WorkerView
from queuectl.spec import validate_payload
from queuectl.top import render
from tests.conftest import wait_for

# For the tests that read a database.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

TAKEN_AT = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WIDTH = 100


def failed_job(job_id: str, error: str, state: str = "failed", command: str = "false",
               seconds_ago: float = 30) -> JobView:
    return JobView(id=job_id, queue="default", state=state, command=command, attempts=2,
                   max_retries=3, exit_code=1, last_error=error,
                   updated_at=TAKEN_AT - timedelta(seconds=seconds_ago))


def make_snapshot(**changes) -> Snapshot:
    """A snapshot with fixed values: 3 pending, 1 processing, 7 completed, 1 failed, 2 dead."""
    fields = dict(
        taken_at=TAKEN_AT,
        database="postgresql+psycopg://queue:***@db.internal/queue",
        counts={"pending": 3, "processing": 1, "completed": 7, "failed": 1, "dead": 2,
                "cancelled": 0},
        completed_last_minute=12,
        failed_last_minute=3,
        workers=[
            WorkerView(name="worker-1", hostname="build-7", pid=4242, queues="*",
                       current_job="resize-images", started_at=TAKEN_AT - timedelta(hours=1),
                       heartbeat_at=TAKEN_AT - timedelta(seconds=3)),
            WorkerView(name="worker-2", hostname="build-7", pid=4243, queues="mail",
                       current_job=None, started_at=TAKEN_AT - timedelta(hours=1),
                       heartbeat_at=TAKEN_AT - timedelta(seconds=1)),
        ],
        recent_failures=[failed_job("send-report", "exit status 2: no such file"),
                         failed_job("nightly-sync", "timed out after 30s", state="dead",
                                    seconds_ago=125)],
        dead_jobs=[],
    )
    fields.update(changes)
    return Snapshot(**fields)


def render_text(snapshot: Snapshot | None, error: str | None = None, width: int = WIDTH) -> str:
    """Render one frame as the terminal would show it, without colour."""
    console = Console(file=io.StringIO(), width=width, color_system=None, no_color=True,
                      highlight=False)
    console.print(render(snapshot, error))
    return console.file.getvalue()


def line_with(text: str, needle: str) -> str:
    """Return the one line of text that contains needle."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r} is on {len(lines)} lines of:\n{text}"
    return lines[0]


def cells(line: str) -> list[str]:
    """Split a table row into its stripped cells."""
    return [cell.strip() for cell in line.strip().strip("│┃").split("│")]


def test_top_frame_shows_counts_per_state() -> None:
    text = render_text(make_snapshot())
    header = line_with(text, "PENDING")
    values = text.splitlines()[text.splitlines().index(header) + 2]

    assert header.split() == ["┃", "PENDING", "┃", "PROCESSING", "┃", "COMPLETED", "┃",
                              "FAILED", "┃", "DEAD", "┃", "CANCELLED", "┃", "TOTAL", "┃"]
    assert cells(values) == ["3", "1", "7", "1", "2", "0", "14"]


def test_top_frame_shows_throughput_of_last_minute() -> None:
    text = render_text(make_snapshot())

    assert "Last minute: 12 completed/min, 3 failed/min, 80% succeeded" in text


def test_top_frame_shows_workers() -> None:
    text = render_text(make_snapshot())

    assert "Workers (2)" in text
    assert cells(line_with(text, "worker-1")) == ["worker-1", "build-7", "4242", "*",
                                                  "resize-images", "3s ago"]
    assert cells(line_with(text, "worker-2")) == ["worker-2", "build-7", "4243", "mail",
                                                  "idle", "1s ago"]


def test_top_frame_shows_recent_failures_with_errors() -> None:
    text = render_text(make_snapshot())

    assert cells(line_with(text, "send-report")) == [
        "send-report", "default", "failed", "2/3", "1", "30s ago", "exit status 2: no such file"]
    assert cells(line_with(text, "nightly-sync")) == [
        "nightly-sync", "default", "dead", "2/3", "1", "2m 5s ago", "timed out after 30s"]


def test_top_frame_shows_database_without_password() -> None:
    text = render_text(make_snapshot())

    assert "postgresql+psycopg://queue:***@db.internal/queue" in text


def test_top_frame_hints_when_no_workers_or_failures() -> None:
    text = render_text(make_snapshot(workers=[], recent_failures=[]))

    assert "No workers running; start some with: queuectl worker start --count 2" in text
    assert "No recent failures" in text


def test_top_frame_prints_markup_and_escapes_literally() -> None:
    error = "[bold red]not markup[/bold red] \x1b[2J\x07 cleared?"
    text = render_text(make_snapshot(recent_failures=[failed_job("weird", error)]), width=160)

    assert "[bold red]not markup[/bold red] \\x1b[2J\\x07 cleared?" in text
    assert "\x1b" not in text


def test_top_frame_wraps_long_job_id() -> None:
    job_id = "a-very-long-job-id-" + "x" * 40
    text = render_text(make_snapshot(recent_failures=[failed_job(job_id, "boom")]), width=80)
    failures = text.split("Recent failures", 1)[1]
    id_parts = [cells(line)[0] for line in failures.splitlines() if line.startswith("│")]

    assert len(id_parts) > 1  # the id wraps over several lines
    assert "".join(id_parts) == job_id


def test_top_frame_shows_database_error_above_last_snapshot() -> None:
    text = render_text(make_snapshot(), error="cannot reach the database sqlite:///q.db")

    assert "error: cannot reach the database sqlite:///q.db (retrying)" in text
    assert "PENDING" in text


def test_top_frame_without_snapshot_shows_only_error() -> None:
    text = render_text(None, error="cannot reach the database")

    assert "error: cannot reach the database (retrying)" in text
    assert "PENDING" not in text


@sqlite_only
def test_top_once_prints_current_counts(cli, engine) -> None:
    for job_id in ("first", "second"):
        jobs.enqueue(engine, validate_payload({"id": job_id, "command": "true"}))
    claimed = jobs.claim_next(engine, "worker-test", None, 300)
    jobs.complete(engine, claimed, 0, "")

    result = cli("top", "--once", env={"COLUMNS": str(WIDTH)})
    values = result.stdout.splitlines()[result.stdout.splitlines().index(
        line_with(result.stdout, "PENDING")) + 2]

    assert result.returncode == 0, result.stderr
    assert cells(values) == ["1", "0", "1", "0", "0", "0", "2"]
    assert "Last minute: 1 completed/min, 0 failed/min, 100% succeeded" in result.stdout


class Terminal:
    """`queuectl top` running on a pseudo-terminal, as in a real terminal window."""

    def __init__(self, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: run top with the pseudo-terminal as its terminal
            os.execve(sys.executable, [sys.executable, "-m", "queuectl", "top"],
                      {**env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"})
        self.screen = b""
        self.exit_code: int | None = None
        self.attributes = termios.tcgetattr(self.fd)

    def read(self) -> bytes:
        """Return everything top has written so far."""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child has exited and closed the terminal
                break
            if not chunk:
                break
            self.screen += chunk
        return self.screen

    def exited(self) -> bool:
        """Return whether top has exited, keeping its exit code and last output."""
        self.read()
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.pid = 0
        self.exit_code = os.waitstatus_to_exitcode(status)
        return True

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@sqlite_only
@pytest.mark.parametrize(("stop", "exit_code"), [
    (lambda terminal: os.write(terminal.fd, b"q"), 0),
    (lambda terminal: os.write(terminal.fd, b"\x03"), 0),  # Ctrl-C: SIGINT from the terminal
    (lambda terminal: os.kill(terminal.pid, signal.SIGTERM), 128 + signal.SIGTERM),
], ids=["q", "ctrl-c", "sigterm"])
def test_top_stops_and_restores_terminal(queue_env, engine, stop, exit_code) -> None:
    terminal = Terminal(queue_env)
    try:
        wait_for(lambda: b"PENDING" in terminal.read(), timeout=15,
                 message="top to draw its first frame")
        in_cbreak = not termios.tcgetattr(terminal.fd)[3] & termios.ICANON
        drawn = len(terminal.screen)
        # A second frame shows that the refresh goes on while top waits for a key.
        wait_for(lambda: len(terminal.read()) > drawn, timeout=5,
                 message="top to draw a second frame")

        stop(terminal)
        wait_for(terminal.exited, timeout=10, message="top to exit")
        restored = termios.tcgetattr(terminal.fd)
    finally:
        terminal.close()

    assert terminal.exit_code == exit_code
    assert in_cbreak
    assert restored == terminal.attributes
    assert terminal.screen.rstrip(b"\r\n").endswith(b"\x1b[?1049l")  # left the alternate screen
