"""Procrastinate app and task for the benchmark, on a PostgreSQL database.

`procrastinate --app peers.procrastinate_app.app worker` loads the app built from the
libpq URI in QUEUECTL_BENCH_PROCRASTINATE_URL. The benchmark process builds its own app
for each measurement with make_app().
"""

from __future__ import annotations

import os

import procrastinate

from peers import run_command

URL_VARIABLE = "QUEUECTL_BENCH_PROCRASTINATE_URL"
TASK_NAME = "run"


def make_app(url: str):
    """Build an app on the database at the libpq URI `url` and register the task `run`.

    Returns the app, not yet opened, and the task.
    """
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    return app, app.task(name=TASK_NAME)(run_command)


if os.environ.get(URL_VARIABLE):
    app, run = make_app(os.environ[URL_VARIABLE])
