"""Local wake-ups for idle SQLite workers, so a new job starts in milliseconds.

Each idle worker listens on an abstract Unix datagram socket and leaves a marker file,
named after that socket, in a folder beside the database file (`queuectl.db-wake/`).
A process that adds a runnable job sends one datagram to every marker's socket. A lost datagram
costs at most one poll interval, because workers poll as well.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
from pathlib import Path

from sqlalchemy.engine import URL


def wake_dir(url: URL) -> Path | None:
    """Return the wake-up folder of a SQLite file database, or None for other databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    return path.with_name(path.name + "-wake")


def notify(url: URL) -> None:
    """Wake every worker waiting on this database; a missing folder means none is waiting."""
    folder = wake_dir(url)
    if folder is None:
        return
    try:
        markers = os.listdir(folder)
    except OSError:
        return
    if not markers:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in markers:
            try:
                sender.sendto(b"!", "\0" + name)
            except ConnectionRefusedError:
                # The worker that made this marker is gone without removing it.
                (folder / name).unlink(missing_ok=True)
            except OSError:
                pass  # a full queue means the worker is being woken already


class WakeListener:
    """The socket an idle worker sleeps on until a job is added or it is asked to stop."""

    def __init__(self, url: URL) -> None:
        folder = wake_dir(url)
        if folder is None:
            raise ValueError("wake-ups are for SQLite file databases only")
        folder.mkdir(mode=0o700, exist_ok=True)
        self.name = f"queuectl-{os.getpid()}-{secrets.token_hex(6)}"
        self.marker = folder / self.name
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name)
        self.socket.setblocking(False)
        self.marker.touch(mode=0o600)

    def wait(self, timeout: float) -> bool:
        """Sleep until a wake-up arrives or timeout seconds pass; return True if woken."""
        ready, _, _ = select.select([self.socket], [], [], max(timeout, 0))
        if not ready:
            return False
        while True:
            try:
                self.socket.recv(64)
            except BlockingIOError:
                return True

    def wake(self) -> None:
        """Wake this listener from another thread or a signal handler."""
        try:
            self.socket.sendto(b"!", "\0" + self.name)
        except OSError:
            pass

    def close(self) -> None:
        self.marker.unlink(missing_ok=True)
        self.socket.close()
