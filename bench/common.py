"""Measurements that bench/run.py takes the same way for queuectl and for its peers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

WORKERS = 4
# Jobs enqueued one at a time for the latency figure, and idle seconds before each.
LATENCY_SAMPLES = 30
IDLE_BEFORE_JOB = 0.3
# Seconds to wait for a latency job's timestamp before giving up.
LATENCY_TIMEOUT = 60.0


def enqueue_to_done_ms(enqueue: Callable[[str], object], stamp: Path,
                       samples: int = LATENCY_SAMPLES) -> float:
    """Return the median milliseconds from an enqueue call to the end of its command.

    `enqueue` takes a shell command and enqueues it as one job, and idle workers must
    already be running. Each job runs `date +%s.%N > stamp`, so the end is the time that the command
    itself wrote, not the time at which this process noticed the file.
    """
    latencies = []
    for _ in range(samples):
        time.sleep(IDLE_BEFORE_JOB)
        stamp.unlink(missing_ok=True)
        start = time.time()
        enqueue(f"date +%s.%N > {stamp}")
        deadline = time.monotonic() + LATENCY_TIMEOUT
        while not stamp.exists() or not stamp.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no job wrote {stamp} within {LATENCY_TIMEOUT:.0f} s")
            time.sleep(0.0005)
        latencies.append((float(stamp.read_text()) - start) * 1000)
    return statistics.median(latencies)


def peak_rss_mib(pids: Iterable[int]) -> float:
    """Return the largest peak resident set size (VmHWM) of running processes, in MiB."""
    peak = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024
