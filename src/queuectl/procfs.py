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
