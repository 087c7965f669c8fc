"""The services of a job that a worker holds: lease renewal, failure, release, recovery.

These services use Core statements only, so a worker process, which needs nothing else
from the job services, never imports the ORM. `queuectl.jobs` exports them too.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, func, select, update

from queuectl import config
from queuectl.claims import Claim, ClaimConnection, Outcome
from queuectl.db import read_only
from queuectl.enqueueing import notify_new_jobs
from queuectl.tables import CLAIMABLE_STATES, JobState, jobs_table, utcnow

log = logging.getLogger(__name__)

# The error recorded for an attempt whose worker stopped renewing its lease.
WORKER_LOST = "worker lost"


def store_partial_output(engine: Engine, claim: Claim, output: str) -> None:
    """Store the output a running job has written so far, for `queuectl logs --follow`."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == claim.id, jobs_table.c.claim_token == claim.token,
                   jobs_table.c.state == JobState.PROCESSING.value)
            .values(output=output)
        )


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Return the seconds to wait after the attempts-th failed attempt: base ** n, capped."""
    try:
        delay = float(base) ** attempts
    except OverflowError:
        return cap
    return min(delay, cap)


def claim_next(
    engine: Engine, worker_id: str, queues: list[str] | None, lease_seconds: float
) -> Claim | None:
    """Claim the highest-priority, oldest due job and mark it processing, atomically.

    On PostgreSQL the candidate row is locked with FOR UPDATE SKIP LOCKED inside the same
    statement, so a claim skips rows that other workers have locked instead of waiting. On
    SQLite the UPDATE is conditional on the state, and BEGIN IMMEDIATE makes it the only
    writer, so exactly one worker wins. A worker keeps a ClaimConnection instead.
    """
    with ClaimConnection(engine) as connection:
        return connection.claim(worker_id, queues, lease_seconds)


def renew_lease(engine: Engine, claim: Claim, lease_seconds: float) -> bool:
    """Extend the lease on a held job; return False if the claim has been lost."""
    now = utcnow()
    with engine.begin() as conn:
        result = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == claim.id, jobs_table.c.claim_token == claim.token,
                   jobs_table.c.state == JobState.PROCESSING.value)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        )
    return result.rowcount == 1


def complete(engine: Engine, claim: Claim, exit_code: int, output: str | None) -> Outcome:
    """Record a successful attempt; the job becomes completed."""
    with ClaimConnection(engine) as connection:
        return connection.complete(claim, exit_code, output)


def complete_and_claim_next(
    engine: Engine, claim: Claim, exit_code: int, output: str | None,
    worker_id: str, queues: list[str] | None, lease_seconds: float,
) -> tuple[Outcome, Claim | None]:
    """Record a successful attempt and claim the next job in the same transaction.

    A busy worker thus commits once per job instead of twice.
    """
    with ClaimConnection(engine) as connection:
        return connection.complete_and_claim(claim, exit_code, output, worker_id, queues,
                                             lease_seconds)


def fail(
    engine: Engine, claim: Claim, error: str, exit_code: int | None, output: str | None,
) -> Outcome:
    """Record a failed attempt: the job waits out its backoff, or is dead when out of attempts.

    backoff_base and backoff_max are read now, so a change applies to running workers at once.
    """
    now = utcnow()
    values = dict(
        exit_code=exit_code, last_error=error, output=output, updated_at=now,
        claim_token=None, lease_expires_at=None,
    )
    if claim.attempts >= claim.max_retries:
        values.update(state=JobState.DEAD.value, finished_at=now)
        outcome = Outcome(JobState.DEAD)
    else:
        settings = config.effective_values(engine)
        delay = backoff_delay(claim.attempts, settings["backoff_base"], settings["backoff_max"])
        values.update(state=JobState.FAILED.value, run_at=now + timedelta(seconds=delay))
        outcome = Outcome(JobState.FAILED, retry_in=delay)
    if not _update_claimed(engine, claim, values):
        return Outcome(outcome.state, outcome.retry_in, recorded=False)
    return outcome


def release(engine: Engine, claim: Claim, reason: str | None) -> bool:
    """Put an interrupted job back in the queue without counting the attempt.

    The reason becomes the job's last error; None keeps the error it had.
    """
    now = utcnow()
    values = dict(
        state=JobState.PENDING.value, attempts=jobs_table.c.attempts - 1,
        run_at=now, updated_at=now, claim_token=None, lease_expires_at=None,
    )
    if reason is not None:
        values["last_error"] = reason
    return _update_claimed(engine, claim, values)


def _update_claimed(engine: Engine, claim: Claim, values: dict) -> bool:
    """Apply values to a job only while this claim still owns it."""
    with engine.begin() as conn:
        result = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == claim.id, jobs_table.c.claim_token == claim.token,
                   jobs_table.c.state == JobState.PROCESSING.value)
            .values(**values)
        )
        if result.rowcount == 1 and values.get("state") in CLAIMABLE_STATES:
            notify_new_jobs(conn)
    return result.rowcount == 1


def _held_jobs_query():
    return select(
        jobs_table.c.id, jobs_table.c.command, jobs_table.c.queue, jobs_table.c.attempts,
        jobs_table.c.max_retries, jobs_table.c.timeout, jobs_table.c.claim_token,
    ).where(jobs_table.c.state == JobState.PROCESSING.value)


def _held_claims(engine: Engine, query) -> list[Claim]:
    """Return the processing jobs the query selects, each with the token it is held under."""
    with read_only(engine).connect() as conn:
        rows = conn.execute(query).all()
    return [Claim(row.id, row.command, row.queue, row.attempts, row.max_retries, row.timeout,
                  row.claim_token) for row in rows]


def _fail_held_jobs(engine: Engine, query, error: str) -> list[tuple[Claim, Outcome]]:
    """Fail each processing job the query selects, under the claim token it was read with."""
    recovered = []
    for claim in _held_claims(engine, query):
        outcome = fail(engine, claim, error, None, None)
        if outcome.recorded:
            recovered.append((claim, outcome))
    return recovered


def recover_expired(engine: Engine) -> list[tuple[Claim, Outcome]]:
    """Fail every processing job whose lease has expired, as a lost attempt.

    The worker that held such a job has stopped renewing its lease: it died, its host was
    lost, or it cannot reach the database. The attempt counts, then the usual retry or
    dead letter rule applies.
    """
    query = _held_jobs_query().where(jobs_table.c.lease_expires_at < utcnow()).limit(100)
    return _fail_held_jobs(engine, query, WORKER_LOST)


def recover_worker_jobs(
    engine: Engine, worker_id: str, error: str = WORKER_LOST,
    running: set[str] | None = None,
) -> list[tuple[Claim, Outcome]]:
    """Recover the jobs held by a worker known to be dead, without waiting for the lease.

    With `running` None, every held job fails with `error`. Otherwise only the jobs whose
    commands were running fail, and the others return to the queue with their attempt not
    counted: the worker had claimed them ahead and never started them, or had run them
    without recording the result yet. Those are returned with the state PENDING.
    """
    query = _held_jobs_query().where(jobs_table.c.worker_id == worker_id)
    if running is None:
        return _fail_held_jobs(engine, query, error)
    failed = _fail_held_jobs(engine, query.where(jobs_table.c.id.in_(running)), error)
    requeued = []
    for claim in _held_claims(engine, query):
        if release(engine, claim, f"{error}; returned to the queue, attempt not counted"):
            requeued.append((claim, Outcome(JobState.PENDING)))
    return failed + requeued


def next_run_at(engine: Engine, queues: list[str] | None) -> datetime | None:
    """Return when the next pending or failed job becomes due, or None if there is none."""
    query = select(func.min(jobs_table.c.run_at)).where(jobs_table.c.state.in_(CLAIMABLE_STATES))
    if queues:
        query = query.where(jobs_table.c.queue.in_(queues))
    with read_only(engine).connect() as conn:
        value = conn.execute(query).scalar()
    if isinstance(value, str):  # SQLite returns MIN() of a datetime column as text
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def has_unfinished_jobs(engine: Engine, queues: list[str] | None) -> bool:
    """Return whether any job is pending, waiting for a retry, or processing."""
    query = select(jobs_table.c.seq).where(jobs_table.c.state.in_(
        (JobState.PENDING.value, JobState.FAILED.value, JobState.PROCESSING.value)
    ))
    if queues:
        query = query.where(jobs_table.c.queue.in_(queues))
    with read_only(engine).connect() as conn:
        return conn.execute(query.limit(1)).first() is not None

