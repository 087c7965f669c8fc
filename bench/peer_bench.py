"""Benchmarks of peer Python job queues, measured as bench/run.py measures queuectl.

Every peer runs the same job as queuectl: a shell command through `/bin/sh -c` (see
peers.run_command), with 4 worker processes. Each measurement starts from empty storage
and starts and stops its own workers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common import WORKERS, enqueue_to_done_ms, peak_rss_mib
from services import PostgresDatabase, RedisServer

BENCH_FOLDER = Path(__file__).resolve().parent
# Maximum seconds for all workers of a peer to start and each run a warm-up job.
WORKER_START_TIMEOUT = 120.0
# Maximum seconds for workers to exit after their stop signal, before they are killed.
WORKER_STOP_TIMEOUT = 15.0
# Maximum seconds for a drain of the --jobs jobs.
DRAIN_TIMEOUT = 600.0
# Jobs enqueued one call at a time, as for queuectl.
ENQUEUE_ONE_JOBS = 1000


class WorkerGroup:
    """Worker processes of a peer, each started in a session of its own.

    Own sessions keep Ctrl-C in the terminal away from the workers, so that the
    benchmark's finally blocks stop them in order.
    """

    def __init__(self, commands: list[list[str]], env: dict[str, str], log_folder: Path,
                 stop_signal: int) -> None:
        self.stop_signal = stop_signal
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        try:
            for index, command in enumerate(commands):
                log = log_folder / f"worker-{index}.log"
                with log.open("wb") as output:
                    self.processes.append(subprocess.Popen(
                        command, env=env, cwd=BENCH_FOLDER, stdin=subprocess.DEVNULL,
                        stdout=output, stderr=subprocess.STDOUT, start_new_session=True))
                self.logs.append(log)
        except BaseException:
            self.stop()
            raise

    def check_running(self) -> None:
        """Raise RuntimeError with the end of its log if a worker process has exited."""
        for process, log in zip(self.processes, self.logs):
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip()[-1500:]
                raise RuntimeError(f"worker {process.args} exited with code "
                                   f"{process.returncode}:\n{tail}")

    def stop(self) -> None:
        """Send each worker its graceful stop signal, and kill the ones still running later."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(self.stop_signal)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                # The group is the session that this process leads. It still exists because
                # the process has not been reaped, and it contains any children it forked.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class Peer:
    """One peer job queue: its storage for one measurement, its workers and its calls.

    A subclass sets the class attributes and implements open(), close(), enqueue(),
    completed() and worker_commands(). enqueue_many() enqueues one at a time unless the
    peer has a batch call, named in `batch_call`.
    """

    name = ""  # the name that --systems takes
    package = ""  # the distribution whose version labels the rows
    storage = ""  # the storage backend, as in the row labels
    modules: tuple[str, ...] = ()  # modules that must be importable to measure this peer
    needs_redis = False  # whether it runs on the private redis-server
    batch_call: str | None = None
    stop_signal = signal.SIGTERM

    def __init__(self, redis: RedisServer | None) -> None:
        self.redis = redis

    @classmethod
    def missing_module(cls) -> str | None:
        """Return the first required module that is not installed, or None."""
        for module in cls.modules:
            if importlib.util.find_spec(module) is None:
                return module
        return None

    @property
    def label(self) -> str:
        return f"{self.package} {importlib.metadata.version(self.package)} {self.storage}"

    def open(self, folder: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def enqueue(self, command: str) -> None:
        raise NotImplementedError

    def enqueue_many(self, commands: list[str]) -> None:
        for command in commands:
            self.enqueue(command)

    def completed(self) -> int:
        """Return how many jobs have run to success since open()."""
        raise NotImplementedError

    def worker_commands(self) -> list[list[str]]:
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        """Return the environment of the worker processes, with bench/ on PYTHONPATH for `peers`."""
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(BENCH_FOLDER), path] if path else [str(BENCH_FOLDER)]))


class HueyPeer(Peer):
    package = "huey"
    stop_signal = signal.SIGINT  # Huey's graceful stop; SIGTERM interrupts running tasks

    def open(self, folder: Path) -> None:
        from peers.huey_app import make_huey

        self.huey, self.task = make_huey(**self.storage_options(folder))

    def storage_options(self, folder: Path) -> dict[str, str]:
        raise NotImplementedError

    def close(self) -> None:
        self.huey.storage.close()

    def enqueue(self, command: str) -> None:
        self.task(command)

    def completed(self) -> int:
        # The task returns True, so Huey stores one result for each job that succeeded.
        return self.huey.result_count()

    def worker_commands(self) -> list[list[str]]:
        # One consumer that forks 4 worker processes. The other consumer options keep
        # Huey's defaults, so idle workers poll SQLite storage every 0.1 s, backing off
        # by a factor of 1.15 up to 10 s.
        return [[sys.executable, "-m", "huey.bin.huey_consumer", "peers.huey_app.huey",
                 "--workers", str(WORKERS), "--worker-type", "process"]]


class HueyRedis(HueyPeer):
    name = "huey-redis"
    storage = "redis"
    modules = ("huey", "redis")
    needs_redis = True

    def storage_options(self, folder: Path) -> dict[str, str]:
        self.redis.flush()
        return {"redis_url": self.redis.url}

    def worker_env(self) -> dict[str, str]:
        from peers.huey_app import REDIS_URL_VARIABLE

        return dict(super().worker_env(), **{REDIS_URL_VARIABLE: self.redis.url})


class HueySqlite(HueyPeer):
    name = "huey-sqlite"
    storage = "sqlite"
    modules = ("huey",)

    def storage_options(self, folder: Path) -> dict[str, str]:
        self.sqlite_file = str(folder / "huey.db")
        return {"sqlite_file": self.sqlite_file}

    def worker_env(self) -> dict[str, str]:
        from peers.huey_app import SQLITE_FILE_VARIABLE

        return dict(super().worker_env(), **{SQLITE_FILE_VARIABLE: self.sqlite_file})


class Rq(Peer):
    name = "rq"
    package = "rq"
    storage = "redis"
    modules = ("rq", "redis")
    needs_redis = True
    batch_call = "enqueue_many"
    stop_signal = signal.SIGTERM  # RQ's warm shutdown: finish the current job, then exit
    queue_name = "bench"

    def open(self, folder: Path) -> None:
        from rq import Queue

        self.redis.flush()
        self.connection = self.redis.client()
        self.queue = Queue(self.queue_name, connection=self.connection)

    def close(self) -> None:
        self.connection.close()

    def enqueue(self, command: str) -> None:
        from peers import run_command

        self.queue.enqueue(run_command, command)

    def enqueue_many(self, commands: list[str]) -> None:
        from rq import Queue

        from peers import run_command

        self.queue.enqueue_many([Queue.prepare_data(run_command, (command,))
                                 for command in commands])

    def completed(self) -> int:
        return self.queue.finished_job_registry.count

    def worker_commands(self) -> list[list[str]]:
        # SimpleWorker runs each job in the worker process itself, whereas RQ's default
        # Worker forks a child for every job.
        run = secrets.token_hex(3)
        return [[sys.executable, "-m", "rq.cli", "worker", "--worker-class",
                 "rq.worker.SimpleWorker", "--url", self.redis.url,
                 "--name", f"bench-{run}-{index}", self.queue_name]
                for index in range(WORKERS)]


class Procrastinate(Peer):
    name = "procrastinate"
    package = "procrastinate"
    storage = "postgresql"
    modules = ("procrastinate",)
    batch_call = "batch_defer"
    stop_signal = signal.SIGTERM  # procrastinate's graceful stop

    def open(self, folder: Path) -> None:
        import psycopg

        from peers.procrastinate_app import make_app

        self.database = PostgresDatabase("queuectl_bench_procrastinate")
        try:
            self.app, self.task = make_app(self.database.libpq_url())
            self.app.open()
            self.app.schema_manager.apply_schema()
            self.counter = psycopg.connect(self.database.libpq_url(), autocommit=True)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        try:
            self.counter.close()
            self.app.close()
        finally:
            self.database.close()

    def enqueue(self, command: str) -> None:
        self.task.defer(command=command)

    def enqueue_many(self, commands: list[str]) -> None:
        self.task.batch_defer(*({"command": command} for command in commands))

    def completed(self) -> int:
        row = self.counter.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'").fetchone()
        return row[0]

    def worker_commands(self) -> list[list[str]]:
        # A worker runs a synchronous task in a thread of its own. Four processes with a
        # concurrency of 1 match queuectl's 4 worker processes that run one job each.
        return [[sys.executable, "-m", "procrastinate", "--app",
                 "peers.procrastinate_app.app", "worker", "--concurrency", "1"]
                for _ in range(WORKERS)]

    def worker_env(self) -> dict[str, str]:
        from peers.procrastinate_app import URL_VARIABLE

        return dict(super().worker_env(), **{URL_VARIABLE: self.database.libpq_url()})


PEERS: dict[str, type[Peer]] = {peer.name: peer
                                for peer in (HueyRedis, HueySqlite, Procrastinate, Rq)}


@contextmanager
def opened(peer: Peer):
    """Open empty storage for one measurement in a temporary folder, and close it afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"queuectl-bench-{peer.name}-") as name:
        folder = Path(name)
        peer.open(folder)
        try:
            yield folder
        finally:
            peer.close()


@contextmanager
def running_workers(peer: Peer, folder: Path):
    """Start the peer's workers, wait until each has run a job, and stop them afterwards.

    Yields the process ids of the processes that run the jobs.
    """
    group = WorkerGroup(peer.worker_commands(), peer.worker_env(), folder, peer.stop_signal)
    try:
        yield group, warm_up(peer, group, folder / "warm-up")
    finally:
        group.stop()


def warm_up(peer: Peer, group: WorkerGroup, folder: Path) -> list[int]:
    """Enqueue rounds of 4 jobs until 4 different processes have run one, and return their ids.

    Each job names a file after its parent process, the worker that runs the shell, and
    sleeps 0.2 s so that the idle workers of a round take one job each.
    """
    folder.mkdir()
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    pids: set[int] = set()
    while len(pids) < WORKERS:
        before = peer.completed()
        for _ in range(WORKERS):
            peer.enqueue(f'touch "{folder}/$PPID"; sleep 0.2')
        wait_completed(peer, group, before + WORKERS, deadline,
                       f"{len(pids)} of {WORKERS} workers ran a warm-up job within "
                       f"{WORKER_START_TIMEOUT:.0f} s")
        pids = {int(path.name) for path in folder.iterdir()}
    return sorted(pids)


def wait_completed(peer: Peer, group: WorkerGroup, count: int, deadline: float,
                   failure: str) -> None:
    """Wait until the peer has completed `count` jobs in all; raise TimeoutError with the
    failure text once time.monotonic() passes the deadline."""
    while peer.completed() < count:
        group.check_running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{peer.name}: {failure}")
        time.sleep(0.01)


def bench_drain(peer: Peer, jobs: int) -> tuple[float, float]:
    """Drain throughput of 4 idle workers given `jobs` jobs at once; also their peak RSS.

    The jobs are enqueued through the batch call where the peer has one, else one call
    each. The enqueueing is part of the timed span.
    """
    with opened(peer) as folder, running_workers(peer, folder) as (group, pids):
        time.sleep(1.0)  # let the workers go idle, as the queuectl drain does
        before = peer.completed()
        start = time.perf_counter()
        peer.enqueue_many(["true"] * jobs)
        wait_completed(peer, group, before + jobs, time.monotonic() + DRAIN_TIMEOUT,
                       f"{jobs} jobs not drained within {DRAIN_TIMEOUT:.0f} s")
        elapsed = time.perf_counter() - start
        return jobs / elapsed, peak_rss_mib(pids)


def bench_enqueue_one(peer: Peer, jobs: int = ENQUEUE_ONE_JOBS) -> float:
    """Jobs per second enqueued one library call at a time, with no worker running."""
    with opened(peer):
        start = time.perf_counter()
        for _ in range(jobs):
            peer.enqueue("true")
        return jobs / (time.perf_counter() - start)


def bench_batch(peer: Peer, jobs: int) -> float:
    """Jobs per second of one call of the peer's batch API, building its arguments included."""
    with opened(peer):
        start = time.perf_counter()
        peer.enqueue_many(["true"] * jobs)
        return jobs / (time.perf_counter() - start)


def bench_latency(peer: Peer) -> float:
    """Median milliseconds from enqueue to the command's end, with 4 idle workers."""
    with opened(peer) as folder, running_workers(peer, folder):
        return enqueue_to_done_ms(peer.enqueue, folder / "stamp")
