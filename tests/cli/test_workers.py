"""`queuectl worker start` and `worker stop` with real background processes."""

from __future__ import annotations

import json
from pathlib import Path

from queuectl import jobs, workers
from queuectl.models import JobState
from tests.conftest import wait_for
from tests.jobs import ALWAYS_FAILS


def process_gone(pid: int) -> bool:
    """Return whether no process has this pid, counting a zombie as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_worker_start_runs_jobs_until_stop(cli, engine) -> None:
    # Given three background workers
    started = cli("worker", "start", "--count", "3")
    pids = [int(line) for line in started.stdout.split()]
    try:
        # When a job that fails on its only attempt is enqueued
        cli("enqueue", json.dumps({"id": "job1", "command": ALWAYS_FAILS, "max_retries": 1}))

        # Then a worker runs it into the DLQ, and status lists the three workers
        wait_for(lambda: jobs.get_job(engine, "job1").state == JobState.DEAD.value,
                 timeout=20, message="job1 to be dead")
        wait_for(lambda: len(workers.list_workers(engine)) == 3, timeout=20,
                 message="three registered workers")
        status = json.loads(cli("status", "--json").stdout)
    finally:
        stopped = cli("worker", "stop")
        if not all(process_gone(pid) for pid in pids):
            cli("worker", "stop", "--force")

    assert started.returncode == 0
    assert len(pids) == 3
    assert sorted(worker["pid"] for worker in status["workers"]) == sorted(pids)
    assert stopped.returncode == 0
    assert wait_for(lambda: all(process_gone(pid) for pid in pids), timeout=20,
                    message="the workers to exit")


def test_worker_stop_without_workers_succeeds(cli, queue_env) -> None:
    result = cli("worker", "stop")

    assert result.returncode == 0
    assert "no workers" in result.stderr
