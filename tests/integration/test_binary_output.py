"""Jobs that print bytes which are not text still complete, with readable output."""

from __future__ import annotations

import json


def test_binary_output_is_stored_readable(cli):
    # Given a job that prints the bytes FF FE 00, which are neither UTF-8 nor storable as
    # text on PostgreSQL
    job = {"id": "bytes", "command": "printf '\\377\\376\\000'"}
    assert cli("enqueue", json.dumps(job)).returncode == 0

    # When a worker runs it
    drained = cli("worker", "run", "--count", "1", "--burst", timeout=60)

    # Then the job completed and its output contains three replacement characters
    assert drained.returncode == 0
    detail = json.loads(cli("show", "bytes", "--json").stdout)
    assert detail["state"] == "completed"
    assert detail["output"] == "\ufffd\ufffd\ufffd"
