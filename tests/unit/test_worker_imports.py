"""What a worker process loads: Core only, no ORM and no command-line libraries.

Every module a worker imports adds to the memory of each worker process, and a queue runs
several. bench/run.py measures their peak memory.
"""

from __future__ import annotations

import json
import subprocess
import sys

NOT_NEEDED_BY_WORKERS = ("sqlalchemy.orm", "typer", "click", "rich", "alembic", "pydantic")

LOADED_MODULES = f"""
import json, sys
import queuectl.supervisor, queuectl.workers
queuectl.supervisor._import_worker_modules()
loaded = sorted(name for name in {NOT_NEEDED_BY_WORKERS!r}
                if any(module == name or module.startswith(name + ".")
                       for module in sys.modules))
print(json.dumps(loaded))
"""


def test_worker_modules_leave_out_orm_and_cli(queue_env) -> None:
    result = subprocess.run([sys.executable, "-c", LOADED_MODULES], capture_output=True,
                            text=True, env=queue_env, timeout=60)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
