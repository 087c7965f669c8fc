"""Invalid input through the real CLI: exit status 2, one line on stderr, nothing written."""

from __future__ import annotations

import pytest

from queuectl import config, jobs
from queuectl.spec import validate_payload
from tests.tables import table_contents

INVALID = [
    pytest.param(["enqueue", '{"id": "job1", "command": "true"'], "invalid JSON",
                 id="malformed-json"),
    pytest.param(["enqueue", '{"id": "job1"}'], "'command' is missing", id="missing-command"),
    pytest.param(["enqueue", '{"command": ""}'], "'command' is empty", id="empty-command"),
    pytest.param(["enqueue", '{"id": "existing", "command": "echo new"}'],
                 "'existing' already exists", id="duplicate-id"),
    pytest.param(["config", "set", "colour", "blue"], "unknown config key 'colour'",
                 id="unknown-config-key"),
    pytest.param(["config", "set", "max_retries", "many"], "invalid value 'many'",
                 id="non-numeric-value"),
    pytest.param(["config", "set", "max-retries", "-1"], "expected a whole number from 1 to 1000",
                 id="negative-value"),
]


@pytest.fixture
def existing(engine):
    """A database that contains one job, "existing", and one stored setting."""
    jobs.enqueue(engine, validate_payload({"id": "existing", "command": "echo old"}))
    config.set_value(engine, "backoff_base", "3")
    return engine


@pytest.mark.parametrize(("args", "reason"), INVALID)
def test_invalid_input_exits_2_with_one_line(cli, existing, args, reason) -> None:
    before = table_contents(existing)

    result = cli(*args)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ")
    assert reason in result.stderr
    assert result.stdout == ""
    assert table_contents(existing) == before
