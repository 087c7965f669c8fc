"""A job that outlives many leases is never taken from the live worker running it."""

from __future__ import annotations

import json

from tests.jobs import append_job_id


def test_long_job_keeps_its_lease(cli, tmp_path):
    # Given the shortest lease (3 s) and a job that runs for three leases
    ran = tmp_path / "ran.txt"
    assert cli("config", "set", "lease_seconds", "3").returncode == 0
    job = {"id": "long", "command": f"sleep 9; {append_job_id(ran)}"}
    assert cli("enqueue", json.dumps(job)).returncode == 0

    # When two workers run until the queue is empty, so the idle one looks for expired leases
    drained = cli("worker", "run", "--count", "2", "--burst", timeout=60)

    # Then the job ran once, in one attempt, and no worker recovered it as lost
    assert drained.returncode == 0
    assert ran.read_text().split() == ["long"]
    detail = json.loads(cli("show", "long", "--json").stdout)
    assert detail["state"] == "completed"
    assert detail["attempts"] == 1
    assert "recovered" not in (tmp_path / "home" / "worker.log").read_text()
