"""Stopping workers: gracefully, by force, and what `status` shows after a worker is killed."""

from __future__ import annotations

import json
import os
import signal

from queuectl import jobs

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.conftest import job_state
from tests.integration.processes import pids_with_argument, process_gone


def listed_worker_pids(cli) -> list[int]:
    """Return the pids of the workers that `queuectl status --json` lists."""
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return [worker["pid"] for worker in json.loads(result.stdout)["workers"]]


def test_graceful_stop_waits_for_running_job(cli, engine, workers):
    # Given a worker running a two-second job,
    supervisor = workers.start(1)
    assert cli("enqueue", '{"id":"nap","command":"sleep 2"}').returncode == 0
    wait_for(lambda: job_state(engine, "nap") == "processing", timeout=10,
             message="job nap to start")

    # when the workers are stopped gracefully,
    stopped = workers.stop()

    # then the job completed first, and no worker process is left when `stop` returns.
    job = jobs.get_job(engine, "nap")
    assert stopped.returncode == 0, stopped.stderr
    assert job.state == "completed"
    assert job.exit_code == 0
    assert process_gone(supervisor.pid)
    assert all(process_gone(pid) for pid in supervisor.worker_pids)


def test_forced_stop_requeues_killed_job(cli, engine, workers):
    # Given a worker running a long job that forks a child,
    marker = test_jobs.unique_sleep_argument(30)
    payload = {"id": "long", "command": f"sleep {marker} & sleep {marker}"}
    supervisor = workers.start(1)
    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: len(pids_with_argument(marker)) == 2, timeout=10,
             message="both sleeps of job long to start")

    # when the workers are stopped by force,
    stopped = workers.stop("--force", timeout=20)

    # then the job's whole process group is gone and the job waits again, attempt uncounted.
    job = jobs.get_job(engine, "long")
    assert stopped.returncode == 0, stopped.stderr
    assert pids_with_argument(marker) == []
    assert process_gone(supervisor.pid)
    assert job.state == "pending"
    assert job.attempts == 0
    assert job.last_error == "interrupted by a forced stop"


def test_status_stops_listing_killed_worker(cli, engine, workers):
    # Given two workers that `status` lists,
    supervisor = workers.start(2)
    wait_for(lambda: len(listed_worker_pids(cli)) == 2, timeout=10,
             message="status to list two workers")
    killed, survivor = supervisor.worker_pids

    # when one of them is killed with SIGKILL,
    os.kill(killed, signal.SIGKILL)

    # then `status` soon lists only the live one (and the replacement the supervisor starts).
    wait_for(lambda: killed not in listed_worker_pids(cli), timeout=10, interval=0.2,
             message=f"status to stop listing the killed worker {killed}")
    assert survivor in listed_worker_pids(cli)
