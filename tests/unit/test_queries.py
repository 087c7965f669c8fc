"""Reading jobs back: one job, listings with filters, and counts per state."""

from __future__ import annotations

import pytest

from queuectl import jobs
from queuectl.errors import InvalidInput, JobNotFound
from queuectl.models import JobState
from tests.unit.queue_steps import claim, enqueue


def test_count_by_state_includes_every_state(engine) -> None:
    counts = jobs.count_by_state(engine)

    assert counts == {state.value: 0 for state in JobState}


def test_count_by_state_follows_transitions(engine) -> None:
    # Given three jobs: one completed, one processing, one pending
    for job_id in ("done", "running", "waiting"):
        enqueue(engine, id=job_id)
    jobs.complete(engine, claim(engine), 0, "")
    claim(engine)

    counts = jobs.count_by_state(engine)

    assert counts[JobState.COMPLETED.value] == 1
    assert counts[JobState.PROCESSING.value] == 1
    assert counts[JobState.PENDING.value] == 1
    assert sum(counts.values()) == 3


def test_get_job_raises_for_unknown_id(engine) -> None:
    with pytest.raises(JobNotFound) as raised:
        jobs.get_job(engine, "nope")

    assert "'nope' not found" in raised.value.message


def test_list_jobs_returns_newest_first(engine) -> None:
    for job_id in ("first", "second", "third"):
        enqueue(engine, id=job_id)

    listed = [job.id for job in jobs.list_jobs(engine)]

    assert listed == ["third", "second", "first"]


def test_list_jobs_filters_by_state(engine) -> None:
    enqueue(engine, id="done")
    enqueue(engine, id="waiting")
    jobs.complete(engine, claim(engine), 0, "")

    pending = [job.id for job in jobs.list_jobs(engine, state=JobState.PENDING)]
    completed = [job.id for job in jobs.list_jobs(engine, state=JobState.COMPLETED)]

    assert pending == ["waiting"]
    assert completed == ["done"]


def test_list_jobs_filters_by_queue(engine) -> None:
    enqueue(engine, id="mail-1", queue="mail")
    enqueue(engine, id="report-1", queue="reports")

    listed = [job.id for job in jobs.list_jobs(engine, queue="mail")]

    assert listed == ["mail-1"]


def test_list_jobs_combines_state_and_queue(engine) -> None:
    enqueue(engine, id="mail-done", queue="mail")
    enqueue(engine, id="mail-waiting", queue="mail")
    enqueue(engine, id="report-waiting", queue="reports")
    jobs.complete(engine, claim(engine), 0, "")

    listed = [job.id for job in jobs.list_jobs(engine, JobState.PENDING, "mail")]

    assert listed == ["mail-waiting"]


def test_list_jobs_applies_limit(engine) -> None:
    for n in range(5):
        enqueue(engine, id=f"job{n}")

    limited = [job.id for job in jobs.list_jobs(engine, limit=2)]
    unlimited = jobs.list_jobs(engine, limit=None)

    assert limited == ["job4", "job3"]
    assert len(unlimited) == 5


@pytest.mark.parametrize(("text", "state"), [
    ("pending", JobState.PENDING),
    ("DEAD", JobState.DEAD),
    (" failed ", JobState.FAILED),
])
def test_parse_state_accepts_any_case(text: str, state: JobState) -> None:
    assert jobs.parse_state(text) is state


def test_parse_state_lists_valid_states() -> None:
    with pytest.raises(InvalidInput) as raised:
        jobs.parse_state("finished")

    assert "pending, processing, completed, failed, dead" in raised.value.message
