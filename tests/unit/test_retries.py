"""Recording results: completion, retry backoff, the dead letter queue, and retrying from it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from queuectl import config, jobs
from queuectl.errors import InvalidState, JobNotFound
from queuectl.jobs import backoff_delay
from queuectl.models import JobState, utcnow
from queuectl.spec import MAX_PRIORITY
from tests.tables import table_contents
from tests.unit.queue_steps import LEASE, claim, enqueue, make_due


def test_complete_records_success(engine) -> None:
    enqueue(engine, id="job1")
    claimed = claim(engine)

    outcome = jobs.complete(engine, claimed, 0, "hello\n")
    stored = jobs.get_job(engine, "job1")

    assert outcome.state is JobState.COMPLETED
    assert stored.state == JobState.COMPLETED.value
    assert stored.exit_code == 0
    assert stored.output == "hello\n"
    assert stored.last_error is None
    assert stored.finished_at is not None
    assert stored.claim_token is None
    assert stored.lease_expires_at is None


def test_failure_records_error_and_waits_base_seconds(engine) -> None:
    enqueue(engine, id="job1")
    claimed = claim(engine)
    before = utcnow()

    outcome = jobs.fail(engine, claimed, "exit status 3", 3, "boom\n")
    stored = jobs.get_job(engine, "job1")

    assert outcome.state is JobState.FAILED
    assert outcome.retry_in == 2.0
    assert stored.state == JobState.FAILED.value
    assert stored.exit_code == 3
    assert stored.last_error == "exit status 3"
    assert stored.output == "boom\n"
    assert before + timedelta(seconds=2) <= stored.run_at <= utcnow() + timedelta(seconds=2)


def test_backoff_grows_as_base_to_the_attempt(engine) -> None:
    # Given backoff_base 3 and a job that fails three times in a row
    config.set_value(engine, "backoff_base", "3")
    enqueue(engine, id="job1", max_retries=4)
    delays = []
    for _ in range(3):
        delays.append(jobs.fail(engine, claim(engine), "exit status 1", 1, None).retry_in)
        make_due(engine, "job1")

    # Then the waits are 3 ** 1, 3 ** 2 and 3 ** 3 seconds
    assert delays == [3.0, 9.0, 27.0]


def test_backoff_is_capped_by_backoff_max(engine) -> None:
    config.set_value(engine, "backoff_base", "10")
    config.set_value(engine, "backoff_max", "5")
    enqueue(engine, id="job1")

    outcome = jobs.fail(engine, claim(engine), "exit status 1", 1, None)

    assert outcome.retry_in == 5.0


def test_backoff_base_is_read_when_failure_is_handled(engine) -> None:
    # Given a job claimed while backoff_base is 2
    enqueue(engine, id="job1")
    claimed = claim(engine)

    # When the base changes while the job runs, and then the job fails
    config.set_value(engine, "backoff_base", "4")
    outcome = jobs.fail(engine, claimed, "exit status 1", 1, None)

    # Then the new base applies to this failure
    assert outcome.retry_in == 4.0


@pytest.mark.parametrize(("attempts", "base", "cap", "expected"), [
    (1, 2, 3600, 2.0),
    (2, 2, 3600, 4.0),
    (3, 2, 3600, 8.0),
    (1, 1, 3600, 1.0),
    (10, 2, 60, 60.0),
    (2, 1.5, 3600, 2.25),
    (5000, 1000, 3600, 3600.0),  # 1000 ** 5000 overflows a float
])
def test_backoff_delay_is_base_power_attempts_capped(attempts, base, cap, expected) -> None:
    assert backoff_delay(attempts, base, cap) == expected


def test_failed_job_moves_to_dlq_after_max_retries(engine) -> None:
    # Given a job with max_retries 3 that fails whenever it runs, with no backoff
    config.set_value(engine, "backoff_max", "0")
    enqueue(engine, id="job1", max_retries=3)
    outcomes = []

    # When workers run it until no claim is possible
    while (claimed := jobs.claim_next(engine, "worker-a", None, LEASE)) is not None:
        outcomes.append(jobs.fail(engine, claimed, "exit status 1", 1, None).state)

    # Then it ran three times, and the third failure made it dead
    stored = jobs.get_job(engine, "job1")
    assert outcomes == [JobState.FAILED, JobState.FAILED, JobState.DEAD]
    assert stored.state == JobState.DEAD.value
    assert stored.attempts == 3
    assert stored.finished_at is not None


def test_job_with_one_attempt_dies_on_first_failure(engine) -> None:
    enqueue(engine, id="job1", max_retries=1)

    outcome = jobs.fail(engine, claim(engine), "exit status 1", 1, None)

    assert outcome.state is JobState.DEAD
    assert outcome.retry_in is None


def test_job_keeps_max_retries_it_was_enqueued_with(engine) -> None:
    # Given a job enqueued with the default of 3 attempts
    config.set_value(engine, "backoff_max", "0")
    enqueue(engine, id="job1")

    # When the setting drops to 1 before the job first fails
    config.set_value(engine, "max_retries", "1")
    outcome = jobs.fail(engine, claim(engine), "exit status 1", 1, None)

    # Then the job still has attempts left
    assert outcome.state is JobState.FAILED


def test_undecodable_output_is_stored_readable(engine) -> None:
    from queuectl.execution import run_command

    enqueue(engine, id="job1")
    result = run_command("printf 'ok\\377\\000end'", None, 1024)

    jobs.complete(engine, claim(engine), result.exit_code, result.output)

    assert jobs.get_job(engine, "job1").output == "ok\ufffd\ufffdend"


def make_dead(engine, job_id: str) -> None:
    """Enqueue a job with one attempt and fail that attempt, so the job is dead."""
    # The highest priority makes this job the one claimed, whatever else is queued.
    enqueue(engine, id=job_id, max_retries=1, priority=MAX_PRIORITY)
    jobs.fail(engine, claim(engine), "exit status 1", 1, None)


def test_retry_dead_resets_attempts_and_makes_job_due(engine) -> None:
    make_dead(engine, "job1")

    jobs.retry_dead(engine, ["job1"])
    stored = jobs.get_job(engine, "job1")

    assert stored.state == JobState.PENDING.value
    assert stored.attempts == 0
    assert stored.finished_at is None
    assert stored.run_at <= utcnow()


def test_retried_job_runs_again_with_full_attempts(engine) -> None:
    make_dead(engine, "job1")
    jobs.retry_dead(engine, ["job1"])

    again = claim(engine)

    assert again.id == "job1"
    assert again.attempts == 1


def test_retry_dead_moves_several_jobs(engine) -> None:
    make_dead(engine, "job1")
    make_dead(engine, "job2")

    moved = jobs.retry_dead(engine, ["job1", "job2"])

    assert moved == ["job1", "job2"]
    assert jobs.count_by_state(engine)[JobState.PENDING.value] == 2


def test_retry_dead_unknown_id_changes_nothing(engine) -> None:
    make_dead(engine, "job1")
    before = table_contents(engine)

    with pytest.raises(JobNotFound) as raised:
        jobs.retry_dead(engine, ["job1", "missing"])

    assert raised.value.job_id == "missing"
    assert table_contents(engine) == before


def test_retry_dead_live_job_changes_nothing(engine) -> None:
    make_dead(engine, "job1")
    enqueue(engine, id="waiting")
    before = table_contents(engine)

    with pytest.raises(InvalidState) as raised:
        jobs.retry_dead(engine, ["job1", "waiting"])

    assert "'waiting' is pending" in raised.value.message
    assert table_contents(engine) == before
