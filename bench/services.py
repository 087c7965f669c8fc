"""Servers and databases that the benchmarks start or create for themselves, and remove."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PG_ADMIN_URL = os.environ.get(
    "QUEUECTL_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# Maximum seconds for a private redis-server to accept connections, or to exit after SIGTERM.
REDIS_TIMEOUT = 10.0


class PostgresDatabase:
    """A new, empty database on the server of QUEUECTL_BENCH_PG_URL, dropped by close()."""

    def __init__(self, prefix: str) -> None:
        from sqlalchemy.engine import make_url

        self.name = f"{prefix}_{secrets.token_hex(4)}"
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.url = make_url(PG_ADMIN_URL).set(database=self.name)

    def sqlalchemy_url(self) -> str:
        """Return the SQLAlchemy URL of this database, password included."""
        return self.url.render_as_string(hide_password=False)

    def libpq_url(self) -> str:
        """Return the plain libpq URI of this database, for psycopg and its pools."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def close(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @staticmethod
    def _admin(statement: str) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(statement))
        finally:
            admin.dispose()


class RedisServer:
    """A private redis-server on a Unix socket in a temporary folder, with no TCP port.

    It keeps nothing on disk (no RDB snapshots, no append-only file), so stopping it
    discards every key.
    """

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not on PATH; install Redis to run this benchmark")
        self.folder = tempfile.TemporaryDirectory(prefix="queuectl-bench-redis-")
        self.socket = Path(self.folder.name) / "redis.sock"
        self.log = Path(self.folder.name) / "redis.log"
        command = [executable, "--port", "0", "--unixsocket", str(self.socket),
                   "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                   "--dir", self.folder.name, "--logfile", str(self.log)]
        # A session of its own, so that Ctrl-C in the terminal reaches only the benchmark,
        # whose finally blocks then stop this server.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket))

    def flush(self) -> None:
        """Delete every key, so that the next measurement starts from an empty server."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(REDIS_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.folder.cleanup()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + REDIS_TIMEOUT
        while True:
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: "
                                   f"{log.strip()[-500:]}")
            if self.socket.exists():
                client = self.client()
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    pass
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not accept connections on {self.socket} "
                                   f"within {REDIS_TIMEOUT:.0f} s")
            time.sleep(0.02)
