"""Metrics of finished jobs, computed from job histories with chosen timestamps."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from queuectl import db, metrics
from queuectl.errors import InvalidInput
from queuectl.models import Job
from tests.conftest import BACKENDS, create_pg_database, drop_pg_database
from tests.tables import table_contents

# The end of every window in these tests, and the default window length.
END = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=10)


def at(minutes_before_end: float) -> datetime:
    return END - timedelta(minutes=minutes_before_end)


def add_job(engine: Engine, job_id: str, state: str, *, queue: str = "default",
            created: datetime, started: datetime | None = None,
            finished: datetime | None = None, updated: datetime | None = None,
            attempts: int = 1) -> None:
    """Insert a job row with the given history, as the workers would have left it."""
    with Session(engine) as session, session.begin():
        session.add(Job(
            id=job_id, command="true", state=state, queue=queue, max_retries=3,
            attempts=attempts, run_at=created, created_at=created, started_at=started,
            finished_at=finished, updated_at=updated or finished or started or created,
        ))


def add_finished(engine: Engine, job_id: str, state: str, wait: float, run: float,
                 finished: datetime, queue: str = "default") -> None:
    """Insert a completed or dead job that waited and ran for the given seconds."""
    started = finished - timedelta(seconds=run)
    created = started - timedelta(seconds=wait)
    add_job(engine, job_id, state, queue=queue, created=created, started=started,
            finished=finished)


def by_queue(report: metrics.MetricsReport) -> dict[str, metrics.QueueMetrics]:
    return {queue.queue: queue for queue in report.queues}


@pytest.fixture(scope="module", params=BACKENDS)
def history(request, tmp_path_factory) -> Engine:
    """Two queues with jobs inside, before, after and outside the 10-minute window.

    In the window, queue default has 3 completed jobs (waits of 1, 2 and 3 s, runs of 10, 20
    and 30 s), 1 dead job (wait 4 s, run 40 s) and 1 job waiting for a retry. Queue mail
    has 2 completed jobs. The tests only read, so the whole module shares one database per
    backend, which saves creating a PostgreSQL database per test.
    """
    if request.param == "postgresql":
        request.getfixturevalue("postgres_available")
        url = create_pg_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'queue.db'}"
    engine = db.create_queue_engine(make_url(url))
    try:
        db.upgrade_schema(engine)
        add_history(engine)
        yield engine
    finally:
        engine.dispose()
        if request.param == "postgresql":
            drop_pg_database(url)


def add_history(engine: Engine) -> None:
    add_finished(engine, "ok-1", "completed", wait=1, run=10, finished=at(9))
    add_finished(engine, "ok-2", "completed", wait=2, run=20, finished=at(5))
    add_finished(engine, "ok-3", "completed", wait=3, run=30, finished=at(1))
    add_finished(engine, "died", "dead", wait=4, run=40, finished=at(2))
    add_job(engine, "retrying", "failed", created=at(8), started=at(7), updated=at(6))
    add_finished(engine, "mail-1", "completed", wait=5, run=1, finished=at(3), queue="mail")
    add_finished(engine, "mail-2", "completed", wait=7, run=3, finished=at(4), queue="mail")
    # Outside the window, or not finished, or cancelled: none of these count.
    add_finished(engine, "too-old", "completed", wait=1, run=1, finished=at(11))
    add_finished(engine, "too-new", "completed", wait=1, run=1, finished=at(-1))
    add_job(engine, "old-retry", "failed", created=at(30), started=at(25), updated=at(20))
    add_job(engine, "cancelled", "cancelled", created=at(5), started=at(4), finished=at(3))
    add_job(engine, "running", "processing", created=at(5), started=at(4))
    add_job(engine, "waiting", "pending", created=at(5), attempts=0)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(value) for value in range(10, 0, -1)]

    assert metrics.percentile(values, 0.5) == pytest.approx(5.5)
    assert metrics.percentile(values, 0.95) == pytest.approx(9.55)
    assert metrics.percentile(values, 0.0) == 1.0
    assert metrics.percentile(values, 1.0) == 10.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert metrics.percentile([3.5], 0.95) == 3.5


def test_percentile_of_no_values_is_none() -> None:
    assert metrics.percentile([], 0.5) is None


def test_metrics_count_completed_and_failed_per_queue(history) -> None:
    report = metrics.compute_metrics(history, WINDOW, END)
    queues = by_queue(report)

    assert list(queues) == ["default", "mail"]
    assert queues["default"].completed == 3
    assert queues["default"].failed == 2  # the dead job and the job waiting for a retry
    assert queues["mail"].completed == 2
    assert queues["mail"].failed == 0


def test_metrics_rates_are_per_minute_of_window(history) -> None:
    default = by_queue(metrics.compute_metrics(history, WINDOW, END))["default"]

    assert default.completed_per_minute == pytest.approx(0.3)
    assert default.failed_per_minute == pytest.approx(0.2)


def test_metrics_success_rate_is_completed_over_finished(history) -> None:
    queues = by_queue(metrics.compute_metrics(history, WINDOW, END))

    assert queues["default"].success_rate == pytest.approx(0.6)
    assert queues["mail"].success_rate == 1.0


def test_metrics_percentiles_cover_completed_and_dead_jobs(history) -> None:
    default = by_queue(metrics.compute_metrics(history, WINDOW, END))["default"]

    # Waits 1, 2, 3, 4 s and runs 10, 20, 30, 40 s: the job waiting for a retry has no
    # finished_at, so it adds no duration.
    assert default.wait_p50 == pytest.approx(2.5)
    assert default.wait_p95 == pytest.approx(3.85)
    assert default.run_p50 == pytest.approx(25.0)
    assert default.run_p95 == pytest.approx(38.5)


def test_metrics_total_combines_every_queue(history) -> None:
    total = metrics.compute_metrics(history, WINDOW, END).total

    assert total.queue is None
    assert total.completed == 5
    assert total.failed == 2
    assert total.success_rate == pytest.approx(5 / 7)
    assert total.wait_p50 == pytest.approx(3.5)  # median of 1, 2, 3, 4, 5, 7


def test_window_excludes_start_includes_end(engine) -> None:
    add_finished(engine, "at-start", "completed", wait=1, run=1, finished=END - WINDOW)
    add_finished(engine, "at-end", "completed", wait=1, run=1, finished=END)

    report = metrics.compute_metrics(engine, WINDOW, END)

    assert report.total.completed == 1


def test_retried_job_waits_until_latest_attempt(engine) -> None:
    # Given a job enqueued 9 minutes ago whose third attempt started 2 minutes ago,
    add_job(engine, "retried", "completed", created=at(9), started=at(2), finished=at(1),
            attempts=3)

    report = metrics.compute_metrics(engine, WINDOW, END)

    # then it waited from enqueue to the start of that attempt, which ran for one minute.
    assert report.total.wait_p50 == pytest.approx(7 * 60)
    assert report.total.run_p50 == pytest.approx(60)


def test_metrics_of_empty_window_have_no_rates(engine) -> None:
    report = metrics.compute_metrics(engine, WINDOW, END)

    assert report.queues == []
    assert report.total.completed == 0
    assert report.total.success_rate is None
    assert report.total.wait_p50 is None
    assert report.total.run_p95 is None


@pytest.mark.parametrize("window", [timedelta(0), timedelta(minutes=-5)])
def test_metrics_reject_non_positive_window(history, window) -> None:
    with pytest.raises(InvalidInput) as raised:
        metrics.compute_metrics(history, window, END)

    assert "invalid window" in raised.value.message


def test_count_finished_matches_metrics_totals(history) -> None:
    report = metrics.compute_metrics(history, WINDOW, END)

    completed, failed = metrics.count_finished(history, WINDOW, END)

    assert completed == report.total.completed
    assert failed == report.total.failed


def test_metrics_json_form_names_every_figure(history) -> None:
    data = metrics.compute_metrics(history, WINDOW, END).to_dict()
    mail = data["queues"][1]

    assert data["window_seconds"] == 600
    assert data["end"] == END
    assert mail == {
        "queue": "mail", "completed": 2, "failed": 0, "completed_per_minute": 0.2,
        "failed_per_minute": 0.0, "success_rate": 1.0,
        "wait_seconds": {"p50": 6.0, "p95": 6.9}, "run_seconds": {"p50": 2.0, "p95": 2.9},
    }


def test_metrics_leave_tables_unchanged(history) -> None:
    before = table_contents(history)

    metrics.compute_metrics(history, WINDOW, END)
    metrics.count_finished(history, WINDOW, END)

    assert table_contents(history) == before
