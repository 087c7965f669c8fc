"""The commands that scripts rely on, run through the real CLI in subprocesses.

Output and exit codes do not depend on the backend, and the unit tests run the services
below these commands on both, so these tests run on SQLite only, which keeps them fast.
"""

from __future__ import annotations

import json

import pytest

from queuectl import config, jobs
from queuectl.jobs import claim_next
from queuectl.models import JobState
from queuectl.spec import MAX_PRIORITY, validate_payload
from tests.jobs import ALWAYS_FAILS, QUOTING_COMMAND

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def enqueue(engine, **fields) -> None:
    """Enqueue a job through the service layer, to set up a test quickly."""
    jobs.enqueue(engine, validate_payload({"command": "true", **fields}))


def make_dead(engine, job_id: str) -> None:
    """Put a job in the DLQ by failing its only attempt through the service layer."""
    # The highest priority makes this job the one claimed, whatever else is queued.
    enqueue(engine, id=job_id, command=ALWAYS_FAILS, max_retries=1, priority=MAX_PRIORITY)
    claimed = claim_next(engine, "worker-test", None, 300)
    jobs.fail(engine, claimed, "exit status 3", 3, None)


def test_enqueue_prints_id_and_stores_job(cli, engine) -> None:
    result = cli("enqueue", '{"id":"job1","command":"sleep 2"}')

    assert result.returncode == 0
    assert result.stdout == "job1\n"
    assert jobs.get_job(engine, "job1").command == "sleep 2"


def test_enqueue_keeps_shell_quoting_unchanged(cli, engine) -> None:
    result = cli("enqueue", json.dumps({"id": "quoted", "command": QUOTING_COMMAND}))

    assert result.returncode == 0
    assert jobs.get_job(engine, "quoted").command == QUOTING_COMMAND


def test_status_counts_jobs_per_state(cli, engine) -> None:
    enqueue(engine, id="waiting")
    make_dead(engine, "broken")

    result = cli("status", "--json")
    counts = json.loads(result.stdout)["jobs"]

    assert result.returncode == 0
    assert counts[JobState.PENDING.value] == 1
    assert counts[JobState.DEAD.value] == 1
    assert counts["total"] == 2


def test_status_piped_prints_tab_separated_counts(cli, engine) -> None:
    enqueue(engine, id="waiting")

    result = cli("status")
    rows = dict(line.split("\t") for line in result.stdout.splitlines())

    assert result.returncode == 0
    assert rows["pending"] == "1"
    assert rows["total"] == "1"


def test_list_by_state_prints_full_ids_tab_separated(cli, engine) -> None:
    long_id = "nightly-report-" + "x" * 200
    enqueue(engine, id=long_id, command="echo one\techo two")
    make_dead(engine, "broken")

    result = cli("list", "--state", "pending")
    rows = [line.split("\t") for line in result.stdout.splitlines()]

    assert result.returncode == 0
    assert [row[0] for row in rows] == [long_id]
    assert rows[0][1] == JobState.PENDING.value
    assert len(rows[0]) == 8


def test_list_json_parses(cli, engine) -> None:
    enqueue(engine, id="job1", priority=4)

    result = cli("list", "--json")
    listed = json.loads(result.stdout)

    assert result.returncode == 0
    assert [job["id"] for job in listed] == ["job1"]
    assert listed[0]["priority"] == 4


def test_dlq_list_shows_dead_jobs(cli, engine) -> None:
    enqueue(engine, id="waiting")
    make_dead(engine, "job1")

    result = cli("dlq", "list")
    ids = [line.split("\t")[0] for line in result.stdout.splitlines()]

    assert result.returncode == 0
    assert ids == ["job1"]


def test_dlq_retry_moves_job_back_to_pending(cli, engine) -> None:
    make_dead(engine, "job1")

    result = cli("dlq", "retry", "job1")
    stored = jobs.get_job(engine, "job1")

    assert result.returncode == 0
    assert result.stdout == "job1\n"
    assert stored.state == JobState.PENDING.value
    assert stored.attempts == 0


def test_dlq_retry_of_unknown_id_exits_1(cli, engine) -> None:
    make_dead(engine, "job1")

    result = cli("dlq", "retry", "job1", "nope")

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "'nope' not found" in result.stderr
    assert jobs.get_job(engine, "job1").state == JobState.DEAD.value


def test_config_set_hyphenated_key_is_read_with_underscores(cli, engine) -> None:
    stored = cli("config", "set", "max-retries", "5")
    read = cli("config", "get", "max_retries")

    assert stored.returncode == 0
    assert read.returncode == 0
    assert read.stdout == "5\n"


def test_config_list_shows_every_key(cli, engine) -> None:
    config.set_value(engine, "max_retries", "5")

    result = cli("config", "list")
    values = {line.split("\t")[0]: line.split("\t")[1] for line in result.stdout.splitlines()}

    assert result.returncode == 0
    assert set(values) == set(config.SETTINGS)
    assert values["max_retries"] == "5"
