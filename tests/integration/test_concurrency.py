"""Many workers, many jobs: every job runs exactly once, and SQLite writers never collide."""

from __future__ import annotations

import json
import subprocess
import sys

from queuectl import config

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.conftest import count_jobs, only_on


def write_job_file(path, ids: list[str], output) -> None:
    """Write one JSON job per line, each appending its id to `output`."""
    lines = [json.dumps({"id": job_id, "command": test_jobs.append_job_id(output)})
             for job_id in ids]
    path.write_text("\n".join(lines) + "\n")


def test_200_jobs_run_exactly_once(cli, engine, workers, tmp_path):
    # Given four idle workers,
    ran = tmp_path / "ran.txt"
    ids = [f"job-{number:03d}" for number in range(200)]
    write_job_file(tmp_path / "jobs.jsonl", ids, ran)
    workers.start(4)

    # when 200 jobs arrive at once,
    enqueued = cli("enqueue", "--file", str(tmp_path / "jobs.jsonl"))
    wait_for(lambda: count_jobs(engine, "completed") == 200, timeout=60,
             message="200 jobs to complete")

    # then each job appended its id exactly once.
    lines = ran.read_text().splitlines()
    assert enqueued.returncode == 0, enqueued.stderr
    assert len(lines) == 200
    assert sorted(lines) == ids


@only_on("sqlite")
def test_sqlite_writers_see_no_lock_error(engine, workers, queue_env, tmp_path):
    # Given four workers that look for work every 50 ms, so they write often,
    config.set_value(engine, "poll_interval", "0.05")
    workers.start(4)
    ran = tmp_path / "ran.txt"

    # when eight enqueuers write 25 jobs each at the same time,
    enqueuers = []
    for batch in range(8):
        ids = [f"batch{batch}-{number:02d}" for number in range(25)]
        job_file = tmp_path / f"batch{batch}.jsonl"
        write_job_file(job_file, ids, ran)
        enqueuers.append(subprocess.Popen(
            [sys.executable, "-m", "queuectl", "enqueue", "--file", str(job_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=queue_env,
            cwd=tmp_path,
        ))
    errors = [process.communicate(timeout=60)[1] for process in enqueuers]
    exit_codes = [process.returncode for process in enqueuers]
    wait_for(lambda: count_jobs(engine, "completed") == 200, timeout=60,
             message="200 jobs to complete")

    # then every enqueuer succeeded, no worker hit a lock error, and every job ran once.
    lines = ran.read_text().splitlines()
    assert exit_codes == [0] * 8, errors
    assert all("database is locked" not in error for error in errors), errors
    assert "database is locked" not in workers.worker_log()
    assert len(lines) == 200
    assert len(set(lines)) == 200
