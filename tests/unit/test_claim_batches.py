"""Claiming several jobs and recording several successes in one transaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from queuectl import jobs
from queuectl.claims import ClaimConnection, Success, claim_sql
from queuectl.models import JobState, utcnow
from tests.unit.queue_steps import LEASE, enqueue


def test_batch_claim_follows_priority_then_age(engine) -> None:
    for job_id, priority in [("low", 0), ("high-1", 5), ("lowest", -1), ("high-2", 5),
                             ("low-2", 0)]:
        enqueue(engine, id=job_id, priority=priority)

    with ClaimConnection(engine) as connection:
        _, claimed = connection.record_and_claim([], 4, "worker-a", None, LEASE)

    assert [claim.id for claim in claimed] == ["high-1", "high-2", "low", "low-2"]
    assert jobs.get_job(engine, "lowest").state == JobState.PENDING.value


def test_batch_claim_gives_each_job_its_own_token(engine) -> None:
    for number in range(3):
        enqueue(engine, id=f"job{number}")

    with ClaimConnection(engine) as connection:
        _, claimed = connection.record_and_claim([], 3, "worker-a", None, LEASE)

    tokens = {claim.token for claim in claimed}
    assert len(tokens) == 3
    for claim in claimed:
        stored = jobs.get_job(engine, claim.id)
        assert stored.claim_token == claim.token
        assert stored.state == JobState.PROCESSING.value
        assert stored.attempts == 1
        assert stored.worker_id == "worker-a"


def test_batch_claim_skips_jobs_not_due(engine) -> None:
    enqueue(engine, id="later", delay=3600)
    enqueue(engine, id="now")

    with ClaimConnection(engine) as connection:
        _, claimed = connection.record_and_claim([], 5, "worker-a", None, LEASE)

    assert [claim.id for claim in claimed] == ["now"]


def test_batch_claim_filters_queues(engine) -> None:
    for job_id, queue in [("a1", "a"), ("b1", "b"), ("c1", "c"), ("a2", "a")]:
        enqueue(engine, id=job_id, queue=queue)

    with ClaimConnection(engine) as connection:
        _, only_a = connection.record_and_claim([], 5, "worker-a", ["a"], LEASE)
        _, b_or_c = connection.record_and_claim([], 5, "worker-a", ["c", "b"], LEASE)

    assert [claim.id for claim in only_a] == ["a1", "a2"]
    assert [claim.id for claim in b_or_c] == ["b1", "c1"]


def test_successes_recorded_with_their_finish_times(engine) -> None:
    for number in range(3):
        enqueue(engine, id=f"job{number}")
    finished = utcnow() - timedelta(seconds=5)

    with ClaimConnection(engine) as connection:
        _, claimed = connection.record_and_claim([], 3, "worker-a", None, LEASE)
        successes = [Success(claim, 0, f"out {claim.id}", finished + timedelta(seconds=index))
                     for index, claim in enumerate(claimed)]
        recorded, more = connection.record_and_claim(successes, 0, "worker-a", None, LEASE)

    assert recorded == {"job0", "job1", "job2"}
    assert more == []
    for index, claim in enumerate(claimed):
        stored = jobs.get_job(engine, claim.id)
        assert stored.state == JobState.COMPLETED.value
        assert stored.output == f"out {claim.id}"
        assert stored.finished_at == finished + timedelta(seconds=index)
        assert stored.claim_token is None


def test_success_of_lost_claim_not_recorded(engine) -> None:
    enqueue(engine, id="kept")
    enqueue(engine, id="cancelled")
    with ClaimConnection(engine) as connection:
        _, claimed = connection.record_and_claim([], 2, "worker-a", None, LEASE)
        jobs.cancel(engine, ["cancelled"])
        successes = [Success(claim, 0, "", utcnow()) for claim in claimed]

        recorded, _ = connection.record_and_claim(successes, 0, "worker-a", None, LEASE)

    assert recorded == {"kept"}
    assert jobs.get_job(engine, "cancelled").state == JobState.CANCELLED.value


def test_record_and_claim_in_one_call(engine) -> None:
    for number in range(3):
        enqueue(engine, id=f"job{number}")
    with ClaimConnection(engine) as connection:
        _, first = connection.record_and_claim([], 1, "worker-a", None, LEASE)

        recorded, claimed = connection.record_and_claim(
            [Success(first[0], 0, "", utcnow())], 2, "worker-a", None, LEASE)

    assert recorded == {"job0"}
    assert [claim.id for claim in claimed] == ["job1", "job2"]


def test_sqlite_claim_reads_index_in_claim_order(engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("INDEXED BY and EXPLAIN QUERY PLAN are SQLite's")
    for queue_count in (0, 1):
        sql = claim_sql("sqlite", queue_count)
        params = ("w", "now", "now", "later", "now", *(["q"] * queue_count), 5)

        with engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)]

        assert not any("TEMP B-TREE" in step for step in plan), plan


def test_sqlite_claim_over_queues_merges_heads(engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("INDEXED BY and EXPLAIN QUERY PLAN are SQLite's")
    sql = claim_sql("sqlite", 2)
    params = ("w", "now", "now", "later", "now", "a", 5, "now", "b", 5, 5)

    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)]

    # Each queue is read in index order; only the few heads of the queues are sorted.
    assert sum("INDEX ix_jobs_ready_queue" in step for step in plan) == 2, plan
    assert sum("TEMP B-TREE" in step for step in plan) == 1, plan


def test_postgresql_claim_uses_ready_index(engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("the SQLite claim names its index")
    for number in range(2000):
        enqueue(engine, id=f"job{number}", priority=number % 3)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE jobs"))
    sql = claim_sql("postgresql", 0)
    now = utcnow()

    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN {sql}", ("w", now, now, now, now, 5)).scalars()
        text_plan = "\n".join(plan)

    assert "ix_jobs_ready" in text_plan
    assert "Sort" not in text_plan


def test_batch_claim_over_queues_follows_priority(engine) -> None:
    for job_id, queue, priority in [("a-low", "a", 0), ("b-high", "b", 5), ("c-top", "c", 9),
                                    ("a-high", "a", 5), ("b-low", "b", 0), ("a-mid", "a", 2)]:
        enqueue(engine, id=job_id, queue=queue, priority=priority)

    with ClaimConnection(engine) as connection:
        _, first = connection.record_and_claim([], 3, "worker-a", ["a", "b"], LEASE)
        _, rest = connection.record_and_claim([], 5, "worker-a", ["b", "a"], LEASE)

    assert [claim.id for claim in first] == ["b-high", "a-high", "a-mid"]
    assert [claim.id for claim in rest] == ["a-low", "b-low"]
    assert jobs.get_job(engine, "c-top").state == JobState.PENDING.value


@pytest.mark.parametrize("own_checkpoints, held_setting", [(True, 0), (False, 1000)])
def test_sqlite_autocheckpoint_only_for_own_checkpoints(engine, own_checkpoints,
                                                        held_setting) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the WAL checkpoint setting is SQLite's")
    enqueue(engine, id="job")
    connection = ClaimConnection(engine, own_checkpoints=own_checkpoints)

    connection.claim("worker-a", None, LEASE)
    driver = connection.raw.driver_connection
    during = driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    connection.close()
    after = driver.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    assert during == held_setting
    assert after == 1000
