"""The tables that Alembic migrations create, as SQLAlchemy Core objects.

This module imports no part of `sqlalchemy.orm`, so commands that only insert or read rows
(such as `queuectl enqueue`) start without loading the ORM. The ORM classes in
`queuectl.models` map onto these same Table objects.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobState(str, enum.Enum):
    """The life cycle of a job."""

    PENDING = "pending"  # waiting for its run_at time and a free worker
    PROCESSING = "processing"  # claimed by a worker, which holds a lease on it
    COMPLETED = "completed"  # the last attempt exited with status 0
    FAILED = "failed"  # an attempt failed; claimable again once its backoff has elapsed
    DEAD = "dead"  # out of attempts: the dead letter queue
    CANCELLED = "cancelled"  # cancelled by a user; never runs again unless retried

    def __str__(self) -> str:
        return self.value


# States a worker may claim from, once the job's run_at has passed.
CLAIMABLE_STATES = (JobState.PENDING.value, JobState.FAILED.value)
# States that no worker will ever change again.
FINAL_STATES = (JobState.COMPLETED.value, JobState.DEAD.value, JobState.CANCELLED.value)


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    SQLite has no time zone type, so values are stored there as naive UTC text, which
    sorts and compares correctly. Naive datetimes are rejected on the way in because their
    zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; pass an aware datetime")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


jobs_table = Table(
    "jobs",
    metadata,
    # Insertion order, which breaks ties between jobs of equal priority (first in, first out).
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("id", String(255), nullable=False, unique=True),
    Column("command", Text, nullable=False),
    Column("state", String(16), nullable=False, default=JobState.PENDING.value),
    Column("queue", String(64), nullable=False, default="default"),
    Column("priority", Integer, nullable=False, default=0),
    Column("max_retries", Integer, nullable=False),
    # Seconds before the attempt is killed; None means the `job_timeout` setting applies.
    Column("timeout", Float),
    Column("attempts", Integer, nullable=False, default=0),
    # When the job may next be claimed: its schedule, or the end of its retry backoff.
    Column("run_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("exit_code", Integer),
    Column("last_error", Text),
    # The tail of the last attempt's stdout and stderr, decoded with invalid bytes replaced.
    Column("output", Text),
    Column("worker_id", String(255)),
    # A fresh random value per claim: a worker may only record a result under its own token.
    Column("claim_token", String(64)),
    Column("lease_expires_at", UTCDateTime),
    Index("ix_jobs_state_seq", "state", "seq"),
    Index("ix_jobs_lease", "state", "lease_expires_at"),
)

# The condition of the partial indexes on claimable jobs, which queuectl.models defines.
# A query can use those indexes only when its WHERE clause contains this condition in the
# same form, with literal values.
CLAIMABLE_CONDITION = "state IN ('pending', 'failed')"

# One configuration setting, stored as text and validated when written.
config_table = Table(
    "config",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# A live worker process, registered while it runs and renewed by its heartbeat.
workers_table = Table(
    "workers",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("supervisor_pid", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    # Comma-separated queue names, or "*" for every queue.
    Column("queues", Text, nullable=False, default="*"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("current_job", String(255)),
    # Set through the database to ask the worker, on whatever host, to stop gracefully.
    Column("stop_requested", Boolean, nullable=False, default=False),
)
