"""The database through the CLI: first use, schema revisions, unreachable servers,
passwords in URLs, and file permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from queuectl import db, jobs, migrate
from queuectl.models import JobState
from tests.conftest import BACKENDS, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Sup3r-Secret-pw"
# Nothing listens on port 1 of this host, so connecting fails at once.
UNREACHABLE_URL = f"postgresql+psycopg://queuectl:{PASSWORD}@127.0.0.1:1/queuectl"


def only_on(backend: str) -> pytest.MarkDecorator:
    """Run a test on one backend only, if that backend is selected at all."""
    return pytest.mark.parametrize(
        "backend", [name for name in BACKENDS if name == backend], indirect=True)


def revision_of(url: str) -> str | None:
    """Return the schema revision stored in the database at url."""
    engine = db.create_queue_engine(make_url(url))
    try:
        return db.current_revision(engine)
    finally:
        engine.dispose()


def test_init_db_creates_current_schema(cli, db_url) -> None:
    result = cli("init-db")

    assert result.returncode == 0
    assert revision_of(db_url) == db.SCHEMA_REVISION
    assert db.SCHEMA_REVISION in result.stderr


def test_new_database_is_initialised_on_first_use(cli, db_url) -> None:
    result = cli("status")

    assert result.returncode == 0
    assert revision_of(db_url) == db.SCHEMA_REVISION


def test_older_schema_stops_commands_until_init_db(cli, db_url) -> None:
    # Given a database at the first schema revision
    engine = db.create_queue_engine(make_url(db_url))
    migrate.upgrade(engine, "0001_initial")
    engine.dispose()

    # When a command runs, then init-db, then the command again
    blocked = cli("status")
    revision_after_block = revision_of(db_url)
    upgraded = cli("init-db")
    retried = cli("status")

    # Then the first run stops without migrating, and init-db brings the schema up to date
    assert blocked.returncode == 1
    assert len(blocked.stderr.splitlines()) == 1
    assert "run `queuectl init-db`" in blocked.stderr
    assert revision_after_block == "0001_initial"
    assert upgraded.returncode == 0
    assert retried.returncode == 0


def test_alembic_upgrade_head_migrates_database_in_url(queue_env, db_url) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT, env=queue_env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert revision_of(db_url) == db.SCHEMA_REVISION


@only_on("sqlite")  # the backend fixture is unused: the URL names its own server
@pytest.mark.parametrize("args", [
    ["status"],
    ["-vv", "enqueue", '{"command": "true"}'],
    ["init-db"],
])
def test_unreachable_database_exits_1_without_password(cli, args) -> None:
    result = cli(*args, env={"QUEUECTL_DB_URL": UNREACHABLE_URL})

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "cannot reach the database postgresql+psycopg://queuectl:***@" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@only_on("sqlite")  # the backend fixture is unused: the URL is rejected before any connection
@pytest.mark.parametrize("url", [
    f"postgresql://queuectl:{PASSWORD}@localhost:port/queuectl",
    f"mysql://queuectl:{PASSWORD}@localhost/queuectl",
])
def test_invalid_database_url_exits_2_without_password(cli, url) -> None:
    result = cli("status", env={"QUEUECTL_DB_URL": url})

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "QUEUECTL_DB_URL" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@only_on("postgresql")
def test_password_in_url_is_never_printed(cli, db_url, queue_env, engine) -> None:
    # Given a URL with a password, which trust authentication accepts and ignores
    env = {"QUEUECTL_DB_URL": make_url(db_url).set(password=PASSWORD)
           .render_as_string(hide_password=False)}
    commands = [
        ("init-db",),
        ("-vv", "enqueue", '{"id": "job1", "command": "echo hi"}'),
        ("-vv", "dlq", "retry", "job1"),  # fails: job1 is pending
        ("worker", "start"),
    ]

    # When commands run that print the URL, log at debug level, fail, and start workers
    results = {args: cli(*args, env=env) for args in commands}
    try:
        wait_for(lambda: jobs.get_job(engine, "job1").state == JobState.COMPLETED.value,
                 timeout=20, message="job1 to complete")
    finally:
        results[("worker", "stop")] = cli("worker", "stop", env=env)
    log = (Path(queue_env["QUEUECTL_HOME"]) / "worker.log").read_text()

    # Then the password appears nowhere, and the URL shown has it masked
    for args, result in results.items():
        assert PASSWORD not in result.stdout + result.stderr, args
    assert PASSWORD not in log
    assert "postgres:***@" in results[("init-db",)].stderr


@only_on("sqlite")
def test_home_and_database_file_are_owner_only(cli, queue_env) -> None:
    # Given no QUEUECTL_DB_URL, so the default SQLite file under QUEUECTL_HOME is used,
    # and a umask that would let everyone read new files
    home = Path(queue_env["QUEUECTL_HOME"])
    previous_umask = os.umask(0)
    try:
        result = cli("status", env={"QUEUECTL_DB_URL": ""})
    finally:
        os.umask(previous_umask)

    # Then the home and every file that queuectl created in it are the owner's only
    assert result.returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "queuectl.db").stat().st_mode) == 0o600
    for path in home.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
