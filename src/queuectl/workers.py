"""The worker: claims jobs, runs them, records results, and renews its leases."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from datetime import timedelta

from sqlalchemy import Engine, Row, delete, insert, select, update
from sqlalchemy.exc import DBAPIError

# A worker process imports no part of the ORM: these modules use Core only, which keeps
# the memory of every worker process smaller.
from queuectl import attempts, config
from queuectl.claims import Claim, ClaimConnection, Outcome, Success
from queuectl.db import database_url, display_url, get_engine, read_only
from queuectl.enqueueing import NOTIFY_CHANNEL
from queuectl.execution import OutputTail, Result, run_command
from queuectl.tables import JobState, utcnow, workers_table
from queuectl.wake import WakeListener, wake_dir

log = logging.getLogger(__name__)

# Maximum pause between two attempts to reach a database that has gone away, in seconds.
MAX_RECONNECT_DELAY = 30.0
# How often the running settings are reread, in seconds.
SETTINGS_REFRESH = 5.0
# Seconds an idle worker waits after its LISTEN connection failed before it looks for jobs
# and listens again. No notification arrives meanwhile, so a longer wait delays new jobs.
LISTEN_RETRY_DELAY = 1.0
# The maximum pause between two heartbeats, in seconds. A heartbeat also notices a job
# cancelled while it runs and stores the output so far, so it runs at least this often.
MAX_HEARTBEAT_INTERVAL = 2.0
# After a job shorter than this, in seconds, a worker claims its next jobs while the
# current one runs, so that no database round trip sits between two short jobs.
CLAIM_AHEAD_BELOW = 0.1
# How much work, in seconds of the last job's run time, a worker claims ahead at once.
CLAIM_AHEAD_SECONDS = 0.02
# The maximum number of jobs a worker claims ahead at once.
MAX_CLAIM_AHEAD = 16
# Jobs claimed ahead return to the queue once the job running before them has run this
# long, in seconds, so that a long job does not keep them from idle workers. Leases are at
# least 3 s, so these jobs never outlive theirs.
CLAIM_AHEAD_RELEASE = 1.0
# The maximum time, in seconds, a success waits to be recorded with others in one commit.
MAX_RECORD_DELAY = 0.01


def hostname() -> str:
    """Return this host's name as workers record it (QUEUECTL_HOSTNAME overrides it)."""
    return os.environ.get("QUEUECTL_HOSTNAME") or socket.gethostname()


def register(engine: Engine, worker_id: str, name: str, queues: list[str] | None,
             supervisor_pid: int) -> None:
    """Insert or refresh this worker's row in the workers table."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(delete(workers_table).where(workers_table.c.id == worker_id))
        conn.execute(insert(workers_table).values(
            id=worker_id, hostname=hostname(), pid=os.getpid(), supervisor_pid=supervisor_pid,
            name=name, queues=",".join(queues) if queues else "*", started_at=now,
            heartbeat_at=now, current_job=None, stop_requested=False,
        ))


def unregister(engine: Engine, worker_id: str) -> None:
    """Delete a worker's row."""
    with engine.begin() as conn:
        conn.execute(delete(workers_table).where(workers_table.c.id == worker_id))


def remove_stale_workers(engine: Engine, lease_seconds: float) -> int:
    """Delete the rows of workers whose heartbeat stopped more than two leases ago."""
    cutoff = utcnow() - timedelta(seconds=2 * lease_seconds)
    with engine.begin() as conn:
        result = conn.execute(
            delete(workers_table).where(workers_table.c.heartbeat_at < cutoff)
        )
    return result.rowcount


def request_stop_all(engine: Engine) -> int:
    """Ask every registered worker, on every host, to stop gracefully; return how many."""
    with engine.begin() as conn:
        result = conn.execute(update(workers_table).values(stop_requested=True))
    return result.rowcount


def list_workers(engine: Engine) -> list[tuple[Row, str | None]]:
    """Return the workers that are alive, each with the id of the job it is running.

    A worker counts as alive while its heartbeat is younger than one lease and, on this
    host, while its process exists. The running job is the one its last heartbeat named,
    so it can lag by up to MAX_HEARTBEAT_INTERVAL. The jobs table cannot tell it: a worker
    also holds, as processing, the jobs it has claimed ahead.
    """
    lease = float(config.get_value(engine, "lease_seconds"))
    cutoff = utcnow() - timedelta(seconds=lease)
    this_host = hostname()
    with read_only(engine).connect() as conn:
        records = conn.execute(select(workers_table).order_by(
            workers_table.c.hostname, workers_table.c.started_at, workers_table.c.name)).all()
    alive = []
    for record in records:
        if record.heartbeat_at < cutoff:
            continue
        if record.hostname == this_host and not pid_alive(record.pid):
            continue
        alive.append((record, record.current_job))
    return alive


def pid_alive(pid: int) -> bool:
    """Return whether a process with this pid exists (zombies included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_connection_error(exc: BaseException) -> bool:
    """Return whether a database error means the connection is gone, not bad SQL."""
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or type(exc).__name__ == "OperationalError"
        or "OperationalError" in type(getattr(exc, "orig", None)).__name__
    )


class Worker:
    """One worker process's loop: claim, run, record, repeat until asked to stop."""

    def __init__(self, worker_id: str, name: str, queues: list[str] | None, burst: bool,
                 supervisor_pid: int) -> None:
        self.id = worker_id
        self.name = name
        self.queues = queues
        self.burst = burst
        self.supervisor_pid = supervisor_pid
        self.stopping = threading.Event()  # finish the current job, then exit
        self.forced = threading.Event()  # stop the current job now and requeue it
        # The token of a claim found taken from this worker (cancelled, or recovered after
        # its lease expired). It names the claim, so a renewal that fails because the
        # previous job was just recorded cannot stop the next one.
        self.lost_token: str | None = None
        self.exited = threading.Event()  # wakes the heartbeat thread so it can end
        # Wakes the heartbeat thread for an early beat, which records the running job.
        self.beat_now = threading.Event()
        self.announced = False  # whether an early beat was asked for the running job
        self.claim: Claim | None = None
        self.claim_started = 0.0  # time.monotonic() when the current job started
        # Jobs claimed ahead, in the order they run. Only the main loop's thread uses them.
        self.ahead: deque[Claim] = deque()
        # Successes not yet recorded: they are recorded within MAX_RECORD_DELAY while the
        # next jobs run, or before the worker claims, waits or exits. A worker that dies
        # first loses them, and those jobs run again once their leases expire.
        self.unrecorded: list[Success] = []
        self.last_duration: float | None = None  # seconds the last job ran
        self.tail: OutputTail | None = None
        # Read once: os.environ decodes every variable on each copy, once per job.
        self.environment = dict(os.environ)
        self.tail_stored = 0  # bytes of the running job's output already stored
        self.log = logging.getLogger(f"queuectl.{name}")
        self.engine: Engine | None = None
        # The connection the main loop claims jobs and records successes on.
        self.claims: ClaimConnection | None = None
        # Held by the heartbeat while it renews a lease and by the main loop while it lets
        # go of a finished job, so a renewal that fails because the job was just recorded
        # is not taken for a lost claim.
        self.claim_lock = threading.Lock()
        self.settings: dict = {}
        self.settings_read_at = 0.0
        self.recovered_at = 0.0
        self.listener = None  # PostgreSQL connection that LISTENs for new jobs
        self.wake_listener: WakeListener | None = None  # SQLite wake-up socket

    # Signals ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Make the first SIGTERM stop gracefully and the second force; ignore SIGINT.

        A Ctrl-C in the terminal reaches the supervisor, which forwards SIGTERM.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum, _frame) -> None:
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()
        if self.wake_listener is not None:
            self.wake_listener.wake()

    # Main loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Work until stopped (or, in burst mode, until no unfinished job is left)."""
        self.engine = self._connect_with_retry()
        self.claims = ClaimConnection(self.engine, own_checkpoints=True)
        if wake_dir(self.engine.url) is not None:
            self.wake_listener = WakeListener(self.engine.url)
        self._with_reconnect(lambda: register(
            self.engine, self.id, self.name, self.queues, self.supervisor_pid))
        self.log.info("%s started (pid %s, queues %s, database %s)", self.name, os.getpid(),
                      ",".join(self.queues) if self.queues else "all",
                      display_url(self.engine.url), extra={"action": "worker_start"})
        heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"{self.name}-heartbeat",
                                     daemon=True)
        heartbeat.start()
        try:
            self._loop()
        finally:
            self.stopping.set()
            self._record_and_claim(0)
            self._release_ahead()
            self.exited.set()
            self.beat_now.set()
            heartbeat.join(timeout=5)
            self._close_listener()
            self.claims.close()
            if self.wake_listener is not None:
                self.wake_listener.close()
            try:
                unregister(self.engine, self.id)
            except DBAPIError as exc:
                self.log.warning("could not unregister %s: %s", self.name, _first_line(exc))
            self.log.info("%s stopped", self.name, extra={"action": "worker_stop"})

    def _loop(self) -> None:
        while not self.stopping.is_set():
            if os.getppid() != self.supervisor_pid:
                # The supervisor died before this process asked for a signal on its death.
                self.log.warning("%s lost its supervisor %s; stopping", self.name,
                                 self.supervisor_pid)
                return
            self._refresh_settings()
            self._recover_expired_leases()
            claim = self._next_job()
            if claim is not None:
                self._process(claim)
                continue
            if self.burst and not self._with_reconnect(
                    lambda: attempts.has_unfinished_jobs(self.engine, self.queues)):
                self.log.info("%s found no unfinished job; exiting", self.name)
                return
            # A worker woken from idle claims one job at a time until it has run one, so
            # that the few jobs that woke it spread over every idle worker.
            self.last_duration = None
            self._wait_for_work(self._idle_timeout())

    def _next_job(self) -> Claim | None:
        """Return the job to run next: one claimed ahead, or a new claim.

        Successes not yet recorded are recorded in the same transaction as the claim.
        """
        if not self.ahead:
            self._record_and_claim(self._claim_size() or 1)
        return self.ahead.popleft() if self.ahead else None

    def _claim_size(self) -> int:
        """Return how many jobs to claim ahead: 0 unless the last job was short."""
        if (self.last_duration is None or self.last_duration >= CLAIM_AHEAD_BELOW
                or self.stopping.is_set()):
            return 0
        return max(1, min(MAX_CLAIM_AHEAD, int(CLAIM_AHEAD_SECONDS / max(self.last_duration,
                                                                         1e-6))))

    def _process(self, claim: Claim) -> None:
        self.claim = claim
        self.claim_started = time.monotonic()
        self.announced = False
        self.log.debug("job %s started (attempt %s/%s, queue %s)", claim.id, claim.attempts,
                       claim.max_retries, claim.queue,
                       extra={"job_id": claim.id, "action": "job_start"})
        timeout = claim.timeout or float(self.settings["job_timeout"]) or None
        environment = dict(self.environment, QUEUECTL_JOB_ID=claim.id,
                           QUEUECTL_JOB_ATTEMPT=str(claim.attempts))
        interrupt = _Interrupt(self, claim.token)
        self.tail = OutputTail(int(self.settings["output_limit"]))
        self.tail_stored = 0
        try:
            result = run_command(claim.command, timeout, self.tail.limit, force=interrupt,
                                 env=environment, tail=self.tail,
                                 while_running=self._while_running)
        finally:
            with self.claim_lock:
                self.claim = None
                self.tail = None
        self.last_duration = time.monotonic() - self.claim_started
        if result.succeeded and self.lost_token != claim.token:
            self.unrecorded.append(Success(claim, result.exit_code, result.output, utcnow()))
        else:
            self._record(claim, result)

    def _while_running(self) -> float | None:
        """Do the database work that can wait for a running job; called while it runs.

        Returns the seconds until the next call is due, or None when none is.
        """
        running = time.monotonic() - self.claim_started
        if not self.announced and running >= CLAIM_AHEAD_BELOW:
            # A job this long is worth showing in `status` now, not at the next heartbeat.
            self.announced = True
            self.beat_now.set()
        if self.ahead and running >= CLAIM_AHEAD_RELEASE:
            self._release_ahead()
        size = self._claim_size() if running < CLAIM_AHEAD_RELEASE else 0
        if size and not self.ahead:
            self._record_and_claim(size)
        elif self.unrecorded and (not self.ahead or self._unrecorded_age() >= MAX_RECORD_DELAY):
            self._record_and_claim(0)
        due = [] if self.announced else [CLAIM_AHEAD_BELOW - running]
        if self.unrecorded:
            due.append(MAX_RECORD_DELAY - self._unrecorded_age())
        if self.ahead:
            due.append(CLAIM_AHEAD_RELEASE - running)
        return max(min(due), 0.001) if due else None

    def _unrecorded_age(self) -> float:
        return (utcnow() - self.unrecorded[0].finished_at).total_seconds()

    def _record_and_claim(self, limit: int) -> None:
        """Record the successes not yet recorded and claim up to `limit` jobs ahead.

        Recording is retried until the database takes it; claims give up on a stop.
        """
        successes, self.unrecorded = self.unrecorded, []
        if not successes and (limit == 0 or self.stopping.is_set()):
            return
        if self.stopping.is_set():
            limit = 0
        pair = self._with_reconnect(
            lambda: self.claims.record_and_claim(successes, limit, self.id, self.queues,
                                                 self.settings["lease_seconds"]),
            give_up=None if successes else self._GIVE_UP_ON_STOP)
        recorded, claimed = pair if pair is not None else (None, [])
        self.ahead.extend(claimed)
        if recorded is None:
            return  # forced to stop while the database was unreachable
        for success in successes:
            outcome = Outcome(JobState.COMPLETED, recorded=success.claim.id in recorded)
            self._log_outcome(success.claim, None, outcome)

    def _record(self, claim: Claim, result: Result) -> None:
        """Store a failed, interrupted or lost attempt, retrying until the database takes it."""
        extra = {"job_id": claim.id, "action": "job_end"}
        if self.lost_token == claim.token:
            self.log.warning("job %s was cancelled or recovered elsewhere while running here; "
                             "its command was stopped and its result discarded", claim.id,
                             extra=extra)
            return
        if result.interrupted:
            released = self._with_reconnect(
                lambda: attempts.release(self.engine, claim, "interrupted by a forced stop"),
                give_up=None)
            if released:
                self.log.warning("job %s interrupted by a forced stop and returned to the "
                                 "queue (attempt not counted)", claim.id, extra=extra)
            return
        outcome = self._with_reconnect(
            lambda: attempts.fail(self.engine, claim, result.error, result.exit_code,
                              result.output),
            give_up=None)
        self._log_outcome(claim, result, outcome)

    def _release_ahead(self) -> None:
        """Return the jobs claimed ahead to the queue, attempts uncounted."""
        while self.ahead:
            claim = self.ahead.popleft()
            try:
                attempts.release(self.engine, claim, None)
            except DBAPIError as exc:
                self.log.warning("could not return job %s to the queue (%s); it is recovered "
                                 "when its lease expires", claim.id, _first_line(exc),
                                 extra={"job_id": claim.id, "action": "release"})

    def _log_outcome(self, claim: Claim, result: Result | None, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        attempt = f"{claim.attempts}/{claim.max_retries}"
        extra = {"job_id": claim.id, "action": "job_end"}
        if not outcome.recorded:
            self.log.warning("job %s was taken over before its result was stored; the result "
                             "is discarded", claim.id, extra=extra)
        elif outcome.state is JobState.COMPLETED:
            self.log.info("job %s completed (attempt %s, exit code 0)", claim.id, attempt,
                          extra=extra)
        elif outcome.state is JobState.FAILED:
            self.log.info("job %s failed (attempt %s, %s), retry in %ss", claim.id, attempt,
                          result.error, _seconds(outcome.retry_in), extra=extra)
        else:
            self.log.warning("job %s moved to the DLQ after %s attempt%s (%s)", claim.id,
                             claim.attempts, "" if claim.attempts == 1 else "s", result.error,
                             extra=extra)

    # Database resilience ----------------------------------------------------------------

    def _connect_with_retry(self) -> Engine:
        delay = 1.0
        while True:
            try:
                return get_engine()
            except Exception as exc:  # noqa: BLE001 - any failure to open is retried
                if self.stopping.is_set():
                    raise
                self.log.error("cannot open the database %s: %s; retrying in %ss",
                               display_url(database_url()), _first_line(exc), _seconds(delay))
                self.stopping.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    _GIVE_UP_ON_STOP = object()

    def _with_reconnect(self, operation, give_up=_GIVE_UP_ON_STOP):
        """Run a database operation, retrying with backoff while the connection is lost.

        By default a pending stop ends the retries (the caller then sees None). With
        give_up=None the operation is retried until it succeeds or the worker is forced to
        stop, because it stores a finished job's result.
        """
        delay = 0.5
        while True:
            try:
                return operation()
            except DBAPIError as exc:
                if not is_connection_error(exc):
                    raise
                stop = self.forced if give_up is None else self.stopping
                if stop.is_set():
                    self.log.error("giving up on the database after a stop request: %s",
                                   _first_line(exc))
                    return None
                self.log.error("database error: %s; retrying in %ss", _first_line(exc),
                               _seconds(delay), extra={"action": "db_retry"})
                self._close_listener()
                time.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    # Settings, recovery and waiting -----------------------------------------------------

    def _refresh_settings(self) -> None:
        if time.monotonic() - self.settings_read_at < SETTINGS_REFRESH and self.settings:
            return
        values = self._with_reconnect(lambda: config.effective_values(self.engine))
        if values is not None:
            self.settings = values
            self.settings_read_at = time.monotonic()

    def _recover_expired_leases(self) -> None:
        """Fail the jobs of workers that stopped renewing their leases, every half lease."""
        lease = float(self.settings["lease_seconds"])
        if time.monotonic() - self.recovered_at < lease / 2:
            return
        self.recovered_at = time.monotonic()
        recovered = self._with_reconnect(lambda: attempts.recover_expired(self.engine)) or []
        for claim, outcome in recovered:
            self.log.warning("job %s recovered from a lost worker (attempt %s/%s): now %s",
                             claim.id, claim.attempts, claim.max_retries, outcome.state.value,
                             extra={"job_id": claim.id, "action": "lease_expired"})
        self._with_reconnect(lambda: remove_stale_workers(self.engine, lease))

    def _idle_timeout(self) -> float:
        """Return how long to sleep: the poll interval, or less when a job is due sooner."""
        poll = float(self.settings["poll_interval"])
        due = self._with_reconnect(lambda: attempts.next_run_at(self.engine, self.queues))
        if due is None:
            return poll
        return min(poll, max((due - utcnow()).total_seconds(), 0.0))

    def _wait_for_work(self, timeout: float) -> None:
        """Sleep until new work may be due: a wake-up, a stop, or the timeout."""
        if self.wake_listener is not None:
            self.wake_listener.wait(timeout)
            return
        if self.engine.dialect.name == "postgresql":
            try:
                if self._wait_for_notification(timeout):
                    return
            except Exception as exc:  # noqa: BLE001 - the poll below still finds the work
                self.log.warning("LISTEN connection failed: %s; listening again in %ss",
                                 _first_line(exc), _seconds(LISTEN_RETRY_DELAY))
                self._close_listener()
                timeout = min(timeout, LISTEN_RETRY_DELAY)
        self.log.debug("%s idle; polling again in %ss", self.name, timeout)
        self.stopping.wait(timeout)

    def _wait_for_notification(self, timeout: float) -> bool:
        import psycopg

        if self.listener is None:
            url = self.engine.url.set(drivername="postgresql")
            self.listener = psycopg.connect(url.render_as_string(hide_password=False),
                                            autocommit=True, connect_timeout=10)
            self.listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # A job enqueued before LISTEN sent no notification here, so look for jobs again.
            return True
        # Wake at least every half second to notice a stop request.
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            for _ in self.listener.notifies(timeout=min(remaining, 0.5), stop_after=1):
                return True
        return True

    def _close_listener(self) -> None:
        if self.listener is not None:
            try:
                self.listener.close()
            except Exception:  # noqa: BLE001 - the connection is being discarded
                pass
            self.listener = None

    # Heartbeat --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Renew the worker's heartbeat and the current job's lease every third of a lease.

        The interval is at most MAX_HEARTBEAT_INTERVAL, however long the lease.
        """
        while not self.stopping.is_set() or self.claim is not None:
            lease = float(self.settings.get("lease_seconds", 30))
            try:
                self._beat(lease)
            except DBAPIError as exc:
                self.log.error("heartbeat failed: %s", _first_line(exc),
                               extra={"action": "heartbeat"})
            self.beat_now.wait(min(lease / 3, MAX_HEARTBEAT_INTERVAL))
            self.beat_now.clear()
            if self.exited.is_set():
                return

    def _beat(self, lease: float) -> None:
        with self.claim_lock:
            claim, tail = self.claim, self.tail
            renewed = claim is None or attempts.renew_lease(self.engine, claim, lease)
            if not renewed:
                self.log.warning("job %s is no longer held by %s (cancelled, or its lease "
                                 "expired); stopping it", claim.id, self.name,
                                 extra={"job_id": claim.id, "action": "lease_lost"})
                self.lost_token = claim.token
        if renewed and claim is not None and tail is not None and tail.total != self.tail_stored:
            self.tail_stored = tail.total
            attempts.store_partial_output(self.engine, claim, tail.text())
        with self.engine.begin() as conn:
            row = conn.execute(
                update(workers_table).where(workers_table.c.id == self.id)
                .values(heartbeat_at=utcnow(), current_job=claim.id if claim else None)
                .returning(workers_table.c.stop_requested)
            ).first()
        if row is None:
            register(self.engine, self.id, self.name, self.queues, self.supervisor_pid)
        elif row.stop_requested and not self.stopping.is_set():
            self.log.info("%s asked to stop through the database", self.name)
            self.stopping.set()
            if self.wake_listener is not None:
                self.wake_listener.wake()


class _Interrupt:
    """An event-like flag, set once the worker is forced to stop or loses this claim."""

    def __init__(self, worker: Worker, token: str) -> None:
        self.worker = worker
        self.token = token

    def is_set(self) -> bool:
        return self.worker.forced.is_set() or self.worker.lost_token == self.token


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"
