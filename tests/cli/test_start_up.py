"""What the command line loads at start-up, and the help of every command.

`queuectl enqueue` is run once per job by scripts, so its start-up time counts. It loads
only what inserting a job into SQLite needs. bench/run.py measures the time itself.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import typer

from queuectl import cli as queuectl_cli
from queuectl import jobs

# Modules that an enqueue into SQLite does not need: Rich, Alembic, the PostgreSQL driver
# and SQLAlchemy's dialect for it, the ORM, and pydantic (which Typer 0.29 and newer import
# at start-up).
NOT_NEEDED_BY_ENQUEUE = ("rich", "alembic", "psycopg", "sqlalchemy.dialects.postgresql",
                         "sqlalchemy.orm", "pydantic")

LOADED_MODULES_AFTER_ENQUEUE = f"""
import json, sys
from queuectl import cli
sys.argv = ["queuectl", "enqueue", sys.argv[1]]
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
loaded = sorted(name for name in {NOT_NEEDED_BY_ENQUEUE!r}
                if any(module == name or module.startswith(name + ".")
                       for module in sys.modules))
sys.stderr.write(json.dumps({{"code": code, "loaded": loaded}}) + "\\n")
"""


def command_paths() -> list[tuple[str, ...]]:
    """Return the argument path of every command and command group, the root included."""
    paths: list[tuple[str, ...]] = []

    def visit(command, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, child in getattr(command, "commands", {}).items():
            visit(child, (*path, name))

    visit(typer.main.get_command(queuectl_cli.app), ())
    return paths


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_enqueue_loads_no_unneeded_module(engine, queue_env) -> None:
    # The database exists and is current, as it is for every enqueue but the first.
    result = subprocess.run(
        [sys.executable, "-c", LOADED_MODULES_AFTER_ENQUEUE, '{"id":"light","command":"true"}'],
        capture_output=True, text=True, env=queue_env, timeout=60,
    )
    report = json.loads(result.stderr.splitlines()[-1])

    assert report["code"] == 0, result.stderr
    assert report["loaded"] == []
    assert result.stdout == "light\n"
    assert jobs.get_job(engine, "light").command == "true"


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "queuectl")
def test_every_command_prints_help(path: tuple[str, ...], monkeypatch) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "argv", ["queuectl", *path, "--help"])

    with redirect_stdout(stdout), redirect_stderr(stderr), pytest.raises(SystemExit) as exited:
        queuectl_cli.main()

    assert exited.value.code in (0, None), stderr.getvalue()
    assert stdout.getvalue().startswith("Usage: queuectl")
    assert stderr.getvalue() == ""
