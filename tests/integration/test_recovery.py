"""Recovering from crashes: killed workers, a killed supervisor, and jobs that time out."""

from __future__ import annotations

import json
import os
import signal
import time

from queuectl import config, jobs
from queuectl.models import JobState
from queuectl.spec import validate_payload

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.conftest import count_jobs, job_state
from tests.integration.processes import pids_with_argument, supervisor_records


def lost_worker_error(engine, job_id: str) -> str | None:
    """Return the job's last error if it records a lost worker, else None."""
    error = jobs.get_job(engine, job_id).last_error
    return error if error and error.startswith("worker lost") else None


def test_killed_worker_job_is_retried(cli, engine, workers, tmp_path):
    # Given a worker whose job sleeps on its first attempt only,
    attempt_log = tmp_path / "attempts.log"
    config.set_value(engine, "backoff_base", "1")
    supervisor = workers.start(1)
    payload = {"id": "crash", "command": test_jobs.sleep_on_first_attempt(attempt_log, 5)}
    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: attempt_log.exists(), timeout=10, message="job crash to start")

    # when that worker is killed with SIGKILL in the middle of the job,
    killed = supervisor.worker_pids[0]
    os.kill(killed, signal.SIGKILL)

    # then the attempt fails as "worker lost", a new worker runs the job again, and it completes.
    error = wait_for(lambda: lost_worker_error(engine, "crash"), timeout=10,
                     message="job crash to record its lost worker")
    wait_for(lambda: job_state(engine, "crash") == "completed", timeout=15,
             message="job crash to complete on its second attempt")
    [record] = supervisor_records(supervisor.home)
    [replacement] = record["workers"].values()
    assert error == "worker lost (killed by SIGKILL)"
    assert attempt_log.read_text().splitlines() == ["1", "2"]
    assert jobs.get_job(engine, "crash").attempts == 2
    assert replacement != killed


def test_lease_recovers_job_of_killed_supervisor(cli, engine, workers, tmp_path):
    # Given a 3 s lease and a supervisor whose only worker is in the middle of a job,
    attempt_log = tmp_path / "attempts.log"
    config.set_value(engine, "lease_seconds", "3")
    config.set_value(engine, "backoff_base", "1")
    supervisor = workers.start(1)
    payload = {"id": "orphan", "command": test_jobs.sleep_on_first_attempt(attempt_log, 10)}
    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: attempt_log.exists(), timeout=10, message="job orphan to start")

    # when the supervisor and its workers are killed with SIGKILL, so that nothing
    # records the lost attempt, and a new supervisor starts,
    os.killpg(supervisor.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    workers.start(1)

    # then a new worker recovers the job once its lease expires, and runs it again.
    error = wait_for(lambda: lost_worker_error(engine, "orphan"), timeout=15,
                     message="job orphan to be recovered after its lease expired")
    recovered_after = time.monotonic() - killed_at
    wait_for(lambda: job_state(engine, "orphan") == "completed", timeout=15,
             message="job orphan to complete on its second attempt")
    assert error == "worker lost"
    assert recovered_after < 8, recovered_after
    assert attempt_log.read_text().splitlines() == ["1", "2"]


def test_timeout_kills_job_grandchildren(cli, engine, workers):
    # Given a job with a 2 s timeout whose shell starts a background and a foreground sleep,
    marker = test_jobs.unique_sleep_argument(300)
    command = f"sh -c 'sleep {marker} & sleep {marker}'"
    payload = {"id": "slow", "command": command, "timeout": 2, "max_retries": 1}
    workers.start(1)
    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: len(pids_with_argument(marker)) == 2, timeout=10,
             message="both sleeps of job slow to start")

    # when the timeout passes,
    wait_for(lambda: job_state(engine, "slow") == "dead", timeout=15,
             message="job slow to time out")

    # then the attempt failed as timed out, and no sleep of the job is left.
    job = jobs.get_job(engine, "slow")
    assert job.last_error == "timed out after 2 s"
    assert pids_with_argument(marker) == []


def test_killed_worker_charges_only_running_job(engine, workers, tmp_path):
    # Given one worker draining short jobs that may run once each, so that it claims
    # jobs ahead and records their successes in batches,
    marks = tmp_path / "marks"
    count = 600
    specs = [validate_payload({"id": f"job{number:03d}", "max_retries": 1,
                               "command": f"echo job{number:03d} >> {marks}; sleep 0.005"})
             for number in range(count)]
    supervisor = workers.start(1)
    jobs.enqueue_many(engine, specs)
    wait_for(lambda: count_jobs(engine, "completed") >= 50, timeout=30,
             message="the drain to get going")

    # when that worker is killed with SIGKILL in the middle of the drain,
    os.kill(supervisor.worker_pids[0], signal.SIGKILL)

    # then the drain finishes with no job left processing, only a job that had started
    # can be dead, and the jobs the worker held without running them lost no attempt.
    wait_for(lambda: count_jobs(engine, "completed") + count_jobs(engine, "dead") == count,
             timeout=60, message="every job to finish")
    started = set(marks.read_text().split())
    dead = {job.id for job in jobs.list_jobs(engine, JobState.DEAD, limit=None)}
    assert len(dead) <= 1
    assert dead <= started
    assert started == {spec.id for spec in specs}
