"""SQLAlchemy ORM classes, mapped onto the Core tables of `queuectl.tables`.

JobState, utcnow, UTCDateTime and the state tuples are defined in `queuectl.tables` and
exported here too, for the code that imports them from this module.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, text
from sqlalchemy.orm import DeclarativeBase, Mapped

from queuectl.tables import (
    CLAIMABLE_CONDITION,
    CLAIMABLE_STATES,
    FINAL_STATES,
    NAMING_CONVENTION,
    JobState,
    UTCDateTime,
    config_table,
    jobs_table,
    metadata,
    utcnow,
    workers_table,
)

__all__ = [
    "CLAIMABLE_STATES", "FINAL_STATES", "NAMING_CONVENTION", "Base", "ConfigEntry", "Job",
    "JobState", "UTCDateTime", "WorkerRecord", "utcnow",
]


# Claimable jobs in claim order, highest priority first, then oldest: a claim reads the
# first due entries of these partial indexes. They are defined here, not in queuectl.tables,
# because their postgresql_where option loads SQLAlchemy's PostgreSQL dialect, about 15 ms
# of every command's start-up. Only Alembic's comparison of the models reads them; the
# migrations create them.
Index("ix_jobs_ready", jobs_table.c.priority.desc(), jobs_table.c.seq,
      sqlite_where=text(CLAIMABLE_CONDITION), postgresql_where=text(CLAIMABLE_CONDITION))
Index("ix_jobs_ready_queue", jobs_table.c.queue, jobs_table.c.priority.desc(), jobs_table.c.seq,
      sqlite_where=text(CLAIMABLE_CONDITION), postgresql_where=text(CLAIMABLE_CONDITION))


class Base(DeclarativeBase):
    metadata = metadata


class Job(Base):
    """A shell command and its run history."""

    __table__ = jobs_table

    seq: Mapped[int]
    id: Mapped[str]
    command: Mapped[str]
    state: Mapped[str]
    queue: Mapped[str]
    priority: Mapped[int]
    max_retries: Mapped[int]
    timeout: Mapped[float | None]
    attempts: Mapped[int]
    run_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    exit_code: Mapped[int | None]
    last_error: Mapped[str | None]
    output: Mapped[str | None]
    worker_id: Mapped[str | None]
    claim_token: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]


class ConfigEntry(Base):
    """One configuration setting, stored as text and validated when written."""

    __table__ = config_table

    key: Mapped[str]
    value: Mapped[str]
    updated_at: Mapped[datetime]


class WorkerRecord(Base):
    """A live worker process, registered while it runs and renewed by its heartbeat."""

    __table__ = workers_table

    id: Mapped[str]
    hostname: Mapped[str]
    pid: Mapped[int]
    supervisor_pid: Mapped[int]
    name: Mapped[str]
    queues: Mapped[str]
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    current_job: Mapped[str | None]
    stop_requested: Mapped[bool]
