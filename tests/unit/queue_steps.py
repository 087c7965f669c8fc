"""Short steps that unit tests repeat: enqueue a job, claim it, age its lease or backoff."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, update

from queuectl import jobs
from queuectl.jobs import Claim, NewJob
from queuectl.models import Job, utcnow
from queuectl.spec import validate_payload

# Seconds of lease that a test claim takes: long enough never to expire during a test.
LEASE = 300.0


def enqueue(engine: Engine, command: str = "true", **fields: Any) -> NewJob:
    """Validate a job object built from keyword fields, enqueue it, and return the job."""
    return jobs.enqueue(engine, validate_payload({"command": command, **fields}))


def claim(engine: Engine, worker_id: str = "worker-a", queues: list[str] | None = None) -> Claim:
    """Claim the next due job, failing the test when there is none."""
    claimed = jobs.claim_next(engine, worker_id, queues, LEASE)
    assert claimed is not None, "expected a due job to claim"
    return claimed


def expire_lease(engine: Engine, job_id: str) -> None:
    """Move a processing job's lease expiry into the past, as if its worker had died."""
    _set(engine, job_id, lease_expires_at=utcnow() - timedelta(seconds=1))


def make_due(engine: Engine, job_id: str) -> None:
    """Move a job's run_at to now, ending a retry backoff or a delay at once."""
    _set(engine, job_id, run_at=utcnow())


def _set(engine: Engine, job_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(Job.__table__).where(Job.__table__.c.id == job_id).values(**values))
