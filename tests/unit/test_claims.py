"""Claiming jobs, leases, release and recovery, on each backend."""

from __future__ import annotations

import threading
from datetime import timedelta

from queuectl import config, jobs
from queuectl.jobs import WORKER_LOST
from queuectl.models import JobState, utcnow
from tests.unit.queue_steps import LEASE, claim, enqueue, expire_lease, make_due


def test_claim_takes_highest_priority_then_oldest(engine) -> None:
    for job_id, priority in [("low", 0), ("urgent-1", 5), ("urgent-2", 5), ("lowest", -1),
                             ("low-2", 0)]:
        enqueue(engine, id=job_id, priority=priority)

    order = [claim(engine).id for _ in range(5)]

    assert order == ["urgent-1", "urgent-2", "low", "low-2", "lowest"]


def test_claim_marks_job_processing_and_counts_attempt(engine) -> None:
    enqueue(engine, id="job1")

    claimed = claim(engine, worker_id="worker-a")
    stored = jobs.get_job(engine, "job1")

    assert claimed.attempts == 1
    assert stored.state == JobState.PROCESSING.value
    assert stored.attempts == 1
    assert stored.worker_id == "worker-a"
    assert stored.claim_token == claimed.token
    assert stored.lease_expires_at > utcnow() + timedelta(seconds=LEASE - 60)


def test_claim_skips_jobs_that_are_not_due(engine) -> None:
    enqueue(engine, id="later", delay=3600)
    enqueue(engine, id="now")

    first = jobs.claim_next(engine, "worker-a", None, LEASE)
    second = jobs.claim_next(engine, "worker-a", None, LEASE)

    assert first.id == "now"
    assert second is None


def test_claim_returns_none_on_empty_queue(engine) -> None:
    assert jobs.claim_next(engine, "worker-a", None, LEASE) is None


def test_claim_takes_only_the_named_queues(engine) -> None:
    enqueue(engine, id="mail-1", queue="mail", priority=9)
    enqueue(engine, id="report-1", queue="reports")

    claimed = claim(engine, queues=["reports", "other"])

    assert claimed.id == "report-1"


def test_racing_workers_claim_job_once(engine) -> None:
    # Given one due job and eight workers that reach for it at the same moment
    enqueue(engine, id="only")
    start = threading.Barrier(8)
    claims = []

    def reach(worker: str) -> None:
        start.wait()
        claims.append((worker, jobs.claim_next(engine, worker, None, LEASE)))

    threads = [threading.Thread(target=reach, args=(f"worker-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every claim returned, and exactly one of them got the job
    winners = [worker for worker, claimed in claims if claimed is not None]
    stored = jobs.get_job(engine, "only")
    assert len(claims) == 8
    assert len(winners) == 1
    assert stored.worker_id == winners[0]
    assert stored.attempts == 1


def test_concurrent_workers_never_share_a_job(engine) -> None:
    # Given twelve due jobs and four workers that claim until the queue is empty
    for n in range(12):
        enqueue(engine, id=f"job{n}")
    start = threading.Barrier(4)
    claimed_ids: list[str] = []
    finished: list[str] = []

    def drain(worker: str) -> None:
        start.wait()
        while (claimed := jobs.claim_next(engine, worker, None, LEASE)) is not None:
            claimed_ids.append(claimed.id)
        finished.append(worker)

    threads = [threading.Thread(target=drain, args=(f"worker-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every worker ran until the queue was empty, and every job was claimed once
    assert len(finished) == 4
    assert sorted(claimed_ids) == sorted(f"job{n}" for n in range(12))


def test_renew_lease_extends_expiry(engine) -> None:
    enqueue(engine, id="job1")
    claimed = claim(engine)

    renewed = jobs.renew_lease(engine, claimed, LEASE * 2)

    assert renewed
    assert jobs.get_job(engine, "job1").lease_expires_at > utcnow() + timedelta(seconds=LEASE)


def test_release_returns_job_without_counting_attempt(engine) -> None:
    enqueue(engine, id="job1")
    claimed = claim(engine)

    released = jobs.release(engine, claimed, "interrupted by a forced stop")
    stored = jobs.get_job(engine, "job1")

    assert released
    assert stored.state == JobState.PENDING.value
    assert stored.attempts == 0
    assert stored.last_error == "interrupted by a forced stop"
    assert stored.claim_token is None
    assert stored.run_at <= utcnow()


def test_released_job_can_be_claimed_again(engine) -> None:
    enqueue(engine, id="job1")
    jobs.release(engine, claim(engine), "interrupted by a forced stop")

    again = claim(engine, worker_id="worker-b")

    assert again.id == "job1"
    assert again.attempts == 1


def test_recover_expired_fails_attempt_as_worker_lost(engine) -> None:
    # Given a job whose worker stopped renewing its lease
    enqueue(engine, id="orphan")
    claimed = claim(engine)
    expire_lease(engine, "orphan")

    # When the leases are checked
    recovered = jobs.recover_expired(engine)

    # Then the attempt counts as failed, with a retry pending
    stored = jobs.get_job(engine, "orphan")
    assert [claimed_job.id for claimed_job, _ in recovered] == [claimed.id]
    assert stored.state == JobState.FAILED.value
    assert stored.attempts == 1
    assert stored.last_error == WORKER_LOST
    assert stored.claim_token is None


def test_recover_expired_moves_last_attempt_to_dlq(engine) -> None:
    enqueue(engine, id="orphan", max_retries=1)
    claim(engine)
    expire_lease(engine, "orphan")

    jobs.recover_expired(engine)

    assert jobs.get_job(engine, "orphan").state == JobState.DEAD.value


def test_recover_expired_leaves_live_leases_alone(engine) -> None:
    enqueue(engine, id="alive")
    claimed = claim(engine)

    recovered = jobs.recover_expired(engine)

    assert recovered == []
    assert jobs.get_job(engine, "alive").claim_token == claimed.token


def test_stale_claim_cannot_overwrite_reclaimed_job(engine) -> None:
    # Given worker A lost job1 through lease expiry, and worker B claimed it again
    config.set_value(engine, "backoff_max", "0")
    enqueue(engine, id="job1")
    stale = claim(engine, worker_id="worker-a")
    expire_lease(engine, "job1")
    jobs.recover_expired(engine)
    current = claim(engine, worker_id="worker-b")

    # When worker A tries to record results under its old claim
    completed = jobs.complete(engine, stale, 0, "late output")
    failed = jobs.fail(engine, stale, "exit status 1", 1, None)
    released = jobs.release(engine, stale, "interrupted by a forced stop")
    renewed = jobs.renew_lease(engine, stale, LEASE)

    # Then nothing is recorded and worker B still has the job
    stored = jobs.get_job(engine, "job1")
    assert not completed.recorded
    assert not failed.recorded
    assert not released
    assert not renewed
    assert stored.state == JobState.PROCESSING.value
    assert stored.claim_token == current.token
    assert stored.attempts == 2
    assert stored.output is None


def test_claim_after_completion_cannot_record_again(engine) -> None:
    enqueue(engine, id="job1")
    claimed = claim(engine)
    jobs.complete(engine, claimed, 0, "first")

    again = jobs.fail(engine, claimed, "exit status 1", 1, "second")

    assert not again.recorded
    assert jobs.get_job(engine, "job1").state == JobState.COMPLETED.value


def test_failed_job_is_claimable_once_backoff_elapses(engine) -> None:
    enqueue(engine, id="job1")
    jobs.fail(engine, claim(engine), "exit status 1", 1, None)
    waiting = jobs.claim_next(engine, "worker-a", None, LEASE)

    make_due(engine, "job1")
    retried = claim(engine)

    assert waiting is None
    assert retried.id == "job1"
    assert retried.attempts == 2


def test_dead_worker_running_job_fails_others_requeue(engine) -> None:
    # Given a worker holding a job it runs and a job it claimed ahead
    for job_id in ("running", "ahead"):
        enqueue(engine, id=job_id)
    claimed_jobs = [claim(engine), claim(engine)]

    # When its supervisor recovers them, knowing only "running" had a command running
    recovered = jobs.recover_worker_jobs(engine, "worker-a", "worker lost (killed by SIGKILL)",
                                         running={"running"})

    # Then "running" counts its attempt and "ahead" waits again with its attempt uncounted
    assert {claimed.id: outcome.state for claimed, outcome in recovered} == {
        "running": JobState.FAILED, "ahead": JobState.PENDING}
    running, ahead = jobs.get_job(engine, "running"), jobs.get_job(engine, "ahead")
    assert running.state == JobState.FAILED.value
    assert running.attempts == 1
    assert ahead.state == JobState.PENDING.value
    assert ahead.attempts == 0
    assert ahead.last_error.startswith("worker lost (killed by SIGKILL)")
    assert [claimed.id for claimed in claimed_jobs] == ["running", "ahead"]
