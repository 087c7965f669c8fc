"""Running one job's command: its own process group, a timeout, and a bounded output tail."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from queuectl.procfs import process_stats

SHELL = "/bin/sh"
# Seconds between SIGTERM and SIGKILL when a job's process group is stopped.
KILL_GRACE = 5.0
# Seconds to keep reading output after the shell exits, for children still writing.
DRAIN_AFTER_EXIT = 0.2
READ_SIZE = 65_536


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt."""

    exit_code: int | None
    error: str | None  # None when the attempt succeeded
    output: str
    interrupted: bool = False  # stopped by a forced worker stop, not by its own fault

    @property
    def succeeded(self) -> bool:
        return self.error is None


class OutputTail:
    """The last `limit` bytes written to a stream, and how many bytes came before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0
        self.total = 0  # bytes appended so far, so a reader can tell whether anything is new
        # The worker's heartbeat thread reads the tail while the main thread appends.
        self.lock = threading.Lock()

    def append(self, data: bytes) -> None:
        with self.lock:
            self.total += len(data)
            if self.limit <= 0:
                self.dropped += len(data)
                return
            self.chunks.append(data)
            self.size += len(data)
            while self.size - len(self.chunks[0]) >= self.limit:
                first = self.chunks.popleft()
                self.size -= len(first)
                self.dropped += len(first)

    def text(self) -> str:
        """Decode the tail for storage: invalid UTF-8 and NUL bytes become U+FFFD."""
        with self.lock:
            data = b"".join(self.chunks)
            dropped = self.dropped
        if len(data) > self.limit:
            dropped += len(data) - self.limit
            data = data[len(data) - self.limit:]
        decoded = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        if dropped:
            return f"[{dropped} earlier bytes omitted]\n{decoded}"
        return decoded


def describe_exit(returncode: int) -> tuple[int, str | None]:
    """Return the exit code to record and the error for it (None for success)."""
    if returncode == 0:
        return 0, None
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return 128 + number, f"killed by {name}"
    if returncode == 127:
        return 127, "command not found (exit status 127)"
    if returncode == 126:
        return 126, "command not executable (exit status 126)"
    return returncode, f"exit status {returncode}"


class JobProcess:
    """A job's shell, started with posix_spawn in a new session, its output on one pipe.

    posix_spawn (vfork and exec) costs a fraction of subprocess's fork for a worker with a
    large heap, and a shell command queue starts one process per job.
    """

    # Signals that Python ignores, or that a worker ignores, which exec would pass on.
    RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT)

    def __init__(self, command: str, env: dict[str, str] | None) -> None:
        read_end, write_end = os.pipe()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
        ]
        try:
            self.pid = os.posix_spawn(
                SHELL, [SHELL, "-c", command], os.environ if env is None else env,
                file_actions=actions, setsid=True, setsigdef=self.RESET_SIGNALS,
            )
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.stdout = os.fdopen(read_end, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap the shell if it has exited; return its exit code (negative for a signal)."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        """Block until the shell exits; return its exit code."""
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def stop_process_group(process: JobProcess, grace: float = KILL_GRACE) -> None:
    """Stop every process in the job's group: SIGTERM, then SIGKILL after the grace period."""
    pgid = process.pid  # the job's shell leads its own session and process group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        _signal_group(pgid, signal.SIGKILL)
    # The shell has exited (at most a zombie is left), so this returns at once after the
    # grace period and sets returncode, which the caller reports.
    process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Return whether a process group has a member that has not exited yet.

    Members that exited but wait for their parent to reap them (zombies) do not count:
    orphaned ones are reaped by the supervisor or init in their own time.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(process.pgrp == pgid and process.state != "Z" for process in process_stats())


def run_command(
    command: str,
    timeout: float | None,
    output_limit: int,
    force: threading.Event | None = None,
    env: dict[str, str] | None = None,
    tail: OutputTail | None = None,
    while_running: Callable[[], float | None] | None = None,
) -> Result:
    """Run a command with `sh -c` in a new session and wait for it.

    The command's stdout and stderr are read into one bounded tail, so no amount of output
    blocks it on a full pipe or fills memory. When `timeout` seconds pass, or `force` is set,
    the whole process group is stopped, grandchildren included. A caller that passes its
    own `tail` can read the output while the command runs.

    `while_running`, when given, is called once the command has started, for work to do
    meanwhile. It returns the seconds until it wants to be called again, or None. If it
    raises, the command's process group is stopped and the exception propagates.
    """
    tail = tail if tail is not None else OutputTail(output_limit)
    try:
        process = JobProcess(command, env)
    except OSError as exc:
        return Result(127, f"cannot start {SHELL}: {exc.strerror}", "")
    try:
        stopped = _collect(process, tail, timeout, force, while_running)
    finally:
        process.stdout.close()
    if stopped == "timeout":
        code, _ = describe_exit(process.returncode)
        return Result(code, f"timed out after {_seconds(timeout)} s", tail.text())
    if stopped == "force":
        code, _ = describe_exit(process.returncode)
        return Result(code, "interrupted by a forced stop", tail.text(), interrupted=True)
    code, error = describe_exit(process.returncode)
    return Result(code, error, tail.text())


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _collect(
    process: JobProcess, tail: OutputTail, timeout: float | None,
    force: threading.Event | None, while_running: Callable[[], float | None] | None,
) -> str | None:
    """Read output until the shell exits; return "timeout" or "force" if it was stopped."""
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    pidfd = _open_pidfd(process.pid)
    deadline = time.monotonic() + timeout if timeout else None
    callback_at = time.monotonic() if while_running is not None else None
    pipe_open = True
    try:
        while True:
            if callback_at is not None and time.monotonic() >= callback_at:
                try:
                    delay = while_running()
                except BaseException:
                    stop_process_group(process, grace=0)
                    raise
                callback_at = None if delay is None else time.monotonic() + delay
            if force is not None and force.is_set():
                stop_process_group(process)
                return "force"
            if deadline is not None and time.monotonic() >= deadline:
                stop_process_group(process)
                return "timeout"
            if process.poll() is not None:
                break
            wait = 0.5 if force is not None else 5.0
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            if callback_at is not None:
                wait = min(wait, max(callback_at - time.monotonic(), 0))
            watched = [pidfd] if pidfd is not None else []
            if pipe_open:
                watched.append(fd)
            if pidfd is None:
                wait = min(wait, 0.05)
            ready, _, _ = select.select(watched, [], [], wait)
            if fd in ready:
                pipe_open = _read_available(fd, tail)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _drain(fd, tail, pipe_open)
    return None


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # older kernels: fall back to a short poll


def _read_available(fd: int, tail: OutputTail) -> bool:
    """Read what the pipe contains now; return False at end of file."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            return False
        if not data:
            return False
        tail.append(data)


def _drain(fd: int, tail: OutputTail, pipe_open: bool) -> None:
    """Read the output left after the shell exited, for at most DRAIN_AFTER_EXIT seconds.

    A background child that keeps the pipe open must not hold the worker, so reading stops
    at the deadline and the rest of that child's output is not recorded.
    """
    deadline = time.monotonic() + DRAIN_AFTER_EXIT
    while pipe_open:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return
        pipe_open = _read_available(fd, tail)
