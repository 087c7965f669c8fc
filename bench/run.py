"""Benchmarks of queuectl against a plain thread pool and peer Python job queues.

Run by hand, never by CI:
    python bench/run.py [--jobs 2000] [--runs 5] [--backends sqlite,postgresql]
                        [--systems pool,queuectl,huey-redis,huey-sqlite,procrastinate,rq]

Each figure is the median of --runs runs, with the spread (min to max). Every run starts
from an empty database in a temporary folder. PostgreSQL runs use a fresh database on the
server that QUEUECTL_BENCH_PG_URL names (default: the local server, user postgres). Huey
on Redis and RQ use a private redis-server on a Unix socket, which the script starts and
stops itself. The peers need `pip install -e '.[bench]'`, and a peer that is not installed
is skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import peer_bench
from common import WORKERS, enqueue_to_done_ms, peak_rss_mib
from report import Results, format_table, goal_rows
from services import PostgresDatabase, RedisServer

SYSTEMS = ("pool", "queuectl", *peer_bench.PEERS)
BACKENDS = ("sqlite", "postgresql")
# Jobs in the small queue of the status and list figures.
SMALL_QUEUE = 1000

T = TypeVar("T")


def queuectl(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "queuectl", *args], env=env, input=input,
                          capture_output=True, text=True, check=True)


class Database:
    """An empty queue database for one run, removed afterwards."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.folder = tempfile.TemporaryDirectory(prefix="queuectl-bench-")
        self.env = dict(os.environ, QUEUECTL_HOME=str(Path(self.folder.name) / "home"))
        self.pg_database = None
        if backend == "postgresql":
            self.pg_database = PostgresDatabase("queuectl_bench")
            self.env["QUEUECTL_DB_URL"] = self.pg_database.sqlalchemy_url()
        else:
            self.env.pop("QUEUECTL_DB_URL", None)
        queuectl(self.env, "init-db")

    def close(self) -> None:
        if self.pg_database:
            self.pg_database.close()
        self.folder.cleanup()

    def engine(self):
        """Open an engine on this database in the benchmark process."""
        os.environ.update(self.env)
        if "QUEUECTL_DB_URL" not in self.env:
            os.environ.pop("QUEUECTL_DB_URL", None)
        from queuectl import db

        db.reset_engine()
        return db.get_engine()


def count_completed(engine) -> int:
    """Return how many jobs are completed, with one count on a connection of its own.

    A drain calls it every 10 ms, so it counts one state only, as the peers' counts do,
    instead of grouping every job by state.
    """
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM jobs WHERE state = 'completed'").scalar()


def bench_pool(jobs: int) -> float:
    """Jobs per second of a thread pool running `sh -c true`, with no queue at all."""
    def run(_):
        subprocess.run(["/bin/sh", "-c", "true"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(run, range(jobs)))
    return jobs / (time.perf_counter() - start)


def bench_drain(backend: str, jobs: int) -> tuple[float, float, float]:
    """Drain throughput of 4 idle workers given `jobs` jobs at once; also their peak RSS.

    The third figure is the throughput of a thread-pool run made while the workers wait,
    just before the drain, so that the ratio of the two compares them under the same load
    of this shared machine.
    """
    from queuectl import jobs as job_service
    from queuectl.spec import JobSpec

    database = Database(backend)
    try:
        engine = database.engine()
        queuectl(database.env, "worker", "start", "--count", str(WORKERS))
        try:
            time.sleep(1.0)  # let the workers go idle
            pool = bench_pool(jobs)
            start = time.perf_counter()
            job_service.enqueue_many(engine, [JobSpec(command="true") for _ in range(jobs)])
            while count_completed(engine) < jobs:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
            rss = peak_worker_rss(Path(database.env["QUEUECTL_HOME"]))
        finally:
            queuectl(database.env, "worker", "stop")
            engine.dispose()
        return jobs / elapsed, rss, pool
    finally:
        database.close()


def peak_worker_rss(home: Path) -> float:
    """Return the largest peak resident set size of the workers of a home, in MiB."""
    pids = []
    for record_file in (home / "run").glob("supervisor-*.json"):
        pids.extend(json.loads(record_file.read_text())["workers"].values())
    return peak_rss_mib(pids)


def bench_latency(backend: str) -> float:
    """Median milliseconds from enqueue to the command's end, with 4 idle workers."""
    from queuectl import jobs as job_service
    from queuectl.spec import JobSpec

    database = Database(backend)
    try:
        engine = database.engine()
        queuectl(database.env, "worker", "start", "--count", str(WORKERS))
        try:
            return enqueue_to_done_ms(
                lambda command: job_service.enqueue(engine, JobSpec(command=command)),
                Path(database.folder.name) / "stamp")
        finally:
            queuectl(database.env, "worker", "stop")
            engine.dispose()
    finally:
        database.close()


def bench_enqueue_one(backend: str, jobs: int) -> float:
    """Jobs per second enqueued one call at a time through the service layer."""
    from queuectl import jobs as job_service
    from queuectl.spec import JobSpec

    database = Database(backend)
    try:
        engine = database.engine()
        start = time.perf_counter()
        for _ in range(jobs):
            job_service.enqueue(engine, JobSpec(command="true"))
        elapsed = time.perf_counter() - start
        engine.dispose()
        return jobs / elapsed
    finally:
        database.close()


def bench_enqueue_file(backend: str, jobs: int) -> float:
    """Jobs per second of `queuectl enqueue --file`, process start-up included."""
    database = Database(backend)
    try:
        path = Path(database.folder.name) / "jobs.jsonl"
        path.write_text("".join(f'{{"command":"true","priority":{n % 3}}}\n' for n in range(jobs)))
        start = time.perf_counter()
        queuectl(database.env, "enqueue", "--file", str(path))
        return jobs / (time.perf_counter() - start)
    finally:
        database.close()


def bench_cli_start() -> tuple[float, float]:
    """Wall milliseconds of one `queuectl enqueue` and of importing sqlalchemy and typer.

    Both run with Python's bytecode cache, as an installed package does: the environment
    variable PYTHONDONTWRITEBYTECODE is removed, and a first run of each fills the cache of
    an editable install. The two commands alternate, so both see the same load.
    """
    database = Database("sqlite")
    env = dict(database.env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        def timed(command: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            return (time.perf_counter() - start) * 1000

        enqueue = [sys.executable, "-m", "queuectl", "enqueue", '{"command":"true"}']
        imports = [sys.executable, "-c", "import sqlalchemy, typer"]
        timed(enqueue)
        timed(imports)
        pairs = [(timed(enqueue), timed(imports)) for _ in range(11)]
        return (statistics.median(pair[0] for pair in pairs),
                statistics.median(pair[1] for pair in pairs))
    finally:
        database.close()


def bench_read_scaling(backend: str, small: int, large: int) -> dict[tuple[str, int], float]:
    """Wall milliseconds of `status` and `list --limit 50` on a small and a large queue.

    Returns them by (command, jobs in the queue).
    """
    from sqlalchemy import insert

    from queuectl.models import Job, utcnow

    results = {}
    database = Database(backend)
    try:
        engine = database.engine()
        inserted = 0
        for size in (small, large):
            now = utcnow()
            while inserted < size:
                chunk = min(50_000, size - inserted)
                rows = [dict(id=f"j{inserted + n}", command="true",
                             state=("completed", "dead", "pending")[n % 3], queue="default",
                             priority=0, max_retries=3, attempts=1, run_at=now, created_at=now,
                             updated_at=now) for n in range(chunk)]
                with engine.begin() as conn:
                    conn.execute(insert(Job), rows)
                inserted += chunk
            if backend == "postgresql":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("ANALYZE jobs")
            for name, args in (("status", ["status"]), ("list", ["list", "--limit", "50"])):
                times = []
                for _ in range(5):
                    start = time.perf_counter()
                    queuectl(database.env, *args)
                    times.append((time.perf_counter() - start) * 1000)
                results[(name, size)] = statistics.median(times)
        engine.dispose()
        return results
    finally:
        database.close()


def collect(label: str, runs: int, measure: Callable[[], T]) -> list[T]:
    """Run `measure` `runs` times and return its results, after a progress line on stderr."""
    print(f"measuring {label}, {runs} run(s)", file=sys.stderr, flush=True)
    return [measure() for _ in range(runs)]


def measure_queuectl(results: Results, options: argparse.Namespace) -> None:
    for backend in options.backends:
        key = f"queuectl-{backend}"
        label = f"queuectl {backend}"
        drains = collect(f"{label} drain", options.runs,
                         lambda: bench_drain(backend, options.jobs))
        results.add(f"{key}.drain", f"{label}: drain, jobs/s", [d[0] for d in drains])
        results.add(f"{key}.drain_ratio", f"{label}: drain / thread pool run before it",
                    [d[0] / d[2] for d in drains], digits=2)
        results.add(f"{key}.rss", f"{label}: worker peak RSS, MiB", [d[1] for d in drains])
        results.add(f"{key}.enqueue_one", f"{label}: enqueue one at a time, jobs/s",
                    collect(f"{label} enqueue", options.runs,
                            lambda: bench_enqueue_one(backend, 1000)))
        results.add(f"{key}.enqueue_file", f"{label}: enqueue --file {options.bulk:,}, jobs/s",
                    collect(f"{label} enqueue --file", options.runs,
                            lambda: bench_enqueue_file(backend, options.bulk)))
        results.add(f"{key}.p50", f"{label}: enqueue to command done, p50 ms",
                    collect(f"{label} latency", options.runs, lambda: bench_latency(backend)))
        print(f"measuring {label} status and list", file=sys.stderr, flush=True)
        scaling = bench_read_scaling(backend, SMALL_QUEUE, options.large)
        for (command, size), value in scaling.items():
            results.add(f"{key}.{command}@{size}", f"{label}: {command}, {size:,} jobs, ms",
                        [value], spread=False)
    starts = collect("queuectl start-up", options.runs, bench_cli_start)
    results.add("cli.enqueue", "one `queuectl enqueue`, ms", [s[0] for s in starts])
    results.add("cli.imports", "`python -c 'import sqlalchemy, typer'`, ms",
                [s[1] for s in starts])


def measure_peers(results: Results, names: list[str], options: argparse.Namespace) -> None:
    """Measure each named peer that is installed. A peer that fails is reported and skipped."""
    peers = []
    for name in names:
        missing = peer_bench.PEERS[name].missing_module()
        if missing:
            print(f"note: skipping {name}: module {missing!r} is not installed "
                  "(pip install -e '.[bench]')", file=sys.stderr)
        else:
            peers.append(peer_bench.PEERS[name])

    redis = None
    try:
        if any(peer.needs_redis for peer in peers):
            try:
                redis = RedisServer()
            except (OSError, RuntimeError) as exc:
                skipped = ", ".join(peer.name for peer in peers if peer.needs_redis)
                print(f"note: skipping {skipped}: {exc}", file=sys.stderr)
                peers = [peer for peer in peers if not peer.needs_redis]
        for peer_class in peers:
            peer = peer_class(redis)
            try:
                measure_peer(results, peer, options)
            except Exception:  # noqa: BLE001 - one broken peer must not lose the others
                traceback.print_exc()
                print(f"note: {peer.name} failed; its remaining figures are left out",
                      file=sys.stderr)
    finally:
        if redis is not None:
            redis.close()


def measure_peer(results: Results, peer: peer_bench.Peer, options: argparse.Namespace) -> None:
    label = peer.label
    drains = collect(f"{label} drain", options.runs,
                     lambda: peer_bench.bench_drain(peer, options.jobs))
    results.add(f"{peer.name}.drain", f"{label}: drain, jobs/s", [d[0] for d in drains])
    results.add(f"{peer.name}.rss", f"{label}: worker peak RSS, MiB", [d[1] for d in drains])
    results.add(f"{peer.name}.enqueue_one", f"{label}: enqueue one at a time, jobs/s",
                collect(f"{label} enqueue", options.runs,
                        lambda: peer_bench.bench_enqueue_one(peer)))
    if peer.batch_call:
        results.add(f"{peer.name}.batch", f"{label}: {peer.batch_call} {options.bulk:,}, jobs/s",
                    collect(f"{label} {peer.batch_call}", options.runs,
                            lambda: peer_bench.bench_batch(peer, options.bulk)))
    results.add(f"{peer.name}.p50", f"{label}: enqueue to command done, p50 ms",
                collect(f"{label} latency", options.runs,
                        lambda: peer_bench.bench_latency(peer)))


def comma_list(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Build an argparse type that splits a comma list and rejects names not in `choices`."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown name(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
        return names
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000,
                        help="jobs per drain and per thread-pool run (default 2000)")
    parser.add_argument("--runs", type=int, default=5,
                        help="runs of each figure; the table shows their median (default 5)")
    parser.add_argument("--backends", type=comma_list(BACKENDS), default=list(BACKENDS),
                        help="queuectl backends, comma-separated (default sqlite,postgresql)")
    parser.add_argument("--bulk", type=int, default=100_000,
                        help="jobs per bulk enqueue: queuectl's enqueue --file and the peers' "
                             "batch calls (default 100000)")
    parser.add_argument("--large", type=int, default=1_000_000,
                        help="jobs in the large queue of the status and list figures "
                             "(default 1000000)")
    parser.add_argument("--systems", type=comma_list(SYSTEMS), default=list(SYSTEMS),
                        help=f"systems to measure, comma-separated (default {','.join(SYSTEMS)})")
    options = parser.parse_args()

    results = Results()
    if "pool" in options.systems:
        results.add("pool.drain", "no queue: thread pool, jobs/s",
                    collect("thread pool", options.runs, lambda: bench_pool(options.jobs)))
    if "queuectl" in options.systems:
        measure_queuectl(results, options)
    peers = [name for name in peer_bench.PEERS if name in options.systems]
    if peers:
        measure_peers(results, peers, options)

    if not results.rows:
        sys.exit("nothing was measured")
    print(format_table(("measure", "median (min to max)"), results.rows))
    goals = goal_rows(results, SMALL_QUEUE, options.large)
    if goals:
        print()
        print(format_table(("measure", "goal", "measured", "met"), goals))


if __name__ == "__main__":
    main()
