"""Shell commands that tests enqueue as jobs or run directly.

Each function returns a command line for `/bin/sh -c`. Paths are quoted, so they may
contain spaces. The commands that log attempts read QUEUECTL_JOB_ID and
QUEUECTL_JOB_ATTEMPT, which the worker sets for every attempt.
"""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path


def _quote(path: Path | str) -> str:
    return shlex.quote(str(path))


def append_job_id(path: Path | str) -> str:
    """Append the job's id to a file, one line per attempt that ran."""
    return f'echo "$QUEUECTL_JOB_ID" >> {_quote(path)}'


def record_attempt_then_require(log: Path | str, flag: Path | str) -> str:
    """Append "ATTEMPT START_TIME" to a log, then fail unless the flag file exists.

    START_TIME is in seconds since the epoch, with nanoseconds.
    """
    return (f'echo "$QUEUECTL_JOB_ATTEMPT $(date +%s.%N)" >> {_quote(log)}; '
            f"test -e {_quote(flag)}")


def sleep_on_first_attempt(log: Path | str, seconds: float) -> str:
    """Append the attempt number to a log; only the first attempt then sleeps."""
    return (f'echo "$QUEUECTL_JOB_ATTEMPT" >> {_quote(log)}; '
            f'if [ "$QUEUECTL_JOB_ATTEMPT" = 1 ]; then sleep {seconds}; fi')


def unique_sleep_argument(seconds: int) -> str:
    """Return a `sleep` argument of about `seconds` that no other process uses.

    The random fraction makes the argument a marker: a test finds the job's processes by
    searching the command lines in /proc for it.
    """
    return f"{seconds}.{secrets.randbelow(10**6):06d}"


# Prints "it's", then $HOME in capitals. Its quotes, variable and pipe must reach /bin/sh
# exactly as written: any quoting or word splitting added on the way changes the output.
QUOTING_COMMAND = """printf '%s\\n' "it's" && echo "$HOME" | tr a-z A-Z"""

# Fails on every attempt, with exit status 3.
ALWAYS_FAILS = "exit 3"


def print_group_then_sleep(seconds: int, started: Path | str | None = None) -> str:
    """Print the shell's pid, which is the job's process group id, then sleep in three
    processes: two background children and one foreground child.

    With `started`, the shell creates that file once all three sleeps have been started.
    """
    touch = f"touch {_quote(started)}; " if started is not None else ""
    return f"echo $$; sleep {seconds} & sleep {seconds} & {touch}sleep {seconds}"


def print_group_and_leave_background_sleep(seconds: int) -> str:
    """Print the shell's pid, start a background sleep that keeps stdout open, and exit 0."""
    return f"echo $$; sleep {seconds} & echo finished"
