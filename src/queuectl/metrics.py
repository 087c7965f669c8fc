"""Throughput, success rate and latency percentiles of the jobs that finished in a window.

The jobs table keeps one row per job with its latest attempt only, so every figure is
derived from these columns. The window is the interval (end - window, end].

completed
    Jobs in state ``completed`` whose ``finished_at`` lies in the window.
failed
    Attempts that ended in state ``failed`` or ``dead`` within the window, as far as the
    table still shows them. These are the jobs in state ``dead`` whose ``finished_at`` lies
    in the window, plus the jobs in state ``failed`` (waiting for a retry) whose
    ``updated_at`` lies in the window. Nothing but the end of an attempt updates a job that
    stays ``failed``, so its ``updated_at`` is the moment its attempt failed. An earlier
    failed attempt of a job that has been claimed again since, or moved by ``queuectl
    retry``, ``dlq retry`` or ``cancel``, is no longer visible, so ``failed`` is a lower
    bound while jobs retry.
    Cancelled jobs count as neither completed nor failed.
success rate
    completed / (completed + failed), or None when both are 0.
waiting time
    ``started_at - created_at`` of the completed and dead jobs counted above.
    ``started_at`` is the start of the latest attempt, so for a retried job the waiting
    time runs from enqueue to the start of its last attempt and includes the earlier
    attempts and their backoff. A job moved back to pending by hand keeps its
    ``created_at``, so its waiting time also includes the time before that retry.
run time
    ``finished_at - started_at`` of the same jobs: the duration of the latest attempt.

Percentiles are interpolated linearly between the two nearest values, as PostgreSQL's
``percentile_cont`` does. Rates are per minute of the window.

This module only reads, and it never imports Typer or Rich, never prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import Engine, and_, func, or_, select

from queuectl.db import read_only
from queuectl.errors import InvalidInput
from queuectl.models import Job, JobState, utcnow

# Rows fetched per round trip while streaming the finished jobs of a window.
FETCH_BATCH = 2000


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the fraction-th quantile (0 to 1) of values, or None when there are none.

    The result is interpolated linearly between the two nearest ranks, like PostgreSQL's
    percentile_cont and numpy's default method.
    """
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class QueueMetrics:
    """The figures of one queue, or of all queues together when ``queue`` is None."""

    queue: str | None
    window: timedelta
    completed: int
    failed: int
    wait_p50: float | None  # seconds
    wait_p95: float | None
    run_p50: float | None  # seconds
    run_p95: float | None

    @property
    def completed_per_minute(self) -> float:
        return self.completed / self._minutes()

    @property
    def failed_per_minute(self) -> float:
        return self.failed / self._minutes()

    @property
    def success_rate(self) -> float | None:
        """The share of completed among completed and failed, from 0 to 1."""
        finished = self.completed + self.failed
        return self.completed / finished if finished else None

    def _minutes(self) -> float:
        return self.window.total_seconds() / 60

    def to_dict(self) -> dict[str, Any]:
        """Return the figures in the stable JSON form of `queuectl metrics --json`."""
        return {
            "queue": self.queue,
            "completed": self.completed,
            "failed": self.failed,
            "completed_per_minute": _round(self.completed_per_minute),
            "failed_per_minute": _round(self.failed_per_minute),
            "success_rate": _round(self.success_rate),
            "wait_seconds": {"p50": _round(self.wait_p50), "p95": _round(self.wait_p95)},
            "run_seconds": {"p50": _round(self.run_p50), "p95": _round(self.run_p95)},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class MetricsReport:
    """The metrics of one window: each queue that had finished jobs in it, and the total."""

    start: datetime
    end: datetime
    queues: list[QueueMetrics]
    total: QueueMetrics

    @property
    def window(self) -> timedelta:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """Return the report in the stable JSON form of `queuectl metrics --json`."""
        return {
            "window_seconds": self.window.total_seconds(),
            "start": self.start,
            "end": self.end,
            "queues": [queue.to_dict() for queue in self.queues],
            "total": self.total.to_dict(),
        }


@dataclass
class _Samples:
    """Counts and durations of one queue, collected while the finished jobs stream in."""

    completed: int = 0
    failed: int = 0
    waits: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)

    def add(self, other: _Samples) -> None:
        self.completed += other.completed
        self.failed += other.failed
        self.waits.extend(other.waits)
        self.runs.extend(other.runs)

    def summarise(self, queue: str | None, window: timedelta) -> QueueMetrics:
        return QueueMetrics(
            queue=queue, window=window, completed=self.completed, failed=self.failed,
            wait_p50=percentile(self.waits, 0.50), wait_p95=percentile(self.waits, 0.95),
            run_p50=percentile(self.runs, 0.50), run_p95=percentile(self.runs, 0.95),
        )


def _in_window(column, start: datetime, end: datetime):
    return and_(column > start, column <= end)


def _finished_condition(start: datetime, end: datetime):
    """Jobs whose latest attempt completed or moved them to the DLQ within the window."""
    return and_(Job.state.in_((JobState.COMPLETED.value, JobState.DEAD.value)),
                _in_window(Job.finished_at, start, end))


def _waiting_retry_condition(start: datetime, end: datetime):
    """Jobs whose latest attempt failed within the window and that wait for a retry."""
    return and_(Job.state == JobState.FAILED.value, _in_window(Job.updated_at, start, end))


def _seconds_between(earlier: datetime | None, later: datetime | None) -> float | None:
    if earlier is None or later is None:
        return None
    # NOTE: created_at comes from the enqueuing host's clock and started_at and finished_at
    # from the worker's, so clock skew between hosts can make a duration negative. It is
    # reported as 0.
    return max(0.0, (later - earlier).total_seconds())


def compute_metrics(engine: Engine, window: timedelta, end: datetime | None = None
                    ) -> MetricsReport:
    """Compute the metrics of each queue over the window that ends at `end` (default: now).

    Raises InvalidInput when the window is not positive.
    """
    if window <= timedelta(0):
        raise InvalidInput(f"invalid window {window}; use a positive length such as 60m")
    end = end or utcnow()
    start = end - window
    samples: dict[str, _Samples] = {}

    finished = select(Job.queue, Job.state, Job.created_at, Job.started_at,
                      Job.finished_at).where(_finished_condition(start, end))
    waiting_retry = (select(Job.queue, func.count())
                     .where(_waiting_retry_condition(start, end)).group_by(Job.queue))
    # NOTE: no index covers finished_at or updated_at, so both queries scan the jobs in
    # these states, and every duration of the window is held in memory for the
    # percentiles. `queuectl prune` keeps the scan short.
    with read_only(engine).connect() as conn:
        rows = conn.execution_options(yield_per=FETCH_BATCH).execute(finished)
        for row in rows:
            queue = samples.setdefault(row.queue, _Samples())
            if row.state == JobState.COMPLETED.value:
                queue.completed += 1
            else:
                queue.failed += 1
            wait = _seconds_between(row.created_at, row.started_at)
            run = _seconds_between(row.started_at, row.finished_at)
            if wait is not None:
                queue.waits.append(wait)
            if run is not None:
                queue.runs.append(run)
        for queue_name, count in conn.execute(waiting_retry):
            samples.setdefault(queue_name, _Samples()).failed += count

    total = _Samples()
    for queue_samples in samples.values():
        total.add(queue_samples)
    return MetricsReport(
        start=start, end=end,
        queues=[samples[name].summarise(name, window) for name in sorted(samples)],
        total=total.summarise(None, window),
    )


def count_finished(engine: Engine, window: timedelta, end: datetime | None = None
                   ) -> tuple[int, int]:
    """Return how many jobs completed and how many attempts failed in the window.

    The definitions are those of compute_metrics, counted in the database alone.
    """
    end = end or utcnow()
    start = end - window
    completed = select(func.count()).where(
        Job.state == JobState.COMPLETED.value, _in_window(Job.finished_at, start, end))
    failed = select(func.count()).where(or_(
        and_(Job.state == JobState.DEAD.value, _in_window(Job.finished_at, start, end)),
        _waiting_retry_condition(start, end),
    ))
    with read_only(engine).connect() as conn:
        return conn.scalar(completed), conn.scalar(failed)
