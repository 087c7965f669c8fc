"""An enqueuer and a worker in different time zones agree on when a retry is due."""

from __future__ import annotations

import json

from tests.jobs import record_attempt_then_require


def test_retry_delay_ignores_time_zones(cli, tmp_path):
    # Given backoff_base 3 and a failing job enqueued in New York (UTC-5 or UTC-4)
    attempts_log = tmp_path / "attempts.log"
    never_created = tmp_path / "missing-flag"
    assert cli("config", "set", "backoff_base", "3").returncode == 0
    job = {"id": "tz", "max_retries": 2,
           "command": record_attempt_then_require(attempts_log, never_created)}
    enqueued = cli("enqueue", json.dumps(job), env={"TZ": "America/New_York"})
    assert enqueued.returncode == 0

    # When a worker in Kolkata (UTC+5:30) runs it until no job is left
    drained = cli("worker", "run", "--count", "1", "--burst", env={"TZ": "Asia/Kolkata"},
                  timeout=60)

    # Then the second attempt starts about 3 s after the first, not hours later or at once
    assert drained.returncode == 0
    starts = [float(line.split()[1]) for line in attempts_log.read_text().splitlines()]
    assert len(starts) == 2
    gap = starts[1] - starts[0]
    assert gap >= 2.7
    assert gap <= 8.0
    detail = json.loads(cli("show", "tz", "--json").stdout)
    assert detail["state"] == "dead"
