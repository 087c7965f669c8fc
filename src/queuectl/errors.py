"""The exception tree of queuectl.

Every expected failure is a ``QueuectlError``. The CLI prints it as one line on stderr and
exits with its ``exit_code``: 1 when the operation failed, 2 when the input was invalid.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class QueuectlError(Exception):
    """The operation failed."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(QueuectlError):
    """The input is invalid."""

    exit_code = EXIT_USAGE


class JobNotFound(QueuectlError):
    """No job has this id."""

    def __init__(self, job_id: str, hint: str = "run `queuectl list` to see the job ids") -> None:
        super().__init__(f"job {job_id!r} not found; {hint}")
        self.job_id = job_id


class DuplicateJob(QueuectlError):
    """A job with this id exists already."""

    # A duplicate id is a mistake in the request, not a failure of the queue.
    exit_code = EXIT_USAGE

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id!r} already exists; choose another id or omit it to have one generated"
        )
        self.job_id = job_id


class InvalidState(QueuectlError):
    """The job is not in a state that allows this operation."""


class DatabaseUnavailable(QueuectlError):
    """The database cannot be reached."""


class SchemaOutdated(QueuectlError):
    """The database schema is older than this version of queuectl; run `queuectl init-db`."""


class WorkerError(QueuectlError):
    """Starting or stopping workers failed."""
