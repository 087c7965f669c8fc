"""Job services: enqueue, inspect, and the state transitions that workers drive."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from queuectl import config
from queuectl.claims import Claim, ClaimConnection, Outcome
from queuectl.db import id_chunks, read_only
# Enqueueing lives in its own module, which leaves out the ORM; these names stay here too.
from queuectl.enqueueing import (  # noqa: F401
    NewJob, enqueue, enqueue_many, new_job_id, notify_new_jobs,
)
from queuectl.errors import InvalidInput, InvalidState, JobNotFound
from queuectl.models import CLAIMABLE_STATES, FINAL_STATES, Job, JobState, utcnow
from queuectl.tables import jobs_table

log = logging.getLogger(__name__)

# The error recorded for an attempt whose worker stopped renewing its lease.
WORKER_LOST = "worker lost"


def get_job(engine: Engine, job_id: str) -> Job:
    """Return one job by id, or raise JobNotFound."""
    with Session(read_only(engine), expire_on_commit=False) as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).first()
    if job is None:
        raise JobNotFound(job_id)
    return job


def parse_state(value: str) -> JobState:
    """Return the state a name stands for, or raise InvalidInput listing the states."""
    try:
        return JobState(value.strip().lower())
    except ValueError:
        valid = ", ".join(state.value for state in JobState)
        raise InvalidInput(f"unknown state {value!r}; valid states: {valid}") from None


def list_jobs(
    engine: Engine,
    state: JobState | None = None,
    queue: str | None = None,
    limit: int | None = 50,
) -> list[Job]:
    """Return jobs, newest first, optionally of one state and queue."""
    query = select(Job).order_by(Job.seq.desc())
    if state is not None:
        query = query.where(Job.state == state.value)
    if queue is not None:
        query = query.where(Job.queue == queue)
    if limit is not None:
        query = query.limit(limit)
    with Session(read_only(engine), expire_on_commit=False) as session:
        return list(session.scalars(query))


def count_by_state(engine: Engine) -> dict[str, int]:
    """Return the number of jobs in each state, zero included."""
    counts = {state.value: 0 for state in JobState}
    with read_only(engine).connect() as conn:
        rows = conn.execute(select(Job.state, func.count()).group_by(Job.state))
        for state, count in rows:
            counts[state] = count
    return counts


def retry_dead(engine: Engine, job_ids: list[str]) -> list[str]:
    """Move dead jobs back to pending with their attempts reset; all of them or none."""
    return requeue(engine, job_ids, (JobState.DEAD,), "dlq retry",
                   "run `queuectl dlq list` to see the dead jobs")


def retry(engine: Engine, job_ids: list[str]) -> list[str]:
    """Run failed, dead or cancelled jobs again now, with their attempts reset."""
    return requeue(engine, job_ids, (JobState.FAILED, JobState.DEAD, JobState.CANCELLED),
                   "retry", "run `queuectl list` to see the job ids")


def requeue(engine: Engine, job_ids: list[str], allowed: tuple[JobState, ...], action: str,
            hint: str) -> list[str]:
    """Move jobs in one of the allowed states back to pending, due now, attempts reset.

    Either every job moves or none does: an unknown id or a job in another state raises.
    """
    now = utcnow()
    allowed_values = {state.value for state in allowed}
    with Session(engine) as session, session.begin():
        found = _jobs_by_id(session, job_ids, hint)
        for job in found.values():
            if job.state not in allowed_values:
                names = " or ".join(sorted(allowed_values))
                raise InvalidState(
                    f"job {job.id!r} is {job.state}, not {names}; `{action}` takes only such jobs"
                )
        for job in found.values():
            job.state = JobState.PENDING.value
            job.attempts = 0
            job.run_at = now
            job.updated_at = now
            job.finished_at = None
        session.flush()
        notify_new_jobs(session.connection())
    for job_id in job_ids:
        log.info("job %s moved back to pending (%s)", job_id, action,
                 extra={"job_id": job_id, "action": action.replace(" ", "_")})
    return job_ids


def _jobs_by_id(session: Session, job_ids: list[str], hint: str) -> dict[str, Job]:
    """Load jobs by id, in the order given, or raise JobNotFound for the first missing one."""
    found: dict[str, Job] = {}
    for chunk in id_chunks(job_ids):
        found.update((job.id, job) for job in session.scalars(select(Job).where(Job.id.in_(chunk))))
    for job_id in job_ids:
        if job_id not in found:
            raise JobNotFound(job_id, hint=hint)
    return {job_id: found[job_id] for job_id in job_ids}


def cancel(engine: Engine, job_ids: list[str]) -> dict[str, str]:
    """Cancel jobs that have not finished; return each id with the state it was in.

    A waiting job never runs. A running job becomes cancelled at once, and its worker
    stops the command's process group when its next lease renewal finds the claim gone.
    """
    now = utcnow()
    previous: dict[str, str] = {}
    with Session(engine) as session, session.begin():
        found = _jobs_by_id(session, job_ids, "run `queuectl list` to see the job ids")
        for job in found.values():
            if job.state in FINAL_STATES:
                raise InvalidState(
                    f"job {job.id!r} is already {job.state}; only pending, failed or "
                    "processing jobs can be cancelled"
                )
        for job in found.values():
            previous[job.id] = job.state
            job.state = JobState.CANCELLED.value
            job.updated_at = now
            job.finished_at = now
            job.claim_token = None
            job.lease_expires_at = None
            if previous[job.id] == JobState.PROCESSING.value:
                job.last_error = "cancelled while running"
    for job_id, state in previous.items():
        log.info("job %s cancelled (was %s)", job_id, state,
                 extra={"job_id": job_id, "action": "cancel"})
    return previous


def delete_finished(engine: Engine, states: tuple[JobState, ...],
                    older_than: timedelta | None = None) -> int:
    """Delete jobs in the given final states, optionally only those finished before a cutoff."""
    values = [state.value for state in states]
    assert set(values) <= set(FINAL_STATES), "only finished jobs may be deleted"
    condition = jobs_table.c.state.in_(values)
    if older_than is not None:
        condition = condition & (jobs_table.c.updated_at < utcnow() - older_than)
    with engine.begin() as conn:
        result = conn.execute(jobs_table.delete().where(condition))
    return result.rowcount


def states_of(engine: Engine, job_ids: list[str]) -> dict[str, str]:
    """Return the current state of each job; raise JobNotFound for an unknown id."""
    with Session(read_only(engine)) as session:
        found = _jobs_by_id(session, job_ids, "run `queuectl list` to see the job ids")
        return {job_id: job.state for job_id, job in found.items()}


def store_partial_output(engine: Engine, claim: Claim, output: str) -> None:
    """Store the output a running job has written so far, for `queuectl logs --follow`."""
    with engine.begin() as conn:
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == claim.id, jobs_table.c.claim_token == claim.token,
                   jobs_table.c.state == JobState.PROCESSING.value)
            .values(output=output)
        )


def dead_job_ids(engine: Engine) -> list[str]:
    """Return the ids of every job in the DLQ, oldest first."""
    with read_only(engine).connect() as conn:
        return list(conn.scalars(
            select(Job.id).where(Job.state == JobState.DEAD.value).order_by(Job.seq)
        ))


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


def _fail_held_jobs(engine: Engine, query, error: str) -> list[tuple[Claim, Outcome]]:
    """Fail each processing job the query selects, under the claim token it was read with."""
    with read_only(engine).connect() as conn:
        rows = conn.execute(query).all()
    recovered = []
    for row in rows:
        claim = Claim(row.id, row.command, row.queue, row.attempts, row.max_retries,
                      row.timeout, row.claim_token)
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
    engine: Engine, worker_id: str, error: str = WORKER_LOST
) -> list[tuple[Claim, Outcome]]:
    """Fail the jobs held by a worker known to be dead, without waiting for the lease."""
    query = _held_jobs_query().where(jobs_table.c.worker_id == worker_id)
    return _fail_held_jobs(engine, query, error)


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
    query = select(Job.seq).where(Job.state.in_(
        (JobState.PENDING.value, JobState.FAILED.value, JobState.PROCESSING.value)
    ))
    if queues:
        query = query.where(Job.queue.in_(queues))
    with read_only(engine).connect() as conn:
        return conn.execute(query.limit(1)).first() is not None

