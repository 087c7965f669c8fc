"""Managing jobs on real workers: priorities, schedules, named queues, cancelling, following
a job's output, and waiting for jobs to finish.

Jobs that only set the scene are enqueued through the service layer, which wakes workers
just like `queuectl enqueue` does. The command under test always runs through the CLI.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from queuectl import jobs
from queuectl.spec import validate_payload

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.processes import (
    kill_everything_in_home,
    pids_with_argument,
    supervisor_records,
)


def add_jobs(engine, *payloads: dict) -> None:
    """Enqueue job objects through the service layer, in order."""
    jobs.enqueue_many(engine, [validate_payload(payload) for payload in payloads])


def job_state(engine, job_id: str) -> str:
    return jobs.get_job(engine, job_id).state


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def worker_cli(cli, workers, queue_env):
    """The `cli` fixture, for tests that start workers with options that WorkerPool lacks.

    Every worker started in the test's QUEUECTL_HOME, in the foreground or the background,
    is stopped in teardown.
    """
    home = Path(queue_env["QUEUECTL_HOME"])
    try:
        yield cli
    finally:
        # A burst run that ended by itself left no PID record, so there is nothing to stop.
        if supervisor_records(home):
            try:
                cli("worker", "stop", "--force", "--timeout", "5", timeout=30)
            except subprocess.TimeoutExpired:
                pass  # the processes are killed below
        kill_everything_in_home(home)


def run_burst(worker_cli, *options: str) -> None:
    """Run `queuectl worker run --burst`, which returns once no job is left to run."""
    result = worker_cli("worker", "run", "--burst", *options, timeout=60)
    assert result.returncode == 0, result.stderr


# Priorities, schedules and queues ---------------------------------------------------------

def test_jobs_run_by_priority_then_arrival(engine, worker_cli, tmp_path):
    # Given jobs of mixed priorities, enqueued while no worker runs,
    ran = tmp_path / "ran.txt"
    order = [("low-1", 0), ("high-1", 10), ("last", -5), ("mid", 5), ("high-2", 10),
             ("low-2", 0)]
    add_jobs(engine, *({"id": job_id, "priority": priority,
                        "command": test_jobs.append_job_id(ran)} for job_id, priority in order))

    # when one worker runs them all,
    run_burst(worker_cli, "--count", "1")

    # then higher priorities ran first, and equal priorities in the order they arrived.
    assert lines_of(ran) == ["high-1", "high-2", "mid", "low-1", "low-2", "last"]


def test_delayed_and_scheduled_jobs_never_start_early(engine, workers, tmp_path):
    # Given an idle worker, which looks for due jobs every 0.2 s,
    ran = tmp_path / "ran.txt"
    workers.start(1)

    # when a job delayed by 1.5 s and a job scheduled in local time 1 to 2 s ahead arrive,
    local_run_at = (datetime.now() + timedelta(seconds=2)).replace(microsecond=0)
    add_jobs(engine,
             {"id": "delayed", "delay": 1.5, "command": test_jobs.append_job_id(ran)},
             {"id": "scheduled", "run_at": local_run_at.isoformat(),
              "command": test_jobs.append_job_id(ran)})
    wait_for(lambda: len(lines_of(ran)) == 2, timeout=20, message="both jobs to run")

    # then both ran, each at or after its time.
    delayed_job = jobs.get_job(engine, "delayed")
    scheduled_job = jobs.get_job(engine, "scheduled")
    # The delay counts from when the job was validated, a moment before created_at.
    assert abs(delayed_job.run_at - delayed_job.created_at - timedelta(seconds=1.5)) < \
        timedelta(seconds=0.5)
    assert delayed_job.started_at >= delayed_job.run_at
    assert scheduled_job.run_at == local_run_at.astimezone(timezone.utc)
    assert scheduled_job.started_at >= scheduled_job.run_at


def test_worker_with_queue_option_leaves_other_queues(engine, worker_cli, tmp_path):
    # Given jobs on four queues, the oldest on a queue the worker does not serve,
    ran = tmp_path / "ran.txt"
    add_jobs(engine, *({"id": f"{queue}-job", "queue": queue,
                        "command": test_jobs.append_job_id(ran)}
                       for queue in ("c", "a", "default", "b")))

    # when a worker serves queues a and b only,
    started = worker_cli("worker", "start", "--queue", "a,b")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: len(lines_of(ran)) == 2, timeout=15, message="the jobs of a and b to run")
    wait_for(lambda: job_state(engine, "b-job") == "completed", timeout=10,
             message="job b-job to be recorded as completed")

    # then it ran the jobs of a and b, and the others still wait.
    assert lines_of(ran) == ["a-job", "b-job"]
    assert job_state(engine, "c-job") == "pending"
    assert job_state(engine, "default-job") == "pending"


# Cancelling -------------------------------------------------------------------------------

def test_cancelled_pending_job_never_runs(engine, worker_cli, tmp_path):
    ran = tmp_path / "ran.txt"
    add_jobs(engine, {"id": "dropped", "command": test_jobs.append_job_id(ran)},
             {"id": "kept", "command": test_jobs.append_job_id(ran)})

    cancelled = worker_cli("cancel", "dropped")
    run_burst(worker_cli, "--count", "1")

    dropped = jobs.get_job(engine, "dropped")
    assert cancelled.returncode == 0, cancelled.stderr
    assert lines_of(ran) == ["kept"]
    assert dropped.state == "cancelled"
    assert dropped.attempts == 0


def test_cancel_running_job_stops_its_process_group(cli, engine, workers, tmp_path):
    # Given a worker running a job whose shell has a background and a foreground sleep,
    marker = test_jobs.unique_sleep_argument(60)
    workers.start(1)
    add_jobs(engine, {"id": "long", "command": f"sleep {marker} & sleep {marker}"})
    wait_for(lambda: len(pids_with_argument(marker)) == 2, timeout=15,
             message="both sleeps of job long to start")

    # when the job is cancelled,
    cancelled = cli("cancel", "long")
    cancelled_at = time.monotonic()

    # then both sleeps are gone within seconds, the job stays cancelled,
    wait_for(lambda: pids_with_argument(marker) == [], timeout=10,
             message="the processes of job long to stop")
    stopped_after = time.monotonic() - cancelled_at
    add_jobs(engine, {"id": "next", "command": "echo next"})
    wait_for(lambda: job_state(engine, "next") == "completed", timeout=15,
             message="job next to complete")
    job = jobs.get_job(engine, "long")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == "long\n"
    assert stopped_after < 8, stopped_after
    assert job.state == "cancelled"
    assert job.attempts == 1
    assert job.last_error == "cancelled while running"
    # and the worker goes on to run the next job.
    assert jobs.get_job(engine, "next").output == "next\n"


# Following output and waiting -------------------------------------------------------------

def read_timed_lines(process: subprocess.Popen, timeout: float) -> list[tuple[str, datetime]]:
    """Read a process's stdout to its end, with the time each line arrived.

    stdout must be unbuffered (bufsize=0), because select() cannot report bytes that a
    buffered reader has already taken from the pipe.
    """
    deadline = time.monotonic() + timeout
    lines = []
    while True:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        if not ready:
            pytest.fail(f"{process.args} did not finish its output within {timeout} s")
        line = process.stdout.readline()
        if not line:
            return lines
        lines.append((line.decode(), datetime.now(timezone.utc)))


def test_logs_follow_streams_until_job_finishes(engine, workers, queue_env, tmp_path):
    # Given a worker and a job that prints four lines 0.7 s apart, then runs 1 s longer,
    workers.start(1)
    command = "for i in 1 2 3 4; do echo line-$i; sleep 0.7; done; sleep 1"
    add_jobs(engine, {"id": "chatty", "command": command})

    # when `logs --follow` watches the job from before it starts,
    with subprocess.Popen([sys.executable, "-m", "queuectl", "logs", "--follow", "chatty"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                          env=queue_env, cwd=tmp_path) as follow:
        try:
            lines = read_timed_lines(follow, timeout=30)
            exited_at = datetime.now(timezone.utc)
            follow.wait(timeout=10)
            errors = follow.stderr.read().decode()
        finally:
            follow.kill()

    # then it printed each line once, the first one while the job still ran, and it
    # exited once the job finished.
    job = jobs.get_job(engine, "chatty")
    assert follow.returncode == 0, errors
    assert [line for line, _ in lines] == ["line-1\n", "line-2\n", "line-3\n", "line-4\n"]
    assert job.state == "completed"
    assert lines[0][1] < job.finished_at
    assert exited_at - job.finished_at < timedelta(seconds=3)


def test_wait_returns_once_workers_finish_jobs(cli, engine, workers):
    # Given a worker, a job typed after `--` and a job that fails its only attempt,
    workers.start(1)
    typed = cli("enqueue", "--id", "typed", "--", "printf", "%s\\n", "it's", "a b")
    add_jobs(engine, {"id": "broken", "command": test_jobs.ALWAYS_FAILS, "max_retries": 1})

    # when `wait` waits for both,
    waited = cli("wait", "typed", "broken", "--timeout", "30")

    # then it prints their final states and exits 1, because one of them is dead,
    assert typed.returncode == 0, typed.stderr
    assert waited.returncode == 1, waited.stderr
    assert waited.stdout == "typed\tcompleted\nbroken\tdead\n"
    # and the typed command ran exactly as typed.
    assert jobs.get_job(engine, "typed").output == "it's\na b\n"
