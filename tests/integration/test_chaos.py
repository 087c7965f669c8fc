"""A worker fleet under random SIGKILLs: every job still completes, none runs twice needlessly."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import Counter

import pytest

from tests.conftest import wait_for
from tests.integration.processes import kill_everything_in_home, supervisor_records
from tests.jobs import append_job_id

JOBS = 300
WORKERS = 4
# Kills stop after this many seconds, so the test stays bounded on a slow machine.
KILL_PERIOD = 40.0
LOST_JOB = re.compile(r"job (\S+) (?:held by the lost|recovered from a lost)")


@pytest.mark.slow
def test_random_worker_kills_lose_no_job(cli, queue_env, tmp_path):
    # Given 300 jobs that each append their id to a file, and 4 workers with short leases
    home = tmp_path / "home"
    ran = tmp_path / "ran.txt"
    assert cli("config", "set", "lease_seconds", "3").returncode == 0
    assert cli("config", "set", "backoff_base", "1").returncode == 0
    assert cli("config", "set", "max_retries", "20").returncode == 0
    lines = "".join(
        json.dumps({"id": f"chaos-{n:03d}", "command": f"sleep 0.2; {append_job_id(ran)}"}) + "\n"
        for n in range(JOBS)
    )
    assert cli("enqueue", "--file", "-", input=lines).returncode == 0
    try:
        assert cli("worker", "start", "--count", str(WORKERS)).returncode == 0

        # When a random worker is SIGKILLed about once a second while the queue drains
        kills = _kill_random_workers(cli, home, random.Random(1234))

        # Then every job completes and none is left processing
        wait_for(lambda: _finished(cli), timeout=90, interval=0.5, message="the queue to drain")
    finally:
        cli("worker", "stop", "--timeout", "10")
        kill_everything_in_home(home)
    listing = json.loads(cli("list", "--limit", "0", "--json").stdout)
    states = Counter(job["state"] for job in listing)
    assert states == {"completed": JOBS}
    assert kills > 0

    # And a job ran twice only if the worker running it was killed
    counts = Counter(ran.read_text().split())
    assert set(counts) == {f"chaos-{n:03d}" for n in range(JOBS)}
    lost = set(LOST_JOB.findall((home / "worker.log").read_text()))
    repeated = {job_id for job_id, count in counts.items() if count > 1}
    assert repeated <= lost


def _finished(cli) -> bool:
    status = json.loads(cli("status", "--json").stdout)
    return status["jobs"]["completed"] == JOBS


def _kill_random_workers(cli, home, chooser: random.Random) -> int:
    """SIGKILL a random worker child about once a second until the jobs finish."""
    kills = 0
    deadline = time.monotonic() + KILL_PERIOD
    while time.monotonic() < deadline and not _finished(cli):
        pids = [pid for record in supervisor_records(home)
                for pid in record.get("workers", {}).values()]
        if pids:
            try:
                os.kill(chooser.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(1.0)
    return kills
