"""SQLAlchemy models: the tables that Alembic migrations create."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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
# The condition of the partial indexes on claimable jobs. A query can use those indexes
# only when its WHERE clause contains this same condition, with literal values.
CLAIMABLE_CONDITION = text("state IN ('pending', 'failed')")


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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """A shell command and its run history."""

    __tablename__ = "jobs"

    # Insertion order, which breaks ties between jobs of equal priority (first in, first out).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(255), unique=True)
    command: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING.value)
    queue: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer)
    # Seconds before the attempt is killed; None means the `job_timeout` setting applies.
    timeout: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the job may next be claimed: its schedule, or the end of its retry backoff.
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # The tail of the last attempt's stdout and stderr, decoded with invalid bytes replaced.
    output: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    # A fresh random value per claim: a worker may only record a result under its own token.
    claim_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Claimable jobs in claim order: highest priority first, then oldest.
        Index("ix_jobs_ready", priority.desc(), seq,
              sqlite_where=CLAIMABLE_CONDITION, postgresql_where=CLAIMABLE_CONDITION),
        Index("ix_jobs_ready_queue", queue, priority.desc(), seq,
              sqlite_where=CLAIMABLE_CONDITION, postgresql_where=CLAIMABLE_CONDITION),
        Index("ix_jobs_state_seq", "state", "seq"),
        Index("ix_jobs_lease", "state", "lease_expires_at"),
    )


class ConfigEntry(Base):
    """One configuration setting, stored as text and validated when written."""

    __tablename__ = "config"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRecord(Base):
    """A live worker process, registered while it runs and renewed by its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    supervisor_pid: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    # Comma-separated queue names, or "*" for every queue.
    queues: Mapped[str] = mapped_column(Text, default="*")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    current_job: Mapped[str | None] = mapped_column(String(255))
    # Set through the database to ask the worker, on whatever host, to stop gracefully.
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
