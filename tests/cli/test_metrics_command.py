"""`queuectl metrics`: JSON, plain text and errors, through the real CLI.

tests/unit/test_metrics.py checks the figures on both backends; these tests check the
command's output on SQLite only.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from queuectl.models import Job, utcnow

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def add_finished(engine, job_id: str, state: str, queue: str, wait: float, run: float,
                 minutes_ago: float) -> None:
    """Insert a job that finished minutes_ago after waiting and running the given seconds."""
    finished = utcnow() - timedelta(minutes=minutes_ago)
    started = finished - timedelta(seconds=run)
    created = started - timedelta(seconds=wait)
    with Session(engine) as session, session.begin():
        session.add(Job(id=job_id, command="true", state=state, queue=queue, max_retries=3,
                        attempts=1, run_at=created, created_at=created, started_at=started,
                        finished_at=finished, updated_at=finished))


@pytest.fixture
def finished_jobs(engine):
    """Jobs of two queues that finished 5 minutes ago, and one from 2 hours ago."""
    add_finished(engine, "ok-1", "completed", "default", wait=0.5, run=2, minutes_ago=5)
    add_finished(engine, "ok-2", "completed", "default", wait=1.5, run=4, minutes_ago=5)
    add_finished(engine, "died", "dead", "default", wait=1, run=90, minutes_ago=5)
    add_finished(engine, "mail-1", "completed", "mail", wait=0.2, run=1, minutes_ago=5)
    add_finished(engine, "old", "completed", "mail", wait=1, run=1, minutes_ago=120)
    return engine


def test_metrics_json_reports_each_queue(cli, finished_jobs) -> None:
    result = cli("metrics", "--window", "30m", "--json")
    report = json.loads(result.stdout)
    queues = {queue["queue"]: queue for queue in report["queues"]}

    assert result.returncode == 0, result.stderr
    assert report["window_seconds"] == 1800
    assert sorted(queues) == ["default", "mail"]
    assert queues["default"]["completed"] == 2
    assert queues["default"]["failed"] == 1
    assert queues["default"]["run_seconds"]["p50"] == pytest.approx(4.0)
    assert queues["mail"]["completed"] == 1
    assert report["total"]["completed"] == 3


def test_metrics_window_defaults_to_one_hour(cli, finished_jobs) -> None:
    report = json.loads(cli("metrics", "--json").stdout)

    assert report["window_seconds"] == 3600
    assert report["total"]["completed"] == 3  # the job from 2 hours ago is outside


def test_metrics_piped_prints_tab_separated_rows(cli, finished_jobs) -> None:
    result = cli("metrics", "--window", "3h")
    rows = [line.split("\t") for line in result.stdout.splitlines()]

    assert result.returncode == 0, result.stderr
    assert rows == [
        ["default", "2", "1", "0.01", "0.01", "66.7%", "1.00s", "1.45s", "4.00s", "1m 21s"],
        ["mail", "2", "0", "0.01", "0.00", "100.0%", "600ms", "960ms", "1.00s", "1.00s"],
        ["(all)", "4", "1", "0.02", "0.01", "80.0%", "1.00s", "1.40s", "2.00s", "1m 13s"],
    ]


def test_metrics_of_quiet_window_print_hint(cli, engine) -> None:
    result = cli("metrics", "--window", "15m")

    assert result.returncode == 0
    assert result.stdout == ""
    assert "no job finished or failed in the last 15m" in result.stderr


@pytest.mark.parametrize("window", ["soon", "0m", "-5m"])
def test_metrics_reject_invalid_window(cli, engine, window) -> None:
    result = cli("metrics", "--window", window)

    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid ")
    assert repr(window) in result.stderr


def test_metrics_window_error_names_window(cli, engine) -> None:
    result = cli("metrics", "--window", "abc")

    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid window 'abc'")
