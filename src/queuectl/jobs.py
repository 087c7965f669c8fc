"""Job services: enqueue, inspect, and the state transitions that workers drive."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

# The services of a held job live in their own module, which leaves out the ORM.
from queuectl.attempts import (  # noqa: F401
    WORKER_LOST, backoff_delay, claim_next, complete, complete_and_claim_next, fail,
    has_unfinished_jobs, next_run_at, recover_expired, recover_worker_jobs, release,
    renew_lease, store_partial_output,
)
from queuectl.claims import Claim, Outcome  # noqa: F401
from queuectl.db import id_chunks, read_only
# Enqueueing lives in its own module, which leaves out the ORM; these names stay here too.
from queuectl.enqueueing import (  # noqa: F401
    NewJob, enqueue, enqueue_many, new_job_id, notify_new_jobs,
)
from queuectl.errors import InvalidInput, InvalidState, JobNotFound
from queuectl.models import FINAL_STATES, Job, JobState, utcnow
from queuectl.tables import jobs_table

log = logging.getLogger(__name__)



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


def dead_job_ids(engine: Engine) -> list[str]:
    """Return the ids of every job in the DLQ, oldest first."""
    with read_only(engine).connect() as conn:
        return list(conn.scalars(
            select(Job.id).where(Job.state == JobState.DEAD.value).order_by(Job.seq)
        ))
