"""A job's life on real workers: completion, retries with backoff, the DLQ, and restarts."""

from __future__ import annotations

import json

from queuectl import config, jobs

from tests import jobs as test_jobs
from tests.conftest import wait_for
from tests.integration.conftest import job_state

# Slack for the measured gaps between attempts, in seconds. A gap is never shorter than
# the backoff, but process start-up and the workers' poll interval can make it longer.
EARLY_SLACK = 0.3
LATE_SLACK = 3.0


def test_job_completes_with_exit_code_and_output(cli, engine, workers):
    workers.start(1)

    enqueued = cli("enqueue", '{"id":"hello","command":"echo hello"}')
    wait_for(lambda: job_state(engine, "hello") == "completed", timeout=15,
             message="job hello to complete")

    job = jobs.get_job(engine, "hello")
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout == "hello\n"
    assert job.exit_code == 0
    assert job.output == "hello\n"
    assert job.attempts == 1


def test_failing_job_backs_off_into_dlq(cli, engine, workers, tmp_path):
    # Given a job that fails until a flag file exists, with a 1.5 s backoff base,
    attempt_log = tmp_path / "attempts.log"
    flag = tmp_path / "flag"
    config.set_value(engine, "backoff_base", "1.5")
    payload = {"id": "flaky", "max_retries": 3,
               "command": test_jobs.record_attempt_then_require(attempt_log, flag)}
    workers.start(1)

    # when it runs out of attempts,
    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: job_state(engine, "flaky") == "dead", timeout=20,
             message="job flaky to move to the DLQ")

    # then it ran three times, waiting 1.5 ** 1 s and 1.5 ** 2 s between the attempts,
    lines = [line.split() for line in attempt_log.read_text().splitlines()]
    attempts = [int(attempt) for attempt, _ in lines]
    starts = [float(started) for _, started in lines]
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert attempts == [1, 2, 3]
    assert 1.5 - EARLY_SLACK <= first_gap <= 1.5 + LATE_SLACK, first_gap
    assert 2.25 - EARLY_SLACK <= second_gap <= 2.25 + LATE_SLACK, second_gap

    # and `dlq list` shows it with its last exit code.
    dead = cli("dlq", "list", "--json")
    assert dead.returncode == 0, dead.stderr
    assert [(job["id"], job["exit_code"]) for job in json.loads(dead.stdout)] == [("flaky", 1)]

    # When it is retried from the DLQ and can succeed now,
    flag.touch()
    retried = cli("dlq", "retry", "flaky")
    wait_for(lambda: job_state(engine, "flaky") == "completed", timeout=15,
             message="retried job flaky to complete")

    # then it runs again as a first attempt and completes.
    job = jobs.get_job(engine, "flaky")
    assert retried.returncode == 0, retried.stderr
    assert attempt_log.read_text().splitlines()[3].split()[0] == "1"
    assert job.attempts == 1
    assert job.exit_code == 0


def test_unknown_command_dies_with_127(cli, engine, workers):
    config.set_value(engine, "backoff_base", "1")
    workers.start(1)
    payload = {"id": "typo", "command": "queuectl-test-no-such-command", "max_retries": 2}

    assert cli("enqueue", json.dumps(payload)).returncode == 0
    wait_for(lambda: job_state(engine, "typo") == "dead", timeout=15,
             message="job typo to move to the DLQ")

    job = jobs.get_job(engine, "typo")
    log = workers.worker_log()
    assert job.exit_code == 127
    assert job.last_error == "command not found (exit status 127)"
    assert job.attempts == 2
    assert "queuectl-test-no-such-command: not found" in job.output
    assert "Traceback" not in log
    assert "job typo moved to the DLQ after 2 attempts" in log


def test_jobs_and_config_survive_worker_restart(cli, engine, workers, tmp_path):
    # Given a setting stored through the CLI and a job that ran on a first worker,
    ran = tmp_path / "ran.txt"
    assert cli("config", "set", "max-retries", "5").returncode == 0
    workers.start(1)
    before = {"id": "before-restart", "command": test_jobs.append_job_id(ran)}
    assert cli("enqueue", json.dumps(before)).returncode == 0
    wait_for(lambda: job_state(engine, "before-restart") == "completed", timeout=15,
             message="the first job to complete")

    # when that worker stops, a job is enqueued meanwhile, and a new worker starts,
    assert workers.stop().returncode == 0
    during = {"id": "while-stopped", "command": test_jobs.append_job_id(ran)}
    assert cli("enqueue", json.dumps(during)).returncode == 0
    listed = cli("list", "--json")
    workers.start(1)
    wait_for(lambda: job_state(engine, "while-stopped") == "completed", timeout=15,
             message="the job enqueued while stopped to complete")

    # then new processes read the same setting and jobs, and no job ran twice.
    states = {job["id"]: (job["state"], job["max_retries"]) for job in json.loads(listed.stdout)}
    assert states == {"before-restart": ("completed", 5), "while-stopped": ("pending", 5)}
    assert cli("config", "get", "max_retries").stdout == "5\n"
    assert ran.read_text().splitlines() == ["before-restart", "while-stopped"]
