"""A point-in-time view of the queue for `queuectl top` and `queuectl dashboard`.

Taking a snapshot only reads the jobs and workers tables. Like every command that reads a
setting, it may rewrite a legacy hyphenated config key to its canonical form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, defer

from queuectl import jobs, metrics, workers
from queuectl.db import display_url, read_only
from queuectl.models import Job, JobState, utcnow

# The window of the throughput figures.
THROUGHPUT_WINDOW = timedelta(minutes=1)
# Rows of the recent failures and of the dead letter queue that a snapshot holds.
RECENT_FAILURES = 10
DLQ_ROWS = 20
# Characters of a command or an error that a snapshot keeps. `queuectl show` prints all.
TEXT_LIMIT = 500


@dataclass(frozen=True)
class WorkerView:
    """A live worker and the job it is running."""

    name: str
    hostname: str
    pid: int
    queues: str
    current_job: str | None
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class JobView:
    """The fields of a failed or dead job that the watching commands show."""

    id: str
    queue: str
    state: str
    command: str
    attempts: int
    max_retries: int
    exit_code: int | None
    last_error: str | None
    updated_at: datetime  # when its latest attempt failed, for failed and dead jobs


@dataclass(frozen=True)
class Snapshot:
    """Counts, throughput, workers, recent failures and the dead letter queue at one time."""

    taken_at: datetime
    database: str  # the database URL with any password masked
    counts: dict[str, int]  # jobs per state, every state included
    completed_last_minute: int
    failed_last_minute: int  # attempts, as defined in queuectl.metrics
    workers: list[WorkerView]
    recent_failures: list[JobView]  # failed and dead jobs, latest failure first
    dead_jobs: list[JobView]  # the newest jobs of the dead letter queue

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def dead_count(self) -> int:
        return self.counts.get(JobState.DEAD.value, 0)


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= TEXT_LIMIT:
        return text
    return text[:TEXT_LIMIT - 1] + "…"


def _job_view(job: Job) -> JobView:
    return JobView(
        id=job.id, queue=job.queue, state=job.state, command=_clip(job.command),
        attempts=job.attempts, max_retries=job.max_retries, exit_code=job.exit_code,
        last_error=_clip(job.last_error), updated_at=job.updated_at,
    )


def _read_jobs(engine: Engine, failures: int, dead: int
               ) -> tuple[dict[str, int], list[JobView], list[JobView]]:
    """Read the counts per state, the latest failures and the newest dead jobs."""
    failed_states = (JobState.FAILED.value, JobState.DEAD.value)
    # The output tail can hold many kilobytes per job and is not shown.
    latest_failures = (select(Job).options(defer(Job.output))
                       .where(Job.state.in_(failed_states))
                       .order_by(Job.updated_at.desc(), Job.seq.desc()).limit(failures))
    newest_dead = (select(Job).options(defer(Job.output))
                   .where(Job.state == JobState.DEAD.value)
                   .order_by(Job.seq.desc()).limit(dead))
    counts = jobs.count_by_state(engine)
    with Session(read_only(engine)) as session:
        recent = [_job_view(job) for job in session.scalars(latest_failures)]
        dead_jobs = [_job_view(job) for job in session.scalars(newest_dead)]
    return counts, recent, dead_jobs


def take_snapshot(engine: Engine, failures: int = RECENT_FAILURES, dead: int = DLQ_ROWS
                  ) -> Snapshot:
    """Read the queue's current state from the database."""
    now = utcnow()
    counts, recent, dead_jobs = _read_jobs(engine, failures, dead)
    completed, failed = metrics.count_finished(engine, THROUGHPUT_WINDOW, now)
    alive = [
        WorkerView(name=record.name, hostname=record.hostname, pid=record.pid,
                   queues=record.queues, current_job=current, started_at=record.started_at,
                   heartbeat_at=record.heartbeat_at)
        for record, current in workers.list_workers(engine)
    ]
    return Snapshot(
        taken_at=now, database=display_url(engine.url), counts=counts,
        completed_last_minute=completed, failed_last_minute=failed, workers=alive,
        recent_failures=recent, dead_jobs=dead_jobs,
    )


def _age(moment: datetime, now: datetime) -> float:
    return round(max(0.0, (now - moment).total_seconds()), 1)


def _job_dict(job: JobView, now: datetime) -> dict[str, Any]:
    return {
        "id": job.id, "queue": job.queue, "state": job.state, "command": job.command,
        "attempts": job.attempts, "max_retries": job.max_retries, "exit_code": job.exit_code,
        "last_error": job.last_error, "failed_at": job.updated_at,
        "failed_age_seconds": _age(job.updated_at, now),
    }


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    """Return the snapshot in the JSON form of the dashboard's /api/status (times as datetimes)."""
    now = snapshot.taken_at
    return {
        "taken_at": now,
        "database": snapshot.database,
        "jobs": {**snapshot.counts, "total": snapshot.total},
        "throughput": {
            "window_seconds": THROUGHPUT_WINDOW.total_seconds(),
            "completed": snapshot.completed_last_minute,
            "failed": snapshot.failed_last_minute,
        },
        "workers": [
            {"name": worker.name, "host": worker.hostname, "pid": worker.pid,
             "queues": worker.queues, "current_job": worker.current_job,
             "started_at": worker.started_at,
             "heartbeat_age_seconds": _age(worker.heartbeat_at, now)}
            for worker in snapshot.workers
        ],
        "recent_failures": [_job_dict(job, now) for job in snapshot.recent_failures],
        "dlq": {"count": snapshot.dead_count,
                "jobs": [_job_dict(job, now) for job in snapshot.dead_jobs]},
    }
