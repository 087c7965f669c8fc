"""The statements a worker runs for every job: claim jobs, and record successes.

They run once per job, so they skip SQLAlchemy's statement compilation and execution
layers and go to the DBAPI cursor with SQL written for each backend. One call records any
number of successes and claims up to a given number of jobs, as one transaction. On
PostgreSQL that is a single statement in autocommit mode, so one round trip and one
commit. On SQLite it is one BEGIN IMMEDIATE transaction under the same writer lock as
every other write (see db.WriteLock).

By default SQLite checkpoints the WAL as part of a commit once the WAL contains 1,000
pages. That checkpoint's fsync ran while the writer lock was held and stalled every other
worker for milliseconds. So a worker's SQLite connection checkpoints every
CHECKPOINT_INTERVAL commits instead, after releasing the lock.

A claim repeats the condition of the partial indexes on claimable jobs with literal
values, so it reads the first due jobs in claim order instead of sorting every waiting
job. Each claimed job gets its own random token from the database.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from queuectl.tables import CLAIMABLE_CONDITION as CLAIMABLE
from queuectl.tables import JobState, jobs_table, utcnow

# Commits between two WAL checkpoints of a worker's SQLite connection.
CHECKPOINT_INTERVAL = 200
# SQLite's default wal_autocheckpoint, restored before a connection returns to the pool.
SQLITE_AUTOCHECKPOINT = 1000

CLAIMED_COLUMNS = "seq, priority, id, command, queue, attempts, max_retries, timeout, claim_token"
NEW_TOKEN = {
    "sqlite": "lower(hex(randomblob(16)))",
    "postgresql": "replace(gen_random_uuid()::text, '-', '')",
}


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: what it runs, and the token it records the result under."""

    id: str
    command: str
    queue: str
    attempts: int
    max_retries: int
    timeout: float | None
    token: str


@dataclass(frozen=True)
class Outcome:
    """The change a finished attempt made to its job."""

    state: JobState
    retry_in: float | None = None  # seconds, when the job failed and will run again
    recorded: bool = True  # False when the claim was lost and the result discarded


@dataclass(frozen=True)
class Success:
    """A successful attempt waiting to be recorded."""

    claim: Claim
    exit_code: int
    output: str | None
    finished_at: datetime


def _candidates(dialect: str, queue_count: int) -> str:
    """Return the subquery that picks the due claimable jobs to claim next, in claim order.

    Each queue's jobs are read from the index in claim order, so a claim reads the first
    due entries instead of sorting every waiting job. With several queues, the first
    entries of each queue are merged. Parameters: see candidate_params.
    """
    if queue_count <= 1:
        return _queue_head(dialect, "seq", queue_count == 1)
    arms = " UNION ALL ".join(
        f"SELECT seq, priority FROM ({_queue_head(dialect, 'seq, priority', True)}) "
        f"AS queue_{number}"
        for number in range(queue_count)
    )
    mark = "?" if dialect == "sqlite" else "%s"
    return f"SELECT seq FROM ({arms}) AS heads ORDER BY priority DESC, seq LIMIT {mark}"


def _queue_head(dialect: str, columns: str, one_queue: bool) -> str:
    """Return the query of the first due claimable jobs, of one queue or of all of them.

    Parameters: now, the queue when one_queue, then the maximum number of jobs.
    """
    mark = "?" if dialect == "sqlite" else "%s"
    queue = f" AND queue = {mark}" if one_queue else ""
    if dialect == "sqlite":
        index = "ix_jobs_ready_queue" if one_queue else "ix_jobs_ready"
        return (f"SELECT {columns} FROM jobs INDEXED BY {index} WHERE {CLAIMABLE} "
                f"AND run_at <= ?{queue} ORDER BY priority DESC, seq LIMIT ?")
    return (f"SELECT {columns} FROM jobs WHERE {CLAIMABLE} AND run_at <= %s{queue} "
            "ORDER BY priority DESC, seq LIMIT %s FOR UPDATE SKIP LOCKED")


def candidate_params(now: object, queues: list[str] | None, limit: int) -> tuple:
    """Return the parameters of _candidates: now, each queue and the limit, per queue."""
    if not queues:
        return (now, limit)
    if len(queues) == 1:
        return (now, queues[0], limit)
    per_queue = tuple(value for queue in queues for value in (now, queue, limit))
    return (*per_queue, limit)


@functools.cache
def claim_sql(dialect: str, queue_count: int) -> str:
    """Return the UPDATE that claims up to a number of jobs and returns them.

    Parameters: worker id, now, now, lease expiry, then those of the candidates.
    """
    mark = "?" if dialect == "sqlite" else "%s"
    return (
        f"UPDATE jobs SET state = 'processing', attempts = attempts + 1, "
        f"claim_token = {NEW_TOKEN[dialect]}, worker_id = {mark}, started_at = {mark}, "
        f"updated_at = {mark}, lease_expires_at = {mark} "
        f"WHERE seq IN ({_candidates(dialect, queue_count)}) AND {CLAIMABLE} "
        f"RETURNING {CLAIMED_COLUMNS}"
    )


# Records one success on SQLite. Parameters: exit code, output, finished at, now, job id,
# token.
SQLITE_COMPLETE = (
    "UPDATE jobs SET state = 'completed', exit_code = ?, last_error = NULL, output = ?, "
    "finished_at = ?, updated_at = ?, claim_token = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND claim_token = ? AND state = 'processing'"
)


@functools.cache
def record_and_claim_sql(queue_count: int) -> str:
    """Return PostgreSQL's single statement that records successes and claims jobs.

    It returns the id of each recorded job as a row whose seq is NULL, then the claimed
    jobs. Parameters: arrays of ids, tokens, exit codes, outputs and finish times, now,
    then those of claim_sql.
    """
    return (
        "WITH results AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[], "
        "%s::timestamptz[]) AS result(id, token, exit_code, output, finished_at)), "
        "completed AS (UPDATE jobs SET state = 'completed', exit_code = results.exit_code, "
        "last_error = NULL, output = results.output, finished_at = results.finished_at, "
        "updated_at = %s, claim_token = NULL, lease_expires_at = NULL FROM results "
        "WHERE jobs.id = results.id AND jobs.claim_token = results.token "
        "AND jobs.state = 'processing' RETURNING jobs.id), "
        f"claimed AS ({claim_sql('postgresql', queue_count)}) "
        "SELECT NULL::bigint, NULL::integer, id, NULL::text, NULL::text, NULL::integer, "
        "NULL::integer, NULL::float8, NULL::text FROM completed "
        "UNION ALL SELECT * FROM claimed"
    )


class ClaimConnection:
    """One database connection for a worker's claims and successes.

    It keeps a connection of the engine's pool until close(), so a busy worker does not
    check one out (and, on PostgreSQL, ping it) for every job. Driver errors are raised as
    SQLAlchemy's DBAPIError, as every other database call raises them. The broken
    connection is dropped first, and the next call opens a new one.
    """

    def __init__(self, engine: Engine, own_checkpoints: bool = False) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.raw = None  # the pool's proxy of the DBAPI connection, while one is held
        # Whether this SQLite connection checkpoints the WAL itself, outside the writer
        # lock: worth it for a worker's connection, which commits for every few jobs.
        self.own_checkpoints = own_checkpoints and self.dialect == "sqlite"
        self.commits = 0  # commits since the last checkpoint, when own_checkpoints
        # Datetimes are bound as SQLAlchemy binds them, so that SQLite's text timestamps
        # compare correctly with those the rest of queuectl writes.
        self.timestamp = jobs_table.c.run_at.type.bind_processor(engine.dialect)

    def __enter__(self) -> ClaimConnection:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        """Return the connection to the engine's pool."""
        raw, self.raw = self.raw, None
        if raw is None:
            return
        if self.dialect == "postgresql":
            raw.driver_connection.autocommit = False
        elif self.own_checkpoints:
            raw.driver_connection.execute(
                f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT}").close()
        raw.close()

    def record_and_claim(
        self, successes: list[Success], limit: int, worker_id: str,
        queues: list[str] | None, lease_seconds: float,
    ) -> tuple[set[str], list[Claim]]:
        """Record successful attempts and claim up to `limit` due jobs, in one transaction.

        Returns the ids of the jobs whose success was recorded (a job cancelled or taken
        over meanwhile is not), and the claimed jobs, highest priority then oldest first.
        """
        now = utcnow()
        stamp = self.timestamp(now)
        claim_params = (worker_id, stamp, stamp,
                        self.timestamp(now + timedelta(seconds=lease_seconds)),
                        *candidate_params(stamp, queues, limit))
        queue_count = len(queues or ())
        if self.dialect == "postgresql":
            params = (
                [success.claim.id for success in successes],
                [success.claim.token for success in successes],
                [success.exit_code for success in successes],
                [success.output for success in successes],
                [success.finished_at for success in successes],
                now, *claim_params,
            )
            sql = record_and_claim_sql(queue_count)
            rows = self._run(lambda cursor: _fetch_all(cursor, sql, params))
            recorded = {row[2] for row in rows if row[0] is None}
            claimed = [row for row in rows if row[0] is not None]
        else:
            completions = [
                (success.exit_code, success.output, self.timestamp(success.finished_at), stamp,
                 success.claim.id, success.claim.token)
                for success in successes
            ]
            sql = claim_sql(self.dialect, queue_count)

            def record_and_claim(cursor):
                recorded = set()
                for params in completions:
                    cursor.execute(SQLITE_COMPLETE, params)
                    if cursor.rowcount == 1:
                        recorded.add(params[4])
                claimed = _fetch_all(cursor, sql, claim_params) if limit > 0 else []
                return recorded, claimed

            recorded, claimed = self._run(record_and_claim)
        claimed.sort(key=lambda row: (-row[1], row[0]))
        return recorded, [Claim(*row[2:]) for row in claimed]

    def claim(self, worker_id: str, queues: list[str] | None,
              lease_seconds: float) -> Claim | None:
        """Claim the highest-priority, oldest due job and mark it processing, atomically."""
        _, claimed = self.record_and_claim([], 1, worker_id, queues, lease_seconds)
        return claimed[0] if claimed else None

    def complete(self, claim: Claim, exit_code: int, output: str | None) -> Outcome:
        """Record a successful attempt; the job becomes completed."""
        success = Success(claim, exit_code, output, utcnow())
        recorded, _ = self.record_and_claim([success], 0, "", None, 0)
        return Outcome(JobState.COMPLETED, recorded=claim.id in recorded)

    def complete_and_claim(
        self, claim: Claim, exit_code: int, output: str | None,
        worker_id: str, queues: list[str] | None, lease_seconds: float,
    ) -> tuple[Outcome, Claim | None]:
        """Record a successful attempt and claim the next job, in one transaction."""
        success = Success(claim, exit_code, output, utcnow())
        recorded, claimed = self.record_and_claim([success], 1, worker_id, queues,
                                                  lease_seconds)
        outcome = Outcome(JobState.COMPLETED, recorded=claim.id in recorded)
        return outcome, (claimed[0] if claimed else None)

    # Connection and transaction ---------------------------------------------------------

    def _connection(self):
        if self.raw is None:
            raw = self.engine.raw_connection()
            if self.dialect == "postgresql":
                raw.driver_connection.autocommit = True
            elif self.own_checkpoints:
                raw.driver_connection.execute("PRAGMA wal_autocheckpoint = 0").close()
            self.raw = raw
        return self.raw

    def _run(self, work):
        """Run work(cursor) as one transaction and commit it."""
        raw = self._connection()
        dbapi = raw.driver_connection
        try:
            if self.dialect == "postgresql":
                with dbapi.cursor() as cursor:
                    return work(cursor)
            result = self._run_sqlite(dbapi, work)
            if self.own_checkpoints:
                self.commits += 1
                if self.commits >= CHECKPOINT_INTERVAL:
                    self.commits = 0
                    # PASSIVE copies what it can without waiting for readers or writers.
                    dbapi.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
            return result
        except self.engine.dialect.loaded_dbapi.Error as exc:
            self._drop(raw)
            raise DBAPIError.instance(None, None, exc, self.engine.dialect.loaded_dbapi.Error,
                                      dialect=self.engine.dialect) from exc
        except BaseException:
            self._drop(raw)
            raise

    @staticmethod
    def _run_sqlite(dbapi, work):
        lock = getattr(dbapi, "write_lock", None)
        if lock is not None:
            lock.acquire()
            dbapi.holds_lock = True
        cursor = dbapi.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            result = work(cursor)
            dbapi.commit()  # a db._LockingConnection releases the writer lock here
            return result
        except BaseException:
            if dbapi.in_transaction:
                dbapi.rollback()
            elif lock is not None:
                dbapi._release_write_lock()
            raise
        finally:
            cursor.close()

    def _drop(self, raw) -> None:
        """Give up a connection that failed: the pool discards it and opens a new one."""
        self.raw = None
        try:
            raw.invalidate()
        except Exception:  # noqa: BLE001 - the connection is already broken
            pass


def _fetch_all(cursor, sql: str, params: tuple) -> list[tuple]:
    cursor.execute(sql, params)
    return cursor.fetchall()
