"""Locating the database, opening engines, and keeping the schema current."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from queuectl.errors import DatabaseUnavailable, InvalidInput, SchemaOutdated

log = logging.getLogger(__name__)

# The newest Alembic revision. A test checks it against the migration scripts, so the
# schema check below needs no Alembic import on the hot path of every command.
SCHEMA_REVISION = "0002_normalise_config_keys"

# Seconds a SQLite connection waits for another writer before it reports "database is locked".
SQLITE_BUSY_TIMEOUT = 60.0


def queuectl_home() -> Path:
    """Return `$QUEUECTL_HOME` (default `~/.queuectl`), created readable by its owner only."""
    home = Path(os.environ.get("QUEUECTL_HOME") or Path.home() / ".queuectl").expanduser()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create QUEUECTL_HOME {str(home)!r}: {exc.strerror}; "
            "set QUEUECTL_HOME to a writable directory"
        ) from exc
    return home


def database_url() -> URL:
    """Return the URL from `QUEUECTL_DB_URL`, or the embedded SQLite file under QUEUECTL_HOME."""
    raw = os.environ.get("QUEUECTL_DB_URL", "").strip()
    if not raw:
        return URL.create("sqlite", database=str(queuectl_home() / "queuectl.db"))
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise InvalidInput(
            "invalid QUEUECTL_DB_URL; use postgresql+psycopg://user@host/db or sqlite:///path"
        ) from exc
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # psycopg 3 is the only PostgreSQL driver queuectl installs.
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise InvalidInput(
        f"unsupported database {url.drivername!r} in QUEUECTL_DB_URL; "
        "use postgresql+psycopg://user@host/db or sqlite:///path"
    )


def display_url(url: URL) -> str:
    """Render a URL for messages and logs, with any password masked."""
    return url.render_as_string(hide_password=True)


def _prepare_sqlite_file(url: URL) -> None:
    """Create the SQLite file and its directory readable by the owner only."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    if path.exists():
        # Never open and close an existing database file here: closing any descriptor of
        # the file drops every POSIX lock this process's SQLite connections hold on it,
        # which can let another process corrupt the database. chmod needs no descriptor.
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot open the SQLite database {str(path)!r}: {exc.strerror}; "
            "check the path and its permissions"
        ) from exc
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # an umask or an existing ACL widened the mode of the new file


def _configure_sqlite(engine: Engine) -> None:
    """Turn on WAL and a busy timeout, and begin write transactions with BEGIN IMMEDIATE.

    The sqlite3 module's implicit deferred transactions take the write lock only at the
    first write. Two such transactions that both read first can then deadlock, and SQLite
    reports "database is locked" at once instead of waiting. BEGIN IMMEDIATE takes the
    write lock up front, where the busy timeout applies.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # queuectl emits BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode keeps the database consistent after any crash; a power loss
        # may undo the last transactions, which the README states.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        if connection.get_execution_options().get("queuectl_readonly"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_queue_engine(url: URL | None = None) -> Engine:
    """Open an engine for the queue database; each process must open its own."""
    url = url or database_url()
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=4,
        connect_args={"connect_timeout": 10, "application_name": "queuectl"},
    )


def read_only(engine: Engine) -> Engine:
    """Return a view of the engine whose transactions take no write lock on SQLite."""
    return engine.execution_options(queuectl_readonly=True)


def current_revision(engine: Engine) -> str | None:
    """Return the Alembic revision stored in the database, or None for an empty database."""
    with read_only(engine).connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except DBAPIError:
            conn.rollback()
            if inspect(conn).has_table("jobs"):
                raise SchemaOutdated(
                    "the database has queuectl tables but no schema revision; "
                    "run `queuectl init-db`"
                ) from None
            return None
    return row[0] if row else None


def upgrade_schema(engine: Engine) -> None:
    """Run every pending Alembic migration on the engine's database."""
    from queuectl import migrate

    migrate.upgrade(engine)


def ensure_schema(engine: Engine) -> None:
    """Initialise a brand-new database, or stop if its schema is not the current one."""
    try:
        revision = current_revision(engine)
    except OperationalError as exc:
        raise unavailable(engine.url, exc) from exc
    if revision == SCHEMA_REVISION:
        return
    if revision is None:
        log.info("initialising the new database %s", display_url(engine.url))
        upgrade_schema(engine)
        return
    raise SchemaOutdated(
        f"the database schema is at revision {revision!r}, this queuectl expects "
        f"{SCHEMA_REVISION!r}; run `queuectl init-db` (or upgrade queuectl if it is older)"
    )


def unavailable(url: URL, exc: BaseException) -> DatabaseUnavailable:
    """Build the error for a database that cannot be reached, without its password."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = reason[0] if reason else type(exc).__name__
    if url.password:
        first = first.replace(str(url.password), "***")
    return DatabaseUnavailable(
        f"cannot reach the database {display_url(url)}: {first}; "
        "check QUEUECTL_DB_URL and that the server is running"
    )


_engine: Engine | None = None
_engine_pid: int | None = None


def get_engine() -> Engine:
    """Return this process's engine, opened and schema-checked on first use.

    An engine is never shared across fork: a child process that inherits one opens its own.
    """
    global _engine, _engine_pid
    if _engine is not None and _engine_pid != os.getpid():
        # Inherited through fork: drop it without closing the parent's connections.
        _engine.dispose(close=False)
        _engine = None
    if _engine is None:
        engine = create_queue_engine()
        ensure_schema(engine)
        _engine, _engine_pid = engine, os.getpid()
    return _engine


def reset_engine() -> None:
    """Forget this process's engine, so the next use opens a new one."""
    global _engine, _engine_pid
    if _engine is not None:
        _engine.dispose(close=_engine_pid == os.getpid())
    _engine, _engine_pid = None, None
