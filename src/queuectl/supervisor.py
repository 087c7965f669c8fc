"""The supervisor: starts worker processes, replaces those that die, and stops them.

`queuectl worker start` runs a supervisor in the background, detached from the terminal,
as `python -m queuectl.supervisor`; `queuectl worker run` runs one in the foreground. Each supervisor records itself and its
workers' PIDs in a file under `$QUEUECTL_HOME/run/`, which `worker stop` and `status` read.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from queuectl.db import queuectl_home
from queuectl.errors import WorkerError
from queuectl.procfs import environment_variable, process_stats

log = logging.getLogger(__name__)

# A worker that dies this many times within RESTART_WINDOW seconds is restarted more slowly.
RESTART_BURST = 5
RESTART_WINDOW = 60.0
RESTART_PAUSE = 10.0
LOG_FILE_NAME = "worker.log"


# The format of the workers' log lines.
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s: %(message)s"


def run_dir() -> Path:
    """Return the folder of the supervisors' PID files, created owner-only."""
    path = queuectl_home() / "run"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def log_path() -> Path:
    """Return the workers' log file: `$QUEUECTL_HOME/worker.log`."""
    return queuectl_home() / LOG_FILE_NAME


@dataclass
class Slot:
    """One worker position of a supervisor, and the process that fills it now."""

    name: str
    process: multiprocessing.Process | None = None
    worker_id: str = ""
    deaths: list[float] = field(default_factory=list)
    restart_at: float = 0.0
    done: bool = False  # exited on its own in burst mode or after a stop


def _worker_main(worker_id: str, name: str, queues: list[str] | None, burst: bool,
                 supervisor_pid: int) -> None:
    """The entry point of a worker child process."""
    from queuectl.workers import Worker

    worker = Worker(worker_id, name, queues, burst, supervisor_pid)
    worker.install_signal_handlers()
    _stop_when_parent_dies()
    try:
        worker.run()
    except Exception:
        logging.getLogger(f"queuectl.{name}").exception("%s crashed", name)
        raise


class Supervisor:
    """Keeps `count` worker processes running until asked to stop."""

    def __init__(self, count: int, queues: list[str] | None, burst: bool) -> None:
        self.count = count
        self.queues = queues
        self.burst = burst
        self.slots = [Slot(f"worker-{index}") for index in range(1, count + 1)]
        self.stop_requests = 0
        self.context = multiprocessing.get_context("fork")
        self.pid_file = run_dir() / f"supervisor-{os.getpid()}.json"

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requests += 1
        manner = "gracefully" if self.stop_requests == 1 else "by force"
        log.info("supervisor received %s; stopping the workers %s",
                 signal.Signals(signum).name, manner)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                os.kill(slot.process.pid, signal.SIGTERM)

    def run(self) -> int:
        """Supervise until every worker has exited; return the exit status."""
        multiprocessing.current_process().name = "supervisor"
        become_subreaper()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("supervisor %s starting %s worker(s)", os.getpid(), self.count)
        _import_worker_modules()
        try:
            for slot in self.slots:
                self._start(slot)
            self._write_pid_file()
            while self._loop_once():
                pass
            # Processes that jobs left in the background were re-parented here; stopping
            # the workers stops them too, so nothing of the queue outlives `worker stop`.
            self._stop_orphaned_jobs()
            self._reap_orphans()
        finally:
            self.pid_file.unlink(missing_ok=True)
        log.info("supervisor %s stopped", os.getpid())
        return 0

    def _start(self, slot: Slot) -> None:
        slot.worker_id = f"{_host()}:{os.getpid()}:{slot.name}:{secrets.token_hex(4)}"
        slot.process = self.context.Process(
            target=_worker_main, name=slot.name,
            args=(slot.worker_id, slot.name, self.queues, self.burst, os.getpid()),
        )
        slot.process.start()

    def _loop_once(self) -> bool:
        """Wait for a worker to exit and handle it; return False once all have exited."""
        running = [slot for slot in self.slots if slot.process is not None]
        waiting = [slot for slot in self.slots if slot.process is None and not slot.done]
        if not running and (not waiting or self.stop_requests):
            return False
        timeout = 1.0
        if waiting:
            timeout = max(0.0, min(slot.restart_at for slot in waiting) - time.monotonic())
        sentinels = [slot.process.sentinel for slot in running]
        multiprocessing.connection.wait(sentinels, timeout=min(timeout, 1.0))
        for slot in running:
            if not slot.process.is_alive():
                self._handle_exit(slot)
        self._reap_orphans()
        for slot in waiting:
            if not self.stop_requests and time.monotonic() >= slot.restart_at:
                self._start(slot)
                self._write_pid_file()
        return True

    def _handle_exit(self, slot: Slot) -> None:
        process = slot.process
        process.join()
        slot.process = None
        code = process.exitcode
        if code == 0 or self.stop_requests:
            slot.done = True
            log.info("%s (pid %s) exited", slot.name, process.pid)
            self._recover_jobs(slot, "worker lost")
            return
        reason = (f"killed by {signal.Signals(-code).name}" if code < 0
                  else f"exited with status {code}")
        running = self._stop_orphaned_jobs()
        self._recover_jobs(slot, f"worker lost ({reason})", running)
        now = time.monotonic()
        slot.deaths = [t for t in slot.deaths if now - t < RESTART_WINDOW] + [now]
        pause = RESTART_PAUSE if len(slot.deaths) >= RESTART_BURST else 0.5
        slot.restart_at = now + pause
        log.warning("%s (pid %s) %s; restarting it in %ss", slot.name, process.pid, reason,
                    pause)

    def _orphans(self) -> list[int]:
        """Return this process's children that are not workers: re-parented descendants."""
        workers = {slot.process.pid for slot in self.slots if slot.process is not None}
        return [pid for pid in _child_pids(os.getpid()) if pid not in workers]

    def _stop_orphaned_jobs(self) -> set[str]:
        """Kill the process groups of the jobs whose worker just died; return their job ids.

        A job runs in its own process group. When its worker is killed, the job's shell is
        re-parented to the supervisor (a child subreaper) and its group is stopped here, so
        the recovered job never runs twice at the same time. The job ids come from the
        QUEUECTL_JOB_ID variable that each job's processes start with.
        NOTE: a background process left by an earlier, finished job is re-parented here
        too and is stopped along with them. A job whose processes all replaced their
        environment is not found, so it is requeued as if it had not started.
        """
        running = set()
        for pid in self._orphans():
            job_id = environment_variable(pid, "QUEUECTL_JOB_ID")
            if job_id:
                running.add(job_id)
            try:
                pgid = os.getpgid(pid)
                if pgid == os.getpgrp():
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return running

    def _reap_orphans(self) -> None:
        """Collect the exit status of re-parented processes that ended, so none stays a zombie."""
        for pid in self._orphans():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def _recover_jobs(self, slot: Slot, error: str, running: set[str] | None = None) -> None:
        """Recover at once the jobs a dead worker held, instead of waiting for their lease.

        `running` names the jobs whose commands were running: see
        attempts.recover_worker_jobs.
        """
        from queuectl import attempts
        from queuectl.db import create_queue_engine
        from queuectl.tables import JobState
        from queuectl.workers import unregister

        try:
            engine = create_queue_engine()
            try:
                recovered = attempts.recover_worker_jobs(engine, slot.worker_id, error, running)
                for claim, outcome in recovered:
                    if outcome.state is JobState.PENDING:
                        log.warning("job %s held by the lost %s returned to the queue, "
                                    "attempt not counted", claim.id, slot.name,
                                    extra={"job_id": claim.id, "action": "worker_lost"})
                        continue
                    log.warning("job %s held by the lost %s is now %s (attempt %s/%s)",
                                claim.id, slot.name, outcome.state.value, claim.attempts,
                                claim.max_retries,
                                extra={"job_id": claim.id, "action": "worker_lost"})
                unregister(engine, slot.worker_id)
            finally:
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - the lease expiry recovers the job later
            log.error("could not recover the jobs of %s now (%s); they are recovered when "
                      "their lease expires", slot.name, exc)

    def _write_pid_file(self) -> None:
        record = {
            "pid": os.getpid(),
            "host": _host(),
            "started": time.time(),
            "queues": self.queues,
            "workers": {
                slot.name: slot.process.pid for slot in self.slots if slot.process is not None
            },
        }
        temporary = self.pid_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, self.pid_file)


def _import_worker_modules() -> None:
    """Import the worker's modules and the database driver before any worker is forked.

    Each worker then shares them with the supervisor instead of importing them itself.
    An import in the worker also left its passing allocations in the worker's peak memory:
    4 MiB more per PostgreSQL worker in bench/run.py, with Python 3.11 and psycopg 3.3.
    """
    from queuectl import db, workers  # noqa: F401

    try:
        db.database_url().get_dialect().import_dbapi()
    except Exception:  # noqa: BLE001 - each worker reports a bad URL or driver itself
        pass


def _stop_when_parent_dies() -> None:
    """Ask Linux to send this process SIGTERM when its supervisor dies, even by SIGKILL.

    The worker then stops gracefully instead of running on where no `worker stop` finds it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("cannot ask for a signal on the supervisor's death")


def become_subreaper() -> None:
    """Make orphaned descendants of this process its children instead of init's (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("cannot become a child subreaper; orphaned jobs go to init")


def _child_pids(parent: int) -> list[int]:
    """Return the pids of a process's children."""
    return [process.pid for process in process_stats() if process.ppid == parent]


def _host() -> str:
    from queuectl.workers import hostname

    return hostname()


def read_supervisors() -> list[dict]:
    """Return the PID records of the supervisors on this host that are still running."""
    records = []
    for path in sorted(run_dir().glob("supervisor-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _is_queuectl_process(record.get("pid", 0)):
            records.append(record)
        else:
            path.unlink(missing_ok=True)  # left behind by a supervisor that was killed
    return records


def _is_queuectl_process(pid: int) -> bool:
    """Return whether pid is a running queuectl process, guarding against PID reuse."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"queuectl" in cmdline


def start_background(count: int, queues: list[str] | None, wait: float = 30.0) -> dict:
    """Start a detached supervisor with `count` workers; return its PID record when ready."""
    log_file = log_path()
    before = {record["pid"] for record in read_supervisors()}
    # -P keeps the current folder off sys.path, so a queuectl.py or queuectl/ folder where
    # the user starts the workers is never imported in place of this package.
    command = [sys.executable, "-P", "-m", "queuectl.supervisor", "--count", str(count)]
    if queues:
        command += ["--queue", ",".join(queues)]
    with open(log_file, "ab") as output:
        os.chmod(log_file, 0o600)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WorkerError(
                f"the worker supervisor exited at start with status {process.returncode}; "
                f"see {log_file}"
            )
        for record in read_supervisors():
            if record["pid"] == process.pid and record["pid"] not in before:
                if len(record.get("workers", {})) == count:
                    return record
        time.sleep(0.05)
    raise WorkerError(f"the workers did not start within {wait:g} s; see {log_file}")


def stop_local(timeout: float | None, force: bool) -> list[dict]:
    """Stop this host's supervisors and wait for them to exit; return their PID records.

    A graceful stop lets each worker finish its current job. With force, or once `timeout`
    seconds have passed, the running jobs are killed and put back in the queue.
    """
    records = read_supervisors()
    for record in records:
        _send(record["pid"], signal.SIGTERM)
        if force:
            time.sleep(0.1)
            _send(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout if timeout is not None else None
    forced = force
    while any(_is_queuectl_process(record["pid"]) for record in records):
        if deadline is not None and time.monotonic() >= deadline and not forced:
            log.warning("workers still running after %ss; forcing them to stop", timeout)
            for record in records:
                _send(record["pid"], signal.SIGTERM)
            forced = True
        time.sleep(0.05)
    return records


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run_detached(argv: list[str]) -> int:
    """Run the supervisor that `worker start` detaches, from its command-line arguments.

    It does not load the CLI, so the workers it forks do not carry the CLI's modules in
    their memory. Its stderr is the log file.
    """
    parser = argparse.ArgumentParser(prog="python -m queuectl.supervisor")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--queue", help="comma-separated queue names; all queues if omitted")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    queues = options.queue.split(",") if options.queue else None
    return Supervisor(options.count, queues, burst=False).run()


if __name__ == "__main__":
    # Run the function of the imported module, not of this __main__ copy, so that there
    # is one Supervisor class in the process.
    from queuectl import supervisor

    sys.exit(supervisor.run_detached(sys.argv[1:]))

