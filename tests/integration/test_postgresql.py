"""PostgreSQL only: workers on several hosts, lost database connections, and LISTEN/NOTIFY."""

from __future__ import annotations

import json
import statistics

from sqlalchemy import text

from queuectl import config, jobs
from queuectl.spec import JobSpec

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.conftest import count_jobs, job_state, only_on

pytestmark = only_on("postgresql")


def write_job_file(path, ids: list[str], command: str) -> None:
    path.write_text("".join(json.dumps({"id": job_id, "command": command}) + "\n"
                            for job_id in ids))


def listed_hosts(cli) -> set[str]:
    """Return the host names of the workers that `queuectl status --json` lists."""
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return {worker["host"] for worker in json.loads(result.stdout)["workers"]}


def terminate_other_backends(engine) -> int:
    """Terminate every other connection to the test database; return how many."""
    with engine.connect() as conn:
        # The pids are read first: PostgreSQL may evaluate the conditions of one WHERE
        # clause in any order, and so terminate this very connection.
        others = conn.scalars(text(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )).all()
        terminated = [conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                      for pid in others]
        conn.commit()
    return sum(terminated)


def listening_connections(engine) -> int:
    """Return how many connections to the test database last ran LISTEN queuectl_jobs."""
    with engine.connect() as conn:
        return conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = 'LISTEN queuectl_jobs'"
        ))


def test_two_hosts_run_2000_jobs_exactly_once(cli, engine, workers, tmp_path):
    # Given two hosts with four workers each, each host with its own QUEUECTL_HOME,
    ran = tmp_path / "ran.txt"
    ids = [f"job-{number:04d}" for number in range(2000)]
    write_job_file(tmp_path / "jobs.jsonl", ids, test_jobs.append_job_id(ran))
    workers.start(4, home=tmp_path / "host-a", hostname="host-a")
    workers.start(4, home=tmp_path / "host-b", hostname="host-b")

    # when 2000 jobs arrive at once,
    enqueued = cli("enqueue", "--file", str(tmp_path / "jobs.jsonl"))
    wait_for(lambda: listed_hosts(cli) == {"host-a", "host-b"}, timeout=10, interval=0.2,
             message="status to list the workers of both hosts")
    wait_for(lambda: count_jobs(engine, "completed") == 2000, timeout=90, interval=0.2,
             message="2000 jobs to complete")

    # then each job's command ran exactly once, on one host or the other.
    lines = ran.read_text().splitlines()
    assert enqueued.returncode == 0, enqueued.stderr
    assert len(lines) == 2000
    assert sorted(lines) == ids


def test_drain_survives_terminated_connections(cli, engine, workers, tmp_path):
    # Given four workers draining 200 jobs of about 50 ms each, with a 3 s lease so that a
    # claim lost with its connection is recovered quickly,
    ran = tmp_path / "ran.txt"
    ids = [f"job-{number:03d}" for number in range(200)]
    command = f"{test_jobs.append_job_id(ran)}; sleep 0.05"
    write_job_file(tmp_path / "jobs.jsonl", ids, command)
    config.set_value(engine, "lease_seconds", "3")
    config.set_value(engine, "backoff_base", "1")
    workers.start(4)
    assert cli("enqueue", "--file", str(tmp_path / "jobs.jsonl")).returncode == 0

    # when every worker connection is terminated twice during the drain,
    terminated, remaining = [], []
    for progress in (40, 110):
        wait_for(lambda: count_jobs(engine, "completed") >= progress, timeout=30,
                 message=f"{progress} jobs to complete")
        terminated.append(terminate_other_backends(engine))
        remaining.append(200 - count_jobs(engine, "completed"))
    wait_for(lambda: count_jobs(engine, "completed") == 200, timeout=60, interval=0.2,
             message="all 200 jobs to complete")

    # then every job completed, none is stuck processing, and each ran at least once.
    assert all(count > 0 for count in terminated), terminated
    assert all(count > 0 for count in remaining), remaining
    assert count_jobs(engine, "processing") == 0
    assert set(ran.read_text().splitlines()) == set(ids)


def test_idle_worker_wakes_on_notify_not_poll(engine, workers):
    # Given one idle worker that polls only every 10 s and listens for new jobs,
    config.set_value(engine, "poll_interval", "10")
    workers.start(1)
    wait_for(lambda: listening_connections(engine) == 1, timeout=10,
             message="the worker to LISTEN for new jobs")

    # when jobs are enqueued one after another,
    latencies = []
    for number in range(5):
        job_id = f"wake-{number}"
        jobs.enqueue(engine, JobSpec(command="true", id=job_id))
        wait_for(lambda: job_state(engine, job_id) == "completed", timeout=15,
                 message=f"job {job_id} to complete")
        job = jobs.get_job(engine, job_id)
        latencies.append((job.started_at - job.created_at).total_seconds())

    # then each starts well before the next poll would have found it.
    assert statistics.median(latencies) < 1.0, latencies


def test_worker_listens_again_after_disconnect(engine, workers):
    # Given one idle worker that polls only every 10 s and listens for new jobs,
    config.set_value(engine, "poll_interval", "10")
    workers.start(1)
    wait_for(lambda: listening_connections(engine) == 1, timeout=10,
             message="the worker to LISTEN for new jobs")

    # when the server terminates its connections and a job arrives right after,
    assert terminate_other_backends(engine) > 0
    jobs.enqueue(engine, JobSpec(command="true", id="after-reconnect"))
    wait_for(lambda: job_state(engine, "after-reconnect") == "completed",
             timeout=15, message="job after-reconnect to complete")

    # then the worker reconnects and starts the job long before its next poll.
    job = jobs.get_job(engine, "after-reconnect")
    assert (job.started_at - job.created_at).total_seconds() < 3
