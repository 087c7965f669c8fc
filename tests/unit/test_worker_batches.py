"""A worker that claims short jobs ahead and records their successes in batches."""

from __future__ import annotations

import os
import threading

import pytest

from queuectl import jobs
from queuectl.models import JobState
from queuectl.workers import Worker
from tests.conftest import wait_for
from tests.unit.queue_steps import enqueue


@pytest.fixture
def run_worker(engine):
    """Start an in-process burst worker in a thread; return the thread."""
    threads = []

    def start() -> threading.Thread:
        worker = Worker("worker-id", "worker-1", None, True, os.getppid())
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.join(timeout=30)


def states(engine, job_ids: list[str]) -> list[str]:
    found = jobs.states_of(engine, job_ids)
    return [found[job_id] for job_id in job_ids]


def test_burst_worker_runs_each_short_job_once(engine, run_worker, tmp_path) -> None:
    marks = tmp_path / "marks"
    ids = [f"job{number}" for number in range(40)]
    for job_id in ids:
        enqueue(engine, f"echo {job_id} >> {marks}", id=job_id)

    run_worker().join(timeout=60)

    assert states(engine, ids) == [JobState.COMPLETED.value] * len(ids)
    assert sorted(marks.read_text().split()) == sorted(ids)
    assert all(jobs.get_job(engine, job_id).attempts == 1 for job_id in ids)


def test_jobs_claimed_ahead_return_behind_long_job(engine, run_worker) -> None:
    # Given short jobs, a long one, and more short jobs queued behind it
    before = [f"before{number}" for number in range(3)]
    after = [f"after{number}" for number in range(4)]
    for job_id in before:
        enqueue(engine, id=job_id)
    enqueue(engine, "sleep 3", id="long")
    for job_id in after:
        enqueue(engine, id=job_id)

    # When one worker runs them
    thread = run_worker()

    # Then, once the long job has run a while, the jobs after it wait in the queue again
    wait_for(lambda: jobs.get_job(engine, "long").state == JobState.PROCESSING.value,
             message="the long job to start")
    wait_for(lambda: states(engine, after) == [JobState.PENDING.value] * len(after),
             timeout=10, message="the jobs claimed ahead to be released")
    assert all(jobs.get_job(engine, job_id).attempts == 0 for job_id in after)
    thread.join(timeout=60)
    assert states(engine, before + ["long"] + after) == [JobState.COMPLETED.value] * 8
    assert all(jobs.get_job(engine, job_id).attempts == 1 for job_id in after)


def test_success_recorded_while_next_job_runs(engine, run_worker) -> None:
    enqueue(engine, id="short")
    enqueue(engine, "sleep 3", id="long")

    thread = run_worker()

    wait_for(lambda: jobs.get_job(engine, "long").state == JobState.PROCESSING.value,
             message="the long job to start")
    wait_for(lambda: jobs.get_job(engine, "short").state == JobState.COMPLETED.value,
             timeout=1, message="the short job's success to be recorded")
    assert jobs.get_job(engine, "long").state == JobState.PROCESSING.value
    thread.join(timeout=60)
