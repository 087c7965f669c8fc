"""Adding jobs to the queue: one job, or many in one transaction.

This module and its imports leave out the ORM, so `queuectl enqueue` starts quickly.
`queuectl.jobs` exports the same functions beside the other job services.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError

from queuectl import config
from queuectl.db import id_chunks, read_only
from queuectl.errors import DuplicateJob
from queuectl.spec import JobSpec
from queuectl.tables import JobState, jobs_table, utcnow


def new_job_id() -> str:
    """Return a fresh job id: short enough to type, random enough never to collide."""
    return uuid.uuid4().hex[:12]


def _job_row(spec: JobSpec, default_retries: int, now: datetime) -> dict:
    return {
        "id": spec.id or new_job_id(),
        "command": spec.command,
        "state": JobState.PENDING.value,
        "queue": spec.queue,
        "priority": spec.priority,
        "max_retries": spec.max_retries if spec.max_retries is not None else default_retries,
        "timeout": spec.timeout,
        "attempts": 0,
        "run_at": spec.run_at or now,
        "created_at": now,
        "updated_at": now,
    }


@dataclass(frozen=True)
class NewJob:
    """A job as enqueue wrote it: every stored field of a job that has not run yet.

    A plain dataclass, because building ORM objects cost more than the insert itself
    when tens of thousands of jobs are enqueued at once.
    """

    id: str
    command: str
    state: str
    queue: str
    priority: int
    max_retries: int
    timeout: float | None
    attempts: int
    run_at: datetime
    created_at: datetime
    updated_at: datetime


def enqueue(engine: Engine, spec: JobSpec) -> NewJob:
    """Insert one pending job and return it; a duplicate id raises DuplicateJob."""
    return enqueue_many(engine, [spec])[0]


# Rows per INSERT statement when enqueueing in bulk.
INSERT_CHUNK = 5000


def enqueue_many(engine: Engine, specs: list[JobSpec],
                 on_progress: Callable[[int], None] | None = None) -> list[NewJob]:
    """Insert jobs in one transaction: all of them, or none if any id is taken.

    on_progress, when given, is called with the number of jobs inserted so far.
    """
    now = utcnow()
    default_retries = int(config.get_value(engine, "max_retries"))
    rows = [_job_row(spec, default_retries, now) for spec in specs]
    ids = [row["id"] for row in rows]
    seen: set[str] = set()
    for job_id in ids:
        if job_id in seen:
            raise DuplicateJob(job_id)
        seen.add(job_id)
    try:
        with engine.begin() as conn:
            for start in range(0, len(rows), INSERT_CHUNK):
                conn.execute(jobs_table.insert(), rows[start:start + INSERT_CHUNK])
                if on_progress is not None:
                    on_progress(min(start + INSERT_CHUNK, len(rows)))
            notify_new_jobs(conn)
    except IntegrityError:
        existing = _existing_ids(engine, ids)
        raise DuplicateJob(existing[0] if existing else ids[0]) from None
    return [NewJob(**row) for row in rows]


def _existing_ids(engine: Engine, ids: list[str]) -> list[str]:
    found: list[str] = []
    with read_only(engine).connect() as conn:
        for chunk in id_chunks(ids):
            found.extend(conn.scalars(select(jobs_table.c.id).where(jobs_table.c.id.in_(chunk))))
    order = {job_id: index for index, job_id in enumerate(ids)}
    return sorted(found, key=order.__getitem__)


def notify_new_jobs(conn: Connection) -> None:
    """Wake idle workers: by NOTIFY on PostgreSQL, which is sent when the transaction
    commits, and by a local datagram on SQLite.

    A SQLite worker woken before the commit waits for the write lock, then finds the job.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("NOTIFY queuectl_jobs")
    else:
        from queuectl import wake

        wake.notify(conn.engine.url)
