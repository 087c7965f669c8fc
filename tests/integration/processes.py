"""Finding, checking and killing the processes that integration tests start, through /proc."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def process_gone(pid: int) -> bool:
    """Return whether no process has this pid, counting a zombie as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the command name, which is in brackets and may contain spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state == "Z"


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read_proc(pid: int, name: str) -> list[bytes]:
    """Return a NUL-separated /proc file of a process, or [] if it is gone or unreadable."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().split(b"\0")
    except OSError:
        return []


def pids_with_argument(argument: str) -> list[int]:
    """Return the live processes that have `argument` as one of their command-line words."""
    expected = argument.encode()
    return [pid for pid in _all_pids()
            if expected in _read_proc(pid, "cmdline") and not process_gone(pid)]


def pids_in_home(home: Path) -> list[int]:
    """Return the live processes started with QUEUECTL_HOME=home, except this one.

    Supervisors, workers and the jobs they run all inherit the variable, so this finds
    every process a test started, including jobs orphaned by a killed worker.
    """
    entry = f"QUEUECTL_HOME={home}".encode()
    own = os.getpid()
    return [pid for pid in _all_pids()
            if pid != own and entry in _read_proc(pid, "environ") and not process_gone(pid)]


def supervisor_records(home: Path) -> list[dict]:
    """Return the PID records that the supervisors of a home wrote under its run folder."""
    records = []
    for path in sorted((home / "run").glob("supervisor-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # removed or being replaced by its supervisor
    return records


def kill_everything_in_home(home: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process of a home, the recorded supervisors and workers included.

    Returns the pids that were still alive and had to be killed.
    """
    recorded = set()
    for record in supervisor_records(home):
        recorded.add(record["pid"])
        recorded.update(record.get("workers", {}).values())
    recorded = {pid for pid in recorded if _is_queuectl(pid)}
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        alive = set(pids_in_home(home)) | {pid for pid in recorded if not process_gone(pid)}
        if not alive or time.monotonic() >= deadline:
            return sorted(killed)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= alive
        time.sleep(0.05)


def _is_queuectl(pid: int) -> bool:
    """Return whether pid runs queuectl now, so a reused pid is never killed."""
    return b"queuectl" in b" ".join(_read_proc(pid, "cmdline"))
