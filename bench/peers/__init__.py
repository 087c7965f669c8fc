"""Task code of the peer job queues that bench/run.py compares with queuectl.

The benchmark imports this package from the bench/ folder, and starts the peers' worker
processes with PYTHONPATH set to that folder, so both sides find the same task names.
"""

from __future__ import annotations

import subprocess


def run_command(command: str) -> bool:
    """Run `command` through /bin/sh as a queuectl worker runs a job's command.

    Raises CalledProcessError when the command fails. Returns True rather than None
    because Huey stores no result for None, and the benchmark counts stored results.
    """
    subprocess.run(["/bin/sh", "-c", command], check=True)
    return True
