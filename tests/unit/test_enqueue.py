"""Enqueueing jobs through the service layer, on each backend."""

from __future__ import annotations

from dataclasses import astuple, fields
from datetime import datetime, timedelta, timezone

import pytest

from queuectl import config, enqueueing, jobs
from queuectl.errors import DuplicateJob, JobNotFound
from queuectl.models import JobState, utcnow
from queuectl.spec import validate_payload
from tests.tables import table_contents
from tests.unit.queue_steps import enqueue


def test_enqueue_generates_id_when_absent(engine) -> None:
    created = enqueue(engine, "echo hi")

    assert jobs.get_job(engine, created.id).command == "echo hi"


def test_generated_ids_are_distinct(engine) -> None:
    ids = {enqueue(engine).id for _ in range(20)}

    assert len(ids) == 20


def test_enqueue_stores_defaults(engine) -> None:
    before = utcnow()

    stored = jobs.get_job(engine, enqueue(engine, "echo hi", id="job1").id)

    assert stored.state == JobState.PENDING.value
    assert stored.attempts == 0
    assert stored.queue == "default"
    assert stored.priority == 0
    assert stored.max_retries == 3
    assert stored.timeout is None
    assert before <= stored.run_at <= utcnow()
    assert stored.exit_code is None
    assert stored.last_error is None


def test_enqueue_stores_every_given_field(engine) -> None:
    run_at = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)

    enqueue(engine, "make report", id="report-1", max_retries=7, priority=-3, queue="reports",
            timeout=12.5, run_at="2030-01-15T14:00:00+02:00")
    stored = jobs.get_job(engine, "report-1")

    assert stored.command == "make report"
    assert stored.max_retries == 7
    assert stored.priority == -3
    assert stored.queue == "reports"
    assert stored.timeout == 12.5
    assert stored.run_at == run_at


def test_delay_postpones_run_at(engine) -> None:
    before = utcnow()

    stored = jobs.get_job(engine, enqueue(engine, delay=600).id)

    assert before + timedelta(seconds=600) <= stored.run_at
    assert stored.run_at <= utcnow() + timedelta(seconds=600)


def test_max_retries_setting_is_read_at_enqueue_time(engine) -> None:
    # Given a job enqueued while max_retries is 5
    config.set_value(engine, "max_retries", "5")
    early = enqueue(engine)

    # When the setting changes and another job is enqueued
    config.set_value(engine, "max_retries", "2")
    late = enqueue(engine)

    # Then each job keeps the value that applied when it was enqueued
    assert jobs.get_job(engine, early.id).max_retries == 5
    assert jobs.get_job(engine, late.id).max_retries == 2


def test_explicit_max_retries_overrides_setting(engine) -> None:
    config.set_value(engine, "max_retries", "5")

    created = enqueue(engine, max_retries=1)

    assert jobs.get_job(engine, created.id).max_retries == 1


def test_duplicate_id_is_rejected_and_existing_job_untouched(engine) -> None:
    enqueue(engine, "echo original", id="job1", priority=4)
    before = table_contents(engine)

    with pytest.raises(DuplicateJob) as raised:
        enqueue(engine, "echo replacement", id="job1", priority=9)

    assert "'job1' already exists" in raised.value.message
    assert table_contents(engine) == before


def test_enqueue_many_inserts_all_jobs_in_order(engine) -> None:
    specs = [validate_payload({"command": f"echo {n}", "id": f"job{n}"}) for n in range(3)]

    jobs.enqueue_many(engine, specs)

    listed = jobs.list_jobs(engine, limit=None)
    assert [job.id for job in reversed(listed)] == ["job0", "job1", "job2"]


def test_enqueue_many_taken_id_inserts_nothing(engine) -> None:
    # Given a job with the id "taken"
    enqueue(engine, id="taken")
    before = table_contents(engine)
    specs = [validate_payload({"command": "true", "id": job_id})
             for job_id in ("new-1", "taken", "new-2")]

    # When a batch that reuses the id is enqueued
    with pytest.raises(DuplicateJob) as raised:
        jobs.enqueue_many(engine, specs)

    # Then the error names the taken id and none of the batch is stored
    assert raised.value.job_id == "taken"
    assert table_contents(engine) == before


def test_enqueue_many_rejects_repeated_id(engine) -> None:
    specs = [validate_payload({"command": "true", "id": job_id})
             for job_id in ("one", "two", "one")]

    with pytest.raises(DuplicateJob):
        jobs.enqueue_many(engine, specs)

    with pytest.raises(JobNotFound):
        jobs.get_job(engine, "two")


# Bulk inserts: executemany() on SQLite, COPY on PostgreSQL ---------------------------------

def test_new_job_fields_follow_insert_columns() -> None:
    assert tuple(field.name for field in fields(enqueueing.NewJob)) == enqueueing.INSERT_COLUMNS


def test_enqueue_many_returns_what_is_stored(engine) -> None:
    config.set_value(engine, "max_retries", "4")
    specs = [
        validate_payload({"command": "true"}),
        validate_payload({"command": "make", "id": "all-fields", "max_retries": 9,
                          "priority": -5, "queue": "reports", "timeout": 2.5,
                          "run_at": "2030-01-15T14:00:00.123456+02:00"}),
        validate_payload({"command": "sleep 1", "delay": 90}),
    ]

    created = jobs.enqueue_many(engine, specs)

    for new_job in created:
        stored = jobs.get_job(engine, new_job.id)
        assert astuple(new_job) == tuple(getattr(stored, name)
                                         for name in enqueueing.INSERT_COLUMNS)
    assert created[0].max_retries == 4
    assert created[0].run_at == created[0].created_at == created[0].updated_at
    assert created[1].run_at == datetime(2030, 1, 15, 12, 0, 0, 123456, tzinfo=timezone.utc)
    # The delay counts from validation, which comes just before the insert.
    assert timedelta(seconds=89) < created[2].run_at - created[2].created_at
    assert created[2].run_at - created[2].created_at <= timedelta(seconds=90)


def test_enqueue_many_ids_keeps_order(engine) -> None:
    specs = [validate_payload({"command": f"echo {n}", **({"id": f"given-{n}"} if n % 2 else {})})
             for n in range(6)]

    ids = enqueueing.enqueue_many_ids(engine, specs)

    listed = jobs.list_jobs(engine, limit=None)
    assert [job.id for job in reversed(listed)] == ids
    assert [job.command for job in reversed(listed)] == [f"echo {n}" for n in range(6)]
    assert ids[1::2] == ["given-1", "given-3", "given-5"]
    assert all(len(job_id) == 12 for job_id in ids[0::2])


@pytest.mark.parametrize("command", [
    "printf 'a\\tb\\n' | tr a b",
    "first line\nsecond line\r\nthird",
    "tab\there",
    "\\N",
    "back\\slash \\\\ twice",
    "échec ✓ 雪 \U0001f680",
    "\x01\x1b[31mred\x7f",
], ids=["escapes", "line-breaks", "tab", "null-marker", "backslashes", "unicode", "controls"])
def test_bulk_insert_stores_command_unchanged(engine, command: str) -> None:
    specs = [validate_payload({"command": command, "id": f"job-{n}"}) for n in range(3)]

    enqueueing.enqueue_many_ids(engine, specs)

    for n in range(3):
        assert jobs.get_job(engine, f"job-{n}").command == command


def test_bulk_insert_reports_progress_per_chunk(engine, monkeypatch) -> None:
    monkeypatch.setattr(enqueueing, "INSERT_CHUNK", 2)
    monkeypatch.setattr(enqueueing, "SMALL_BATCH", 0)  # take the bulk path
    reported: list[int] = []

    enqueueing.enqueue_many_ids(engine, [validate_payload({"command": "true"})] * 5,
                                on_progress=reported.append)

    assert reported == [2, 4, 5]
    assert jobs.count_by_state(engine)["pending"] == 5


def test_taken_id_in_later_chunk_inserts_nothing(engine, monkeypatch) -> None:
    # Given a taken id that comes after two chunks of the batch have been sent
    monkeypatch.setattr(enqueueing, "INSERT_CHUNK", 2)
    monkeypatch.setattr(enqueueing, "SMALL_BATCH", 0)  # take the bulk path
    enqueue(engine, id="taken")
    before = table_contents(engine)
    specs = [validate_payload({"command": "true", "id": f"new-{n}"}) for n in range(5)]
    specs.insert(4, validate_payload({"command": "true", "id": "taken"}))

    # When the batch is enqueued
    with pytest.raises(DuplicateJob) as raised:
        enqueueing.enqueue_many_ids(engine, specs)

    # Then the error names the taken id, and no job of the batch is stored
    assert raised.value.job_id == "taken"
    assert table_contents(engine) == before


def test_taken_generated_id_inserts_nothing(engine, monkeypatch) -> None:
    # Given a job whose id the id generator will produce again
    enqueue(engine, id="0123456789ab")
    before = table_contents(engine)
    monkeypatch.setattr(enqueueing, "_new_job_ids",
                        lambda count: ["0123456789ab", *(f"fresh-{n}" for n in range(count - 1))])

    with pytest.raises(DuplicateJob) as raised:
        enqueueing.enqueue_many_ids(engine, [validate_payload({"command": "true"})] * 3)

    assert raised.value.job_id == "0123456789ab"
    assert table_contents(engine) == before


@pytest.mark.parametrize("count", [1, enqueueing.SMALL_BATCH, enqueueing.SMALL_BATCH + 1])
def test_enqueue_notifies_listening_workers(engine, count) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite workers are woken by datagrams, tested with real workers")
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {enqueueing.NOTIFY_CHANNEL}")

        enqueueing.enqueue_many_ids(engine, [validate_payload({"command": "true"})] * count)

        received = list(listener.notifies(timeout=5, stop_after=1))
    assert len(received) == 1
    assert jobs.count_by_state(engine)["pending"] == count
