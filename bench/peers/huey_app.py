"""Huey instance and task for the benchmark, on Redis or on a SQLite file.

huey_consumer loads `peers.huey_app.huey`, built from the environment variable
QUEUECTL_BENCH_HUEY_REDIS_URL or QUEUECTL_BENCH_HUEY_SQLITE_FILE. The benchmark process
builds its own instance for each measurement with make_huey().
"""

from __future__ import annotations

import os

from huey import RedisHuey, SqliteHuey

from peers import run_command

REDIS_URL_VARIABLE = "QUEUECTL_BENCH_HUEY_REDIS_URL"
SQLITE_FILE_VARIABLE = "QUEUECTL_BENCH_HUEY_SQLITE_FILE"
TASK_NAME = "run"


def make_huey(*, redis_url: str | None = None, sqlite_file: str | None = None):
    """Build a Huey instance on one storage and register the task `run` on it.

    Returns the instance and the task; calling the task with a command enqueues it.
    """
    if redis_url:
        huey = RedisHuey("bench", url=redis_url)
    elif sqlite_file:
        huey = SqliteHuey("bench", filename=sqlite_file)
    else:
        raise ValueError("make_huey needs redis_url or sqlite_file")
    return huey, huey.task(name=TASK_NAME)(run_command)


if os.environ.get(REDIS_URL_VARIABLE) or os.environ.get(SQLITE_FILE_VARIABLE):
    huey, run = make_huey(redis_url=os.environ.get(REDIS_URL_VARIABLE),
                          sqlite_file=os.environ.get(SQLITE_FILE_VARIABLE))
