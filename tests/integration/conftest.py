"""Fixtures for tests that run real worker processes through the CLI.

Every supervisor a test starts is stopped in teardown, even when the test fails: first with
`queuectl worker stop --force`, then by killing whatever is left of its processes, including
the jobs of workers that a test killed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import Engine, func, select

from queuectl import config, jobs
from queuectl.db import read_only
from queuectl.models import Job

from tests.conftest import BACKENDS
from tests.integration.processes import (
    kill_everything_in_home,
    pids_in_home,
    supervisor_records,
)

# How often idle workers look for due jobs in these tests, in seconds, unless a test sets
# poll_interval itself. Workers also wake on new jobs, so this only bounds the delay that a
# missed wake-up causes.
TEST_POLL_INTERVAL = "0.2"


def only_on(backend: str) -> pytest.MarkDecorator:
    """Run a test on one backend only, if that backend is selected at all."""
    return pytest.mark.parametrize(
        "backend", [name for name in BACKENDS if name == backend], indirect=True)


@dataclass
class Supervisor:
    """A background supervisor started by `queuectl worker start`."""

    pid: int
    worker_pids: list[int]
    home: Path


class WorkerPool:
    """Starts and stops background workers through the CLI, one home per host identity."""

    def __init__(self, cli: Callable[..., subprocess.CompletedProcess], home: Path) -> None:
        self.cli = cli
        self.default_home = home
        # Environment overrides of each home that workers were started in, for teardown.
        self.homes: dict[Path, dict[str, str]] = {}

    def environment(self, home: Path | None = None, hostname: str | None = None) -> dict:
        """Return the environment overrides that select a home and a host name."""
        overrides = {}
        if home is not None:
            overrides["QUEUECTL_HOME"] = str(home)
        if hostname is not None:
            overrides["QUEUECTL_HOSTNAME"] = hostname
        return overrides

    def start(self, count: int, home: Path | None = None,
              hostname: str | None = None) -> Supervisor:
        """Run `queuectl worker start --count N` and return the supervisor it started."""
        home = home or self.default_home
        overrides = self.environment(home, hostname)
        self.homes[home] = overrides
        result = self.cli("worker", "start", "--count", str(count), env=overrides)
        assert result.returncode == 0, result.stderr
        worker_pids = [int(line) for line in result.stdout.split()]
        for record in supervisor_records(home):
            if sorted(record["workers"].values()) == sorted(worker_pids):
                return Supervisor(record["pid"], worker_pids, home)
        pytest.fail(f"no PID record under {home / 'run'} lists the workers {worker_pids}")

    def stop(self, *options: str, home: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `queuectl worker stop [OPTIONS]` for the workers of one home."""
        overrides = self.environment(home or self.default_home)
        return self.cli("worker", "stop", *options, env=overrides, timeout=timeout)

    def worker_log(self, home: Path | None = None) -> str:
        """Return the log that the supervisors of a home and their workers wrote."""
        path = (home or self.default_home) / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """Stop every supervisor that was started, by force, and kill anything left."""
        for home, overrides in self.homes.items():
            if not pids_in_home(home):
                continue  # the test stopped them already
            try:
                self.cli("worker", "stop", "--force", "--timeout", "5", env=overrides,
                         timeout=30)
            except subprocess.TimeoutExpired:
                pass  # the processes are killed below
            kill_everything_in_home(home)


@pytest.fixture
def workers(cli, engine: Engine, queue_env: dict[str, str]):
    """A WorkerPool on the test database; idle workers poll every TEST_POLL_INTERVAL s."""
    config.set_value(engine, "poll_interval", TEST_POLL_INTERVAL)
    pool = WorkerPool(cli, Path(queue_env["QUEUECTL_HOME"]))
    try:
        yield pool
    finally:
        pool.close()


def count_jobs(engine: Engine, state: str | None = None) -> int:
    """Return how many jobs there are, in one state or in all."""
    query = select(func.count()).select_from(Job)
    if state is not None:
        query = query.where(Job.state == state)
    with read_only(engine).connect() as conn:
        return conn.scalar(query)


def job_state(engine: Engine, job_id: str) -> str:
    """Return the state of one job."""
    return jobs.get_job(engine, job_id).state
