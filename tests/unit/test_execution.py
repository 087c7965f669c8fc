"""Running one job's command: exit codes, output tail, timeouts and forced stops."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from queuectl import execution
from queuectl.execution import OutputTail, describe_exit, run_command
from queuectl.procfs import process_stats
from tests.conftest import wait_for
from tests.jobs import (
    QUOTING_COMMAND,
    print_group_and_leave_background_sleep,
    print_group_then_sleep,
)

LIMIT = 65_536


def live_processes_in_group(pgid: int) -> list[int]:
    """Return the pids of processes in a process group, leaving out zombies."""
    return [process.pid for process in process_stats()
            if process.pgrp == pgid and process.state != "Z"]


def group_id_from(output: str) -> int:
    """Return the process group id that a job printed on its first line."""
    return int(output.splitlines()[0])


def test_successful_command_returns_exit_code_zero() -> None:
    result = run_command("echo hello", None, LIMIT)

    assert result.succeeded
    assert result.exit_code == 0
    assert result.output == "hello\n"


@pytest.mark.parametrize(("command", "code", "error"), [
    ("exit 1", 1, "exit status 1"),
    ("exit 3", 3, "exit status 3"),
    ("exit 255", 255, "exit status 255"),
    ("no-such-command-for-queuectl-tests", 127, "command not found (exit status 127)"),
    ("kill -9 $$", 137, "killed by SIGKILL"),
    ("kill -TERM $$", 143, "killed by SIGTERM"),
])
def test_failing_command_reports_exit_code(command: str, code: int, error: str) -> None:
    result = run_command(command, None, LIMIT)

    assert not result.succeeded
    assert result.exit_code == code
    assert result.error == error


def test_stderr_is_captured_with_stdout() -> None:
    result = run_command("echo out; echo err >&2", None, LIMIT)

    assert result.output == "out\nerr\n"


def test_shell_that_cannot_start_reports_127(monkeypatch) -> None:
    monkeypatch.setattr(execution, "SHELL", "/nonexistent/sh")

    result = run_command("true", None, LIMIT)

    assert result.exit_code == 127
    assert result.error.startswith("cannot start /nonexistent/sh")


def test_output_keeps_tail_and_counts_omitted_bytes() -> None:
    # 1000 lines of 10 bytes each, of which the last 100 bytes fit the limit
    result = run_command("yes abcdefghi | head -n 1000", None, 100)

    assert result.output == "[9900 earlier bytes omitted]\n" + "abcdefghi\n" * 10


def test_large_output_does_not_block_command() -> None:
    # 8 MiB is far more than a pipe buffer can take
    result = run_command("head -c 8388608 /dev/zero", None, 1024)

    assert result.exit_code == 0
    assert result.output.startswith(f"[{8388608 - 1024} earlier bytes omitted]\n")


def test_output_limit_zero_stores_only_the_note() -> None:
    result = run_command("echo hello", None, 0)

    assert result.output == "[6 earlier bytes omitted]\n"


def test_invalid_utf8_and_nul_bytes_become_replacement_characters() -> None:
    result = run_command("printf 'ok\\377\\000end'", None, LIMIT)

    assert result.output == "ok\ufffd\ufffdend"


def test_tail_split_inside_a_character_stays_readable() -> None:
    tail = OutputTail(4)
    tail.append("aé€".encode())  # 1 + 2 + 3 bytes, so the last 4 begin inside "é"

    assert tail.text() == "[2 earlier bytes omitted]\n\ufffd€"


def test_tail_joins_many_small_chunks() -> None:
    tail = OutputTail(5)
    for byte in b"0123456789":
        tail.append(bytes([byte]))

    assert tail.text() == "[5 earlier bytes omitted]\n56789"


def test_timeout_kills_whole_process_group() -> None:
    # Given a job that sleeps in the foreground and in two background grandchildren
    command = print_group_then_sleep(300)

    # When its timeout passes
    result = run_command(command, 0.5, LIMIT)

    # Then it failed as timed out, and no process of its group is left
    assert result.error == "timed out after 0.5 s"
    assert live_processes_in_group(group_id_from(result.output)) == []


def test_force_event_stops_running_command(tmp_path: Path) -> None:
    # Given a job that has started its sleeps
    started = tmp_path / "started"
    force = threading.Event()
    results = []
    runner = threading.Thread(target=lambda: results.append(
        run_command(print_group_then_sleep(300, started), None, LIMIT, force=force)))
    runner.start()
    wait_for(started.exists, timeout=10, message="the job to start its sleeps")

    # When a forced stop is requested
    force.set()
    runner.join(timeout=20)

    # Then the job was interrupted and its whole process group is gone
    assert not runner.is_alive()
    assert results[0].interrupted
    assert results[0].error == "interrupted by a forced stop"
    assert live_processes_in_group(group_id_from(results[0].output)) == []


def test_background_child_holding_stdout_does_not_hang() -> None:
    # Given a job that exits at once but leaves a child that keeps its stdout open
    results = []
    runner = threading.Thread(target=lambda: results.append(
        run_command(print_group_and_leave_background_sleep(300), None, LIMIT)))

    # When it runs
    runner.start()
    runner.join(timeout=20)

    # Then the result arrives without waiting for the child
    try:
        assert not runner.is_alive()
        assert results[0].exit_code == 0
        assert "finished\n" in results[0].output
    finally:
        if results:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group_id_from(results[0].output), signal.SIGKILL)


def test_quoting_matches_sh_c(tmp_path: Path) -> None:
    home = tmp_path / "it's a home"
    environment = dict(os.environ, HOME=str(home))
    expected = subprocess.run(["sh", "-c", QUOTING_COMMAND], capture_output=True, text=True,
                              env=environment, check=True).stdout

    result = run_command(QUOTING_COMMAND, None, LIMIT, env=environment)

    assert result.output == expected
    assert result.output == f"it's\n{str(home).upper()}\n"


@pytest.mark.parametrize(("returncode", "expected"), [
    (0, (0, None)),
    (2, (2, "exit status 2")),
    (126, (126, "command not executable (exit status 126)")),
    (127, (127, "command not found (exit status 127)")),
    (-signal.SIGKILL, (137, "killed by SIGKILL")),
])
def test_describe_exit_names_cause(returncode: int, expected: tuple) -> None:
    assert describe_exit(returncode) == expected
