"""Job management from the command line: enqueue forms and options, show, logs, cancel,
retry, dlq purge, prune, wait, and output for scripts.

Most tests run the CLI entry point in this process, which is much quicker than a subprocess
and goes through the same error handling and exit codes. Tests of what only a real process
shows (pipes, terminals, time zones) run queuectl in a subprocess. Jobs reach their states
through the service layer, so no worker runs here.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import shlex
import struct
import subprocess
import sys
import termios
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from queuectl import cli as queuectl_cli
from queuectl import __version__, config, enqueueing, jobs
from queuectl.models import Job, JobState, utcnow
from queuectl.spec import MAX_PRIORITY, validate_payload
from tests.integration.conftest import only_on
from tests.tables import table_contents
from tests.unit.queue_steps import LEASE

SUMMARY_KEYS = {"id", "state", "command", "queue", "priority", "attempts", "max_retries",
                "run_at", "created_at", "updated_at", "exit_code", "last_error"}
DETAIL_KEYS = SUMMARY_KEYS | {"timeout", "started_at", "finished_at", "worker_id",
                              "lease_expires_at", "output"}
ANSI_ESCAPE = "\x1b["

# For checks of argument parsing and output, which do not depend on the database engine.
sqlite_only = only_on("sqlite")


@pytest.fixture
def run(queue_env, monkeypatch):
    """Run `queuectl ARGS...` in this process, through the same entry point as the script."""

    def invoke(*args: str, input: str = "") -> subprocess.CompletedProcess:
        stdout, stderr = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "argv", ["queuectl", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        code = 0
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                queuectl_cli.main()
            except SystemExit as exc:
                code = 0 if exc.code is None else exc.code
        return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())

    return invoke


def add_job(engine, job_id: str, state: str = "pending", **fields) -> None:
    """Enqueue a job through the service layer and move it to a state.

    A processing job is claimed. Completed, failed and dead jobs finish one attempt, and a
    dead job gets max_retries 1 for that. A cancelled job is cancelled while pending.
    """
    if state == "dead":
        fields["max_retries"] = 1
    if state != "pending":
        # The highest priority makes this job the one claimed, whatever else is pending.
        fields.setdefault("priority", MAX_PRIORITY)
    jobs.enqueue(engine, validate_payload({"command": "true", "id": job_id, **fields}))
    if state == "cancelled":
        jobs.cancel(engine, [job_id])
    if state in ("pending", "cancelled"):
        return
    claim = jobs.claim_next(engine, "test-worker", None, LEASE)
    assert claim is not None and claim.id == job_id, f"expected to claim {job_id}, got {claim}"
    if state == "completed":
        jobs.complete(engine, claim, 0, f"output of {job_id}\n")
    elif state in ("failed", "dead"):
        jobs.fail(engine, claim, "exit status 3", 3, f"output of {job_id}\n")


def set_updated_at(engine, job_id: str, value: datetime) -> None:
    """Change when a job last changed, as if it had finished then."""
    table = Job.__table__
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == job_id).values(updated_at=value))


def job_ids(engine) -> set[str]:
    return {job.id for job in jobs.list_jobs(engine, limit=None)}


# Enqueue options and forms ----------------------------------------------------------------

def test_enqueue_options_set_job_fields(run, engine):
    before = utcnow()

    result = run("enqueue", "--id", "opts", "--priority", "5", "--queue", "emails",
                 "--delay", "120", "--timeout", "7.5", "--max-retries", "4", "echo hi")

    job = jobs.get_job(engine, "opts")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "opts\n"
    assert job.command == "echo hi"
    assert job.priority == 5
    assert job.queue == "emails"
    assert job.timeout == 7.5
    assert job.max_retries == 4
    assert before + timedelta(seconds=120) <= job.run_at <= utcnow() + timedelta(seconds=120)


@sqlite_only
def test_enqueue_json_field_overrides_its_option(run, engine):
    payload = {"id": "from-json", "command": "true", "priority": 7, "max_retries": 5}

    result = run("enqueue", "--id", "from-option", "--priority", "1", "--max-retries", "2",
                 "--queue", "reports", json.dumps(payload))

    job = jobs.get_job(engine, "from-json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from-json\n"
    assert job.priority == 7
    assert job.max_retries == 5
    assert job.queue == "reports"  # the JSON object has no queue, so the option applies
    assert job_ids(engine) == {"from-json"}


def test_enqueue_run_at_option_sets_schedule(run, engine):
    result = run("enqueue", "--id", "later", "--run-at", "2030-01-31T14:30:00+01:00", "true")

    assert result.returncode == 0, result.stderr
    assert jobs.get_job(engine, "later").run_at == datetime(2030, 1, 31, 13, 30,
                                                           tzinfo=timezone.utc)


@sqlite_only
def test_enqueue_run_at_without_offset_is_local_time(cli, engine):
    # The POSIX zone string QCT-5:30 is 5 h 30 min east of UTC and needs no tz database.
    result = cli("enqueue", "--id", "local", "--run-at", "2030-01-31T12:00:00", "true",
                 env={"TZ": "QCT-5:30"})

    assert result.returncode == 0, result.stderr
    assert jobs.get_job(engine, "local").run_at == datetime(2030, 1, 31, 6, 30,
                                                           tzinfo=timezone.utc)


@sqlite_only
def test_enqueue_rejects_both_run_at_and_delay(run, engine):
    result = run("enqueue", "--run-at", "2030-01-31T12:00:00Z", "--delay", "5", "true")

    assert result.returncode == 2
    assert "either run_at or delay" in result.stderr
    assert job_ids(engine) == set()


@sqlite_only
def test_enqueue_after_double_dash_quotes_arguments(run, engine):
    argv = ["printf", "%s\\n", "it's", "a b", "--queue"]

    result = run("enqueue", "--id", "argv", "--priority", "3", "--", *argv)

    job = jobs.get_job(engine, "argv")
    assert result.returncode == 0, result.stderr
    assert job.command == shlex.join(argv)
    assert job.priority == 3
    assert job.queue == "default"  # `--queue` after `--` is an argument of printf


@sqlite_only
def test_quoted_arguments_run_exactly_as_typed(run, engine):
    argv = ["printf", "%s\\n", "it's", "a b", "$HOME", "*"]
    typed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    run("enqueue", "--id", "typed", "--", *argv)
    command = jobs.get_job(engine, "typed").command
    # Workers run every command with /bin/sh -c, as here.
    through_shell = subprocess.run(["/bin/sh", "-c", command], capture_output=True,
                                   text=True, check=True).stdout

    assert through_shell == typed
    assert through_shell.splitlines() == ["it's", "a b", "$HOME", "*"]


@sqlite_only
def test_single_argument_is_shell_command(run, engine):
    result = run("enqueue", "--id", "line", "echo hi | tr a-z A-Z > 'out file'")

    assert result.returncode == 0, result.stderr
    assert jobs.get_job(engine, "line").command == "echo hi | tr a-z A-Z > 'out file'"


@sqlite_only
def test_enqueue_without_id_prints_generated_ids(run, engine):
    first = run("enqueue", "true")
    second = run("enqueue", '{"command":"true"}')

    first_id, second_id = first.stdout.strip(), second.stdout.strip()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout == f"{first_id}\n"
    assert first_id != second_id
    assert job_ids(engine) == {first_id, second_id}


@sqlite_only
def test_enqueue_without_job_exits_2(run, engine):
    result = run("enqueue", "--priority", "3")

    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert job_ids(engine) == set()


# Enqueue from a file ----------------------------------------------------------------------

def test_enqueue_file_skips_blank_lines(run, engine, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id":"a","command":"true"}\n\n   \n{"id":"b","command":"true",'
                    '"priority":9}\n{"command":"true"}\n')

    result = run("enqueue", "--file", str(path), "--priority", "2", "--queue", "bulk")

    printed = result.stdout.splitlines()
    listed = {job.id: job for job in jobs.list_jobs(engine, limit=None)}
    assert result.returncode == 0, result.stderr
    assert printed[:2] == ["a", "b"]
    assert len(printed) == 3
    assert set(listed) == set(printed)
    assert listed["a"].priority == 2
    assert listed["b"].priority == 9  # the JSON field overrides --priority
    assert {job.queue for job in listed.values()} == {"bulk"}


@sqlite_only
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_enqueue_file_with_byte_order_mark(run, engine, tmp_path, source):
    text = '\ufeff{"id":"first","command":"true"}\n{"id":"second","command":"true"}\n'
    path = tmp_path / "jobs.jsonl"
    path.write_text(text, encoding="utf-8")

    if source == "file":
        result = run("enqueue", "--file", str(path))
    else:
        result = run("enqueue", "--file", "-", input=text)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "first\nsecond\n"
    assert job_ids(engine) == {"first", "second"}


@sqlite_only
def test_enqueue_file_from_stdin(run, engine):
    result = run("enqueue", "--file", "-",
                 input='{"id":"in-1","command":"true"}\n{"id":"in-2","command":"true"}\n')

    assert result.returncode == 0, result.stderr
    assert result.stdout == "in-1\nin-2\n"
    assert job_ids(engine) == {"in-1", "in-2"}


def test_enqueue_file_with_bad_line_changes_nothing(run, engine, tmp_path):
    # Given a job in the database and a file whose third line has no command,
    add_job(engine, "existing")
    before = table_contents(engine)
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id":"ok-1","command":"true"}\n{"id":"ok-2","command":"true"}\n'
                    '{"id":"broken"}\n{"id":"ok-4","command":"true"}\n')

    # when the file is enqueued,
    result = run("enqueue", "--file", str(path))

    # then the error names line 3 and the database is unchanged.
    assert result.returncode == 2
    assert result.stdout == ""
    assert "line 3" in result.stderr
    assert "'command' is missing" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert table_contents(engine) == before


@sqlite_only
def test_enqueue_file_counts_blank_lines_in_line_numbers(run, engine):
    result = run("enqueue", "--file", "-",
                 input='{"id":"ok","command":"true"}\n\n{"id":"bad","command":""}\n')

    assert result.returncode == 2
    assert "line 3 of -" in result.stderr
    assert job_ids(engine) == set()


def test_enqueue_file_with_duplicate_ids_changes_nothing(run, engine):
    lines = ['{"id":"one","command":"true"}', '{"id":"two","command":"true"}',
             '{"id":"one","command":"false"}']

    result = run("enqueue", "--file", "-", input="\n".join(lines) + "\n")

    assert result.returncode == 2
    assert result.stderr == ("error: line 3 of -: job id 'one' is already on line 1; give each "
                             "job its own id\n")
    assert job_ids(engine) == set()


def test_enqueue_file_with_taken_id_changes_nothing(run, engine):
    add_job(engine, "taken", command="echo original")
    before = table_contents(engine)

    result = run("enqueue", "--file", "-",
                 input='{"id":"new","command":"true"}\n{"id":"taken","command":"true"}\n')

    assert result.returncode == 2
    assert "'taken' already exists" in result.stderr
    assert table_contents(engine) == before


@sqlite_only
def test_enqueue_file_rejects_id_option(run, engine):
    result = run("enqueue", "--file", "-", "--id", "x", input='{"command":"true"}\n')

    assert result.returncode == 2
    assert "--id" in result.stderr
    assert job_ids(engine) == set()


def test_enqueue_file_taken_id_in_later_chunk(run, engine, monkeypatch):
    # Given a taken id on the fifth line, and chunks of two jobs, so that two chunks are
    # inserted before the taken id is
    monkeypatch.setattr(enqueueing, "INSERT_CHUNK", 2)
    monkeypatch.setattr(enqueueing, "SMALL_BATCH", 0)  # take the bulk path
    add_job(engine, "taken")
    before = table_contents(engine)
    lines = [f'{{"id":"new-{number}","command":"true"}}' for number in range(4)]
    lines.insert(4, '{"id":"taken","command":"true"}')

    result = run("enqueue", "--file", "-", input="\n".join(lines) + "\n")

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("error: job 'taken' already exists; choose another id or omit it "
                             "to have one generated\n")
    assert table_contents(engine) == before


@sqlite_only
def test_enqueue_file_draws_progress_on_terminal_stderr(queue_env, engine, tmp_path):
    # Given stderr on a terminal and stdout on a pipe
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(f'{{"id":"bulk-{number}","command":"true"}}\n'
                            for number in range(50)))
    main_fd, terminal_fd = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "queuectl", "enqueue", "--file", str(path)],
        stdout=subprocess.PIPE, stderr=terminal_fd, stdin=subprocess.DEVNULL,
        env=terminal_env(queue_env))
    os.close(terminal_fd)

    # When the file is enqueued
    terminal = read_terminal(main_fd, process)
    stdout = process.stdout.read().decode()
    process.stdout.close()

    # Then the terminal shows the progress bar and stdout carries the ids alone
    assert process.wait(timeout=60) == 0
    assert b"enqueueing" in terminal
    assert stdout == "".join(f"bulk-{number}\n" for number in range(50))
    assert jobs.count_by_state(engine)["pending"] == 50


def test_enqueue_file_of_ten_thousand_jobs(cli, engine, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": f"bulk-{number}", "command": "true"}) + "\n"
                            for number in range(10_000)))

    started = time.monotonic()
    result = cli("enqueue", "--file", str(path), timeout=120)
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 10_000
    assert jobs.count_by_state(engine)["pending"] == 10_000
    # This bound catches only a pathological slowdown. bench/run.py measures the speed.
    assert elapsed < 60, elapsed


# show and logs ----------------------------------------------------------------------------

def test_show_json_has_every_field(run, engine):
    add_job(engine, "shown", "completed", timeout=9)

    result = run("show", "shown", "--json")

    detail = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert set(detail) == DETAIL_KEYS
    assert detail["id"] == "shown"
    assert detail["state"] == "completed"
    assert detail["attempts"] == 1
    assert detail["exit_code"] == 0
    assert detail["timeout"] == 9
    assert detail["output"] == "output of shown\n"
    assert detail["worker_id"] == "test-worker"
    assert detail["finished_at"].endswith("Z")


@sqlite_only
def test_show_table_lists_every_field_then_output(run, engine):
    add_job(engine, "shown", "failed")

    result = run("show", "shown")

    table, _, tail = result.stdout.partition("--- output (tail) ---\n")
    rows = dict(line.split("\t", 1) for line in table.splitlines())
    assert result.returncode == 0, result.stderr
    assert set(rows) == DETAIL_KEYS - {"output"}
    assert rows["state"] == "failed"
    assert rows["last_error"] == "exit status 3"
    assert rows["exit_code"] == "3"
    assert tail == "output of shown\n"


@sqlite_only
def test_show_unknown_job_exits_1(run, engine):
    result = run("show", "missing")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("error: job 'missing' not found; run `queuectl list` to see the "
                             "job ids\n")


@sqlite_only
def test_logs_prints_stored_output(run, engine):
    add_job(engine, "done", "completed")

    result = run("logs", "done")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "output of done\n"


@sqlite_only
def test_logs_of_job_without_output_prints_nothing(run, engine):
    add_job(engine, "waiting")

    result = run("logs", "waiting")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@sqlite_only
def test_logs_follow_of_finished_job_returns_at_once(run, engine):
    add_job(engine, "done", "dead")

    result = run("logs", "--follow", "done")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "output of done\n"


# cancel and retry -------------------------------------------------------------------------

def test_cancel_pending_job(run, engine):
    add_job(engine, "waiting")

    result = run("cancel", "waiting")

    job = jobs.get_job(engine, "waiting")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "waiting\n"
    assert job.state == "cancelled"
    assert job.finished_at is not None
    assert jobs.claim_next(engine, "test-worker", None, LEASE) is None


def test_cancel_processing_job_drops_its_claim(run, engine):
    add_job(engine, "running", "processing")

    result = run("cancel", "running")

    job = jobs.get_job(engine, "running")
    assert result.returncode == 0, result.stderr
    assert job.state == "cancelled"
    assert job.claim_token is None
    assert job.last_error == "cancelled while running"
    assert "was processing" in result.stderr


@sqlite_only
@pytest.mark.parametrize("state", ["completed", "dead", "cancelled"])
def test_cancel_finished_job_exits_1(run, engine, state):
    add_job(engine, "finished", state)
    before = table_contents(engine)

    result = run("cancel", "finished")

    assert result.returncode == 1
    assert result.stderr == (f"error: job 'finished' is already {state}; only pending, failed "
                             "or processing jobs can be cancelled\n")
    assert table_contents(engine) == before


@sqlite_only
def test_cancel_with_unknown_id_cancels_nothing(run, engine):
    add_job(engine, "waiting")

    result = run("cancel", "waiting", "missing")

    assert result.returncode == 1
    assert "'missing' not found" in result.stderr
    assert jobs.get_job(engine, "waiting").state == "pending"


@pytest.mark.parametrize("state", ["failed", "dead", "cancelled"])
def test_retry_resets_attempts(run, engine, state):
    add_job(engine, "again", state)

    result = run("retry", "again")

    job = jobs.get_job(engine, "again")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "again\n"
    assert job.state == "pending"
    assert job.attempts == 0
    assert job.finished_at is None
    assert job.run_at <= utcnow()


@sqlite_only
@pytest.mark.parametrize("state", ["pending", "processing", "completed"])
def test_retry_of_unfinished_or_completed_job_exits_1(run, engine, state):
    add_job(engine, "busy", state)
    before = table_contents(engine)

    result = run("retry", "busy")

    assert result.returncode == 1
    assert f"job 'busy' is {state}" in result.stderr
    assert table_contents(engine) == before


# dlq purge and prune ----------------------------------------------------------------------

def add_job_in_every_state(engine) -> None:
    """Add one job per state, with the state as its id.

    The pending job comes last, because add_job claims the job it has just enqueued.
    """
    for state in ("processing", "completed", "failed", "dead", "cancelled", "pending"):
        add_job(engine, state, state)


def test_dlq_purge_deletes_only_dead_jobs(run, engine):
    add_job_in_every_state(engine)

    result = run("dlq", "purge")

    assert result.returncode == 0, result.stderr
    assert result.stderr == "deleted 1 dead job(s)\n"
    assert job_ids(engine) == {"processing", "completed", "failed", "cancelled", "pending"}


def test_prune_deletes_only_finished_jobs(run, engine):
    add_job_in_every_state(engine)

    result = run("prune", "--older-than", "0s")

    assert result.returncode == 0, result.stderr
    assert "deleted 3 finished job(s)" in result.stderr
    assert job_ids(engine) == {"processing", "failed", "pending"}


def test_prune_keeps_jobs_younger_than_age(run, engine):
    # Given finished jobs of every kind, some changed 8 days ago and some just now,
    add_job_in_every_state(engine)
    week_old = utcnow() - timedelta(days=8)
    for state in ("completed", "dead", "cancelled", "failed", "pending", "processing"):
        add_job(engine, f"old-{state}", state)
        set_updated_at(engine, f"old-{state}", week_old)

    # when jobs older than 7 days are pruned,
    result = run("prune", "--older-than", "7d")

    # then only the old completed, dead and cancelled jobs are gone.
    remaining = job_ids(engine)
    assert result.returncode == 0, result.stderr
    assert "deleted 3 finished job(s)" in result.stderr
    assert remaining.isdisjoint({"old-completed", "old-dead", "old-cancelled"})
    assert {"old-failed", "old-pending", "old-processing"} <= remaining
    assert {"completed", "dead", "cancelled"} <= remaining


@sqlite_only
@pytest.mark.parametrize("age", ["7", "7x", "-1d", "d", "", "1.5.2h"])
def test_prune_invalid_age_exits_2(run, engine, age):
    add_job(engine, "done", "completed")

    result = run("prune", "--older-than", age)

    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid age")
    assert len(result.stderr.splitlines()) == 1
    assert job_ids(engine) == {"done"}


@sqlite_only
def test_prune_without_age_exits_2(run, engine):
    result = run("prune")

    assert result.returncode == 2
    assert "--older-than" in result.stderr


# wait -------------------------------------------------------------------------------------

def test_wait_exits_0_when_all_jobs_completed(run, engine):
    add_job(engine, "first", "completed")
    add_job(engine, "second", "completed")

    result = run("wait", "first", "second")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "first\tcompleted\nsecond\tcompleted\n"


@pytest.mark.parametrize("state", ["dead", "cancelled"])
def test_wait_exits_1_for_unsuccessful_job(run, engine, state):
    add_job(engine, "good", "completed")
    add_job(engine, "bad", state)

    result = run("wait", "good", "bad")

    assert result.returncode == 1
    assert result.stdout == f"good\tcompleted\nbad\t{state}\n"


@sqlite_only
@pytest.mark.parametrize("state", ["pending", "processing", "failed"])
def test_wait_timeout_exits_1_with_one_line(run, engine, state):
    # A failed job waits for its next attempt, so it has not finished either.
    add_job(engine, "unfinished", state)

    started = time.monotonic()
    result = run("wait", "unfinished", "--timeout", "0.3")
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: timed out after 0.3 s")
    assert "'unfinished'" in result.stderr
    assert elapsed < 5, elapsed


@sqlite_only
def test_wait_for_unknown_job_exits_1(run, engine):
    result = run("wait", "missing", "--timeout", "1")

    assert result.returncode == 1
    assert "'missing' not found" in result.stderr


# Output for scripts -----------------------------------------------------------------------

def test_list_json_has_stable_keys(run, engine):
    add_job(engine, "listed", "completed")

    listed = json.loads(run("list", "--json").stdout)

    assert [set(job) for job in listed] == [SUMMARY_KEYS]
    assert listed[0]["id"] == "listed"


def test_status_json_has_stable_keys(run, engine):
    add_job_in_every_state(engine)

    status = json.loads(run("status", "--json").stdout)

    assert set(status) == {"jobs", "workers"}
    assert status["jobs"] == {**{state.value: 1 for state in JobState}, "total": 6}
    assert status["workers"] == []


def test_dlq_list_json_has_stable_keys(run, engine):
    add_job(engine, "gone", "dead")
    add_job(engine, "done", "completed")

    dead = json.loads(run("dlq", "list", "--json").stdout)

    assert [set(job) for job in dead] == [SUMMARY_KEYS]
    assert dead[0]["id"] == "gone"


def test_config_list_json_has_stable_keys(run, engine):
    config.set_value(engine, "max_retries", "5")

    listed = json.loads(run("config", "list", "--json").stdout)

    assert set(listed) == set(config.SETTINGS)
    assert {key for entry in listed.values() for key in entry} == {
        "value", "default", "stored", "description"}
    assert listed["max_retries"]["value"] == 5
    assert listed["max_retries"]["default"] == 3


@sqlite_only
def test_json_output_is_only_json_when_empty(run, engine):
    for args in (["list", "--json"], ["dlq", "list", "--json"]):
        result = run(*args)

        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == []
        assert result.stderr == ""


@sqlite_only
def test_piped_list_prints_full_ids_tab_separated(run, engine):
    long_id = "job-" + "x" * 200
    add_job(engine, long_id, command="echo 'a\tb'\necho c")

    result = run("list")

    fields = result.stdout.rstrip("\n").split("\t")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert fields[0] == long_id
    assert len(fields) == 8
    assert fields[6] == "echo 'a b' echo c"  # tabs and newlines in a cell become spaces


def test_list_limit_and_queue_filter(run, engine):
    for number in range(5):
        add_job(engine, f"a-{number}", queue="alpha")
    add_job(engine, "b-0", queue="beta")

    limited = run("list", "--limit", "2")
    alpha = run("list", "--queue", "alpha", "--limit", "0")
    beta = run("list", "--queue", "beta", "--json")

    assert [line.split("\t")[0] for line in limited.stdout.splitlines()] == ["b-0", "a-4"]
    assert [line.split("\t")[0] for line in alpha.stdout.splitlines()] == [
        "a-4", "a-3", "a-2", "a-1", "a-0"]
    assert [job["id"] for job in json.loads(beta.stdout)] == ["b-0"]


@sqlite_only
def test_version_prints_version(cli, queue_env):
    result = cli("--version")

    assert result.returncode == 0
    assert result.stdout == f"queuectl {__version__}\n"


@sqlite_only
@pytest.mark.parametrize("options", [[], ["--json"]], ids=["table", "json"])
def test_list_piped_into_head_ends_quietly(engine, tmp_path, options):
    # Given enough jobs that their listing does not fit in a pipe buffer,
    jobs.enqueue_many(engine, [validate_payload({"command": f"echo {number}"})
                               for number in range(3000)])
    status_file = shlex.quote(str(tmp_path / "status"))
    queuectl = shlex.join([sys.executable, "-m", "queuectl", "list", "--limit", "0", *options])

    # when the listing is piped into `head -1`, which exits after one line,
    result = run_shell(f"{{ {queuectl}; echo $? > {status_file}; }} | head -1")

    # then queuectl stops quietly with exit status 0, and head printed one line.
    assert result.returncode == 0
    assert result.stderr == ""
    assert (tmp_path / "status").read_text() == "0\n"
    assert len(result.stdout.splitlines()) == 1


def run_shell(script: str) -> subprocess.CompletedProcess:
    """Run a /bin/sh script with the test's environment, which queue_env has set."""
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `queuectl ARGS...` with stdout on a pseudo-terminal; return (status, output)."""
    main_fd, terminal_fd = pty.openpty()
    # 50 rows of 200 columns, wide enough for every table here to fit without folding.
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "queuectl", *args], stdout=terminal_fd,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    os.close(terminal_fd)
    output = read_terminal(main_fd, process)
    return process.wait(timeout=60), output.decode("utf-8", "replace")


def read_terminal(main_fd: int, process: subprocess.Popen, timeout: float = 60) -> bytes:
    """Read a pseudo-terminal until the process closes it, then close it here too.

    The test fails, and the process is killed, if the terminal stays open for timeout seconds.
    """
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        ready, _, _ = select.select([main_fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            process.kill()
            pytest.fail(f"{' '.join(process.args)} kept its terminal open for over {timeout:g} s")
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    return b"".join(chunks)


def terminal_env(queue_env: dict[str, str]) -> dict[str, str]:
    """Return the test's environment for a colour terminal, without NO_COLOR."""
    env = {key: value for key, value in queue_env.items() if key != "NO_COLOR"}
    return {**env, "TERM": "xterm-256color"}


@pytest.mark.parametrize("options, extra_env", [
    ([], {"NO_COLOR": "1"}),
    (["--color", "never"], {}),
    (["--color", "always"], {"NO_COLOR": "1"}),
], ids=["NO_COLOR", "color-never", "NO_COLOR-beats-always"])
@sqlite_only
def test_terminal_output_without_colour_has_no_escapes(queue_env, engine, options, extra_env):
    add_job(engine, "shown", "completed")
    env = {**terminal_env(queue_env), **extra_env}

    for command in (["list"], ["show", "shown"]):
        status, output = run_on_terminal([*options, *command], env)

        assert status == 0, output
        assert "completed" in output, (command, output)
        assert ANSI_ESCAPE not in output, (command, output)


@sqlite_only
def test_terminal_output_is_coloured_by_default(queue_env, engine):
    add_job(engine, "shown", "completed")

    status, output = run_on_terminal(["list"], terminal_env(queue_env))

    assert status == 0, output
    assert ANSI_ESCAPE in output


@sqlite_only
def test_piped_output_has_no_escapes(run, engine):
    add_job(engine, "shown", "completed")

    for command in (["list"], ["status"], ["show", "shown"]):
        result = run(*command)

        assert result.returncode == 0, result.stderr
        assert "completed" in result.stdout, command
        assert ANSI_ESCAPE not in result.stdout, command
