"""Fixtures shared by every test: backends, an isolated QUEUECTL_HOME, and the CLI.

Tests that touch storage run once on SQLite and once on a fresh PostgreSQL database that
the fixture creates and drops. `QUEUECTL_TEST_PG_URL` names the server (default: the local
one as postgres). Outside CI an unreachable PostgreSQL skips those tests with the reason;
with CI=true it fails them. `QUEUECTL_TEST_BACKENDS=sqlite` runs SQLite only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from queuectl import db

PG_ADMIN_URL = os.environ.get(
    "QUEUECTL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    name.strip()
    for name in os.environ.get("QUEUECTL_TEST_BACKENDS", "sqlite,postgresql").split(",")
    if name.strip()
]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT",
                         connect_args={"connect_timeout": 5})


@pytest.fixture(scope="session")
def postgres_available() -> None:
    """Skip (or, under CI, fail) when the test PostgreSQL server cannot be reached."""
    engine = _pg_admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means no server to test on
        reason = f"PostgreSQL at {make_url(PG_ADMIN_URL).render_as_string()} unreachable: {exc}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()


def create_pg_database() -> str:
    """Create an empty PostgreSQL database and return its URL."""
    name = f"queuectl_test_{secrets.token_hex(6)}"
    engine = _pg_admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database created by create_pg_database, disconnecting its clients."""
    name = make_url(url).database
    engine = _pg_admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """The name of the storage backend under test: sqlite or postgresql."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_available")
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path):
    """The URL of an empty database on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def queue_env(tmp_path: Path, db_url: str, monkeypatch) -> dict[str, str]:
    """Point queuectl, in this process and its children, at a private home and database."""
    home = tmp_path / "home"
    monkeypatch.setenv("QUEUECTL_HOME", str(home))
    monkeypatch.setenv("QUEUECTL_DB_URL", db_url)
    monkeypatch.setenv("QUEUECTL_HOSTNAME", "test-host")
    db.reset_engine()
    yield dict(os.environ)
    db.reset_engine()


@pytest.fixture
def engine(queue_env):
    """An engine on the test database, migrated to the current schema."""
    engine = db.create_queue_engine()
    db.upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def cli(queue_env, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `queuectl ARGS...` in a subprocess with the test's environment."""

    def run(*args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "queuectl", *args],
            input=input, capture_output=True, text=True, timeout=timeout,
            env={**queue_env, **(env or {})}, cwd=tmp_path,
        )

    return run


def wait_for(predicate: Callable[[], object], timeout: float = 30.0,
             interval: float = 0.05, message: str = "condition") -> object:
    """Poll until predicate returns a truthy value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)
