"""Benchmarks of queuectl against a plain thread pool running the same commands.

Run by hand, never by CI:  python bench/run.py [--jobs 2000] [--runs 5] [--backends sqlite,postgresql]

Each figure is the median of --runs runs, with the spread (min to max). Every run starts
from an empty database in a temporary folder. PostgreSQL runs use a fresh database on the
server that QUEUECTL_BENCH_PG_URL names (default: the local server, user postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PG_ADMIN_URL = os.environ.get(
    "QUEUECTL_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
WORKERS = 4


def queuectl(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "queuectl", *args], env=env, input=input,
                          capture_output=True, text=True, check=True)


class Database:
    """An empty queue database for one run, removed afterwards."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.folder = tempfile.TemporaryDirectory(prefix="queuectl-bench-")
        self.env = dict(os.environ, QUEUECTL_HOME=str(Path(self.folder.name) / "home"))
        self.pg_name = None
        if backend == "postgresql":
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            self.pg_name = f"queuectl_bench_{secrets.token_hex(4)}"
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.pg_name}"'))
            admin.dispose()
            url = make_url(PG_ADMIN_URL).set(database=self.pg_name)
            self.env["QUEUECTL_DB_URL"] = url.render_as_string(hide_password=False)
        else:
            self.env.pop("QUEUECTL_DB_URL", None)
        queuectl(self.env, "init-db")

    def close(self) -> None:
        if self.pg_name:
            from sqlalchemy import create_engine, text

            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)'))
            admin.dispose()
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
    from queuectl import jobs

    return jobs.count_by_state(engine)["completed"]


def bench_pool(jobs: int) -> float:
    """Jobs per second of a thread pool running `sh -c true`, with no queue at all."""
    def run(_):
        subprocess.run(["/bin/sh", "-c", "true"], check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(run, range(jobs)))
    return jobs / (time.perf_counter() - start)


def bench_drain(backend: str, jobs: int) -> tuple[float, float]:
    """Drain throughput of 4 idle workers given `jobs` jobs at once; also their peak RSS."""
    from queuectl import jobs as job_service
    from queuectl.spec import JobSpec

    database = Database(backend)
    try:
        queuectl(database.env, "worker", "start", "--count", str(WORKERS))
        engine = database.engine()
        time.sleep(1.0)  # let the workers go idle
        start = time.perf_counter()
        job_service.enqueue_many(engine, [JobSpec(command="true") for _ in range(jobs)])
        while count_completed(engine) < jobs:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        rss = peak_worker_rss(Path(database.env["QUEUECTL_HOME"]))
        queuectl(database.env, "worker", "stop")
        engine.dispose()
        return jobs / elapsed, rss
    finally:
        database.close()


def peak_worker_rss(home: Path) -> float:
    """Return the largest peak resident set size of the workers of a home, in MiB."""
    peak = 0
    for record_file in (home / "run").glob("supervisor-*.json"):
        for pid in json.loads(record_file.read_text())["workers"].values():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak / 1024


def bench_latency(backend: str, samples: int = 30) -> float:
    """Median milliseconds from enqueue to the command's end, with 4 idle workers."""
    from queuectl import jobs as job_service
    from queuectl.spec import JobSpec

    database = Database(backend)
    try:
        queuectl(database.env, "worker", "start", "--count", str(WORKERS))
        engine = database.engine()
        stamp = Path(database.folder.name) / "stamp"
        latencies = []
        for _ in range(samples):
            time.sleep(0.3)  # idle time before each job
            stamp.unlink(missing_ok=True)
            start = time.time()
            job_service.enqueue(engine, JobSpec(command=f"date +%s.%N > {stamp}"))
            while not stamp.exists() or not stamp.read_text().strip():
                time.sleep(0.0005)
            latencies.append((float(stamp.read_text()) - start) * 1000)
        queuectl(database.env, "worker", "stop")
        engine.dispose()
        return statistics.median(latencies)
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
    """Wall milliseconds of one `queuectl enqueue` and of importing sqlalchemy and typer."""
    database = Database("sqlite")
    try:
        def timed(command: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(command, env=database.env, check=True, capture_output=True)
            return (time.perf_counter() - start) * 1000

        enqueue = [sys.executable, "-m", "queuectl", "enqueue", '{"command":"true"}']
        imports = [sys.executable, "-c", "import sqlalchemy, typer"]
        return (statistics.median(timed(enqueue) for _ in range(7)),
                statistics.median(timed(imports) for _ in range(7)))
    finally:
        database.close()


def bench_read_scaling(backend: str, small: int, large: int) -> dict[str, float]:
    """Wall milliseconds of `status` and `list --limit 50` on a small and a large queue."""
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
                results[f"{name}@{size}"] = statistics.median(times)
        engine.dispose()
        return results
    finally:
        database.close()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f} to {max(values):,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    options = parser.parse_args()
    backends = [name for name in options.backends.split(",") if name]

    rows = [("no queue: thread pool, jobs/s",
             summary([bench_pool(options.jobs) for _ in range(options.runs)]))]
    for backend in backends:
        drains = [bench_drain(backend, options.jobs) for _ in range(options.runs)]
        rows.append((f"queuectl {backend}: drain, jobs/s", summary([d[0] for d in drains])))
        rows.append((f"queuectl {backend}: worker peak RSS, MiB", summary([d[1] for d in drains])))
        rows.append((f"queuectl {backend}: enqueue one at a time, jobs/s",
                     summary([bench_enqueue_one(backend, 1000) for _ in range(options.runs)])))
        rows.append((f"queuectl {backend}: enqueue --file {options.bulk:,}, jobs/s",
                     summary([bench_enqueue_file(backend, options.bulk)
                              for _ in range(options.runs)])))
        rows.append((f"queuectl {backend}: enqueue to command done, p50 ms",
                     summary([bench_latency(backend) for _ in range(options.runs)])))
        scaling = bench_read_scaling(backend, 1000, options.large)
        for key, value in scaling.items():
            rows.append((f"queuectl {backend}: {key} jobs, ms", f"{value:,.1f}"))
    starts = [bench_cli_start() for _ in range(options.runs)]
    rows.append(("one `queuectl enqueue`, ms", summary([s[0] for s in starts])))
    rows.append(("`python -c 'import sqlalchemy, typer'`, ms", summary([s[1] for s in starts])))

    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | median (min to max) |")
    print(f"|{'-' * (width + 2)}|---------------------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
