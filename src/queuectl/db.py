"""Locating the database, opening engines, and keeping the schema current."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from queuectl.errors import DatabaseUnavailable, InvalidInput, SchemaOutdated

log = logging.getLogger(__name__)

# The newest Alembic revision. A test checks it against the migration scripts, so the
# schema check below needs no Alembic import on the hot path of every command.
SCHEMA_REVISION = "0003_index_claimable_jobs"

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
    """Render a URL for messages and logs, with any password masked.

    libpq also takes the password as a `password` query parameter, which is masked too.
    """
    if "password" not in url.query:
        return url.render_as_string(hide_password=True)
    masked = url.update_query_dict({"password": "***"}).render_as_string(hide_password=True)
    return masked.replace("password=%2A%2A%2A", "password=***")


def _secrets_of(url: URL) -> list[str]:
    """Return the password strings a URL carries, to mask them in driver messages."""
    found = [str(url.password)] if url.password else []
    value = url.query.get("password")
    found.extend([value] if isinstance(value, str) else list(value or ()))
    return [secret for secret in found if secret]


def _is_file_database(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not database.startswith("file:")


def _prepare_sqlite_file(url: URL) -> None:
    """Create the SQLite file and its directory readable by the owner only."""
    database = url.database
    if not _is_file_database(database):
        return
    path = Path(database).expanduser()
    if path.exists():
        # Never open and close an existing database file here: closing any descriptor of
        # the file drops every POSIX lock this process's SQLite connections hold on it,
        # which can let another process corrupt the database. chmod needs no descriptor.
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)
        return
    if not path.parent.is_dir():
        # QUEUECTL_HOME exists by now, so this is a mistyped path in QUEUECTL_DB_URL.
        raise DatabaseUnavailable(
            f"the folder {str(path.parent)!r} of the SQLite database does not exist; "
            "create it or correct QUEUECTL_DB_URL"
        )
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot open the SQLite database {str(path)!r}: {exc.strerror}; "
            "check the path and its permissions"
        ) from exc
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # an umask or an existing ACL widened the mode of the new file


class WriteLock:
    """An exclusive lock on `<database>-lock` that write transactions take before BEGIN.

    SQLite makes a writer that finds the database locked sleep and retry, from 1 ms up to
    100 ms a time. Under several busy workers those sleeps cost more than the writes. A
    writer blocked on flock wakes as soon as the lock is free. The lock covers the
    processes of one host, which is all that share a SQLite file.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-lock")
        self.fd: int | None = None
        self.owner = threading.RLock()  # threads of this process take turns first
        self.depth = 0

    def acquire(self) -> None:
        self.owner.acquire()
        self.depth += 1
        if self.depth > 1:
            return
        try:
            if self.fd is None or self.fd_pid != os.getpid():
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self.fd_pid = os.getpid()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self.depth -= 1
            self.owner.release()
            raise

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.owner.release()


class _LockingConnection(sqlite3.Connection):
    """A sqlite3 connection that gives up its WriteLock when its transaction ends."""

    write_lock: WriteLock | None = None
    holds_lock = False

    def _release_write_lock(self) -> None:
        if self.holds_lock:
            self.holds_lock = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_write_lock()


def _configure_sqlite(engine: Engine) -> None:
    """Turn on WAL and a busy timeout, and begin write transactions with BEGIN IMMEDIATE.

    The sqlite3 module's implicit deferred transactions take the write lock only at the
    first write. Two such transactions that both read first can then deadlock, and SQLite
    reports "database is locked" at once instead of waiting. BEGIN IMMEDIATE takes the
    write lock up front, where the busy timeout applies.
    """

    database = engine.url.database
    write_lock = WriteLock(Path(database).expanduser()) if _is_file_database(database) else None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # queuectl emits BEGIN itself
        if isinstance(dbapi_connection, _LockingConnection):
            dbapi_connection.write_lock = write_lock
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
            return
        dbapi_connection = connection.connection.dbapi_connection
        if getattr(dbapi_connection, "write_lock", None) is not None:
            dbapi_connection.write_lock.acquire()
            dbapi_connection.holds_lock = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except Exception:
            dbapi_connection._release_write_lock()
            raise


def create_queue_engine(url: URL | None = None) -> Engine:
    """Open an engine for the queue database; each process must open its own."""
    url = url or database_url()
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False,
                          "factory": _LockingConnection},
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


def id_chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    """Split ids into lists short enough for one IN clause on every backend."""
    return [ids[start:start + size] for start in range(0, len(ids), size)]


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
    for secret in _secrets_of(url):
        first = first.replace(secret, "***")
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
