"""Reading the process table from Linux's /proc, for the process groups that jobs run in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/PID/stat that queuectl uses."""

    pid: int
    state: str  # "Z" for a zombie: exited, waiting for its parent to reap it
    ppid: int
    pgrp: int


def process_stats() -> Iterator[ProcessStat]:
    """Yield every process that still exists; those that vanish meanwhile are skipped."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        # The fields after the command name, which is in brackets and may contain spaces:
        # state, ppid, pgrp, ...
        fields = stat.rsplit(b")", 1)[1].split()
        yield ProcessStat(int(name), fields[0].decode(), int(fields[1]), int(fields[2]))


def environment_variable(pid: int, name: str) -> str | None:
    """Return a variable of a process's environment as it was started, or None.

    None also when the process is gone or belongs to another user.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ_file:
            environ = environ_file.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode(errors="replace")
    return None

