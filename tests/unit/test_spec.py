"""Validation of the JSON job object that `queuectl enqueue` takes."""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from queuectl.errors import InvalidInput
from queuectl.spec import MAX_COMMAND_BYTES, parse_payload, validate_payload


def job(**fields) -> str:
    """Return a job object with a valid command, plus fields, as JSON text."""
    return json.dumps({"command": "true", **fields})


REJECTED = [
    # Not JSON, or JSON that is not one object.
    pytest.param('{"command": "true"', "invalid JSON", id="unterminated-object"),
    pytest.param("{command: 'true'}", "invalid JSON", id="unquoted-key"),
    pytest.param("", "invalid JSON", id="empty-text"),
    pytest.param('\ufeff{"command": "true"}', "Unexpected UTF-8 BOM", id="byte-order-mark"),
    pytest.param('{"command": "true", "timeout": NaN}', "finite number", id="nan-literal"),
    pytest.param('{"command": "true", "delay": Infinity}', "finite number", id="infinity-literal"),
    pytest.param('{"command": "a", "command": "b"}', "appears twice", id="repeated-field"),
    pytest.param('{"command": "true", "priority": 1' + "0" * 5000 + "}", "too long",
                 id="integer-of-5001-digits"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep-nesting"),
    pytest.param('["true"]', "expected a JSON object", id="array"),
    pytest.param('"true"', "expected a JSON object", id="string"),
    pytest.param("3", "expected a JSON object", id="number"),
    pytest.param("null", "expected a JSON object", id="null"),
    pytest.param(job(retries=3), "unknown field 'retries'", id="unknown-field"),
    # command
    pytest.param('{"id": "job1"}', "'command' is missing", id="missing-command"),
    pytest.param(json.dumps({"command": ""}), "'command' is empty", id="empty-command"),
    pytest.param(json.dumps({"command": " \t\n"}), "'command' is empty", id="blank-command"),
    pytest.param(json.dumps({"command": 3}), "'command' must be a string", id="number-command"),
    pytest.param(json.dumps({"command": None}), "'command' must be a string", id="null-command"),
    pytest.param(json.dumps({"command": ["ls", "-l"]}), "'command' must be a string",
                 id="array-command"),
    pytest.param(json.dumps({"command": "echo a\u0000b"}), "NUL character", id="nul-in-command"),
    pytest.param('{"command": "echo \\ud800"}', "lone surrogate", id="surrogate-in-command"),
    pytest.param(json.dumps({"command": "x" * (MAX_COMMAND_BYTES + 1)}), "longer than",
                 id="command-too-long"),
    pytest.param(json.dumps({"command": "é" * (MAX_COMMAND_BYTES // 2 + 1)}), "longer than",
                 id="command-too-long-in-utf-8-bytes"),
    # id
    pytest.param(job(id=""), "'id' is empty", id="empty-id"),
    pytest.param(job(id=7), "'id' must be a string", id="number-id"),
    pytest.param(job(id="a b"), "invalid job id", id="id-with-space"),
    pytest.param(job(id="a\tb"), "invalid job id", id="id-with-tab"),
    pytest.param(job(id="-job"), "invalid job id", id="id-starting-with-dash"),
    pytest.param(job(id="job\u0007"), "invalid job id", id="id-with-control-character"),
    pytest.param(job(id="a\u00a0b"), "invalid job id", id="id-with-no-break-space"),
    pytest.param(job(id="a\u2028b"), "invalid job id", id="id-with-line-separator"),
    pytest.param(job(id="j" * 256), "longer than 255", id="id-too-long"),
    # queue
    pytest.param(job(queue=""), "invalid queue name", id="empty-queue"),
    pytest.param(job(queue="-mail"), "invalid queue name", id="queue-starting-with-dash"),
    pytest.param(job(queue="mail box"), "invalid queue name", id="queue-with-space"),
    pytest.param(job(queue="q" * 65), "invalid queue name", id="queue-too-long"),
    pytest.param(job(queue="pôle"), "invalid queue name", id="queue-not-ascii"),
    pytest.param(job(queue=5), "invalid queue name", id="number-queue"),
    # max_retries and priority
    pytest.param(job(max_retries="3"), "'max_retries' must be a whole number",
                 id="string-max-retries"),
    pytest.param(job(max_retries=True), "'max_retries' must be a whole number",
                 id="bool-max-retries"),
    pytest.param(job(max_retries=2.5), "'max_retries' must be a whole number",
                 id="fractional-max-retries"),
    pytest.param(job(max_retries=None), "'max_retries' must be a whole number",
                 id="null-max-retries"),
    pytest.param(job(max_retries=0), "from 1 to 1000", id="zero-max-retries"),
    pytest.param(job(max_retries=1001), "from 1 to 1000", id="max-retries-above-range"),
    pytest.param(job(priority="high"), "'priority' must be a whole number", id="string-priority"),
    pytest.param(job(priority=False), "'priority' must be a whole number", id="bool-priority"),
    pytest.param(job(priority=1_000_001), "from -1000000 to 1000000", id="priority-above-range"),
    pytest.param(job(priority=-1_000_001), "from -1000000 to 1000000",
                 id="priority-below-range"),
    # timeout and delay
    pytest.param(job(timeout=-1), "'timeout' is -1, out of range", id="negative-timeout"),
    pytest.param(job(timeout=0), "'timeout' is 0, out of range", id="zero-timeout"),
    pytest.param(job(timeout="10"), "'timeout' must be a number", id="string-timeout"),
    pytest.param(job(timeout=True), "'timeout' must be a number", id="bool-timeout"),
    pytest.param(job(timeout=31_536_001), "up to 31536000", id="timeout-above-one-year"),
    pytest.param('{"command": "true", "timeout": 1e400}', "out of range",
                 id="timeout-overflowing-to-infinity"),
    pytest.param(job(timeout=10**400), "out of range", id="timeout-integer-beyond-float"),
    pytest.param(job(delay=-0.5), "'delay' is -0.5, out of range", id="negative-delay"),
    pytest.param(job(delay="5"), "'delay' must be a number", id="string-delay"),
    pytest.param(job(delay=False), "'delay' must be a number", id="bool-delay"),
    pytest.param(job(delay=31_536_001), "up to 31536000", id="delay-above-one-year"),
    pytest.param(job(delay=10**400), "out of range", id="delay-integer-beyond-float"),
    # run_at
    pytest.param(job(run_at="2030-01-01T00:00:00", delay=5), "either run_at or delay",
                 id="run-at-and-delay"),
    pytest.param(job(run_at=1_700_000_000), "'run_at' must be an ISO 8601 string",
                 id="number-run-at"),
    pytest.param(job(run_at="tomorrow"), "invalid run_at 'tomorrow'", id="words-run-at"),
    pytest.param(job(run_at="2030-13-01T00:00:00"), "invalid run_at", id="month-13-run-at"),
    pytest.param(job(run_at="0001-01-01T00:00:00+01:00"), "out of range",
                 id="run-at-before-year-1-in-utc"),
    pytest.param(job(run_at="9999-12-31T23:30:00-01:00"), "out of range",
                 id="run-at-after-year-9999-in-utc"),
]


@pytest.mark.parametrize(("payload", "message"), REJECTED)
def test_invalid_payload_is_rejected_with_reason(payload: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_payload(payload)

    assert message in raised.value.message


@pytest.mark.parametrize("field", ["timeout", "delay"])
def test_nan_seconds_are_rejected(field: str) -> None:
    # JSON text cannot hold NaN, but a decoded object from another caller can.
    with pytest.raises(InvalidInput) as raised:
        validate_payload({"command": "true", field: math.nan})

    assert "out of range" in raised.value.message


def test_whitespace_other_than_space_is_unprintable() -> None:
    # The id check relies on this property of Python's str methods.
    printable_whitespace = [hex(code) for code in range(sys.maxunicode + 1)
                            if chr(code).isspace() and chr(code).isprintable()]

    assert printable_whitespace == [hex(ord(" "))]


def test_rejection_message_is_one_line() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_payload('{"command": "true",\n"queue": "a b"}')

    assert "\n" not in raised.value.message


def test_minimal_payload_gets_defaults() -> None:
    spec = parse_payload('{"command": "sleep 2"}')

    assert spec.command == "sleep 2"
    assert spec.id is None
    assert spec.max_retries is None  # the max_retries setting applies at enqueue time
    assert spec.priority == 0
    assert spec.queue == "default"
    assert spec.run_at is None
    assert spec.timeout is None


def test_command_is_kept_byte_for_byte() -> None:
    command = "printf '%s\\n' \"it's\" && echo \"$HOME\" | tr a-z A-Z\n# ünïcode ✓"

    spec = parse_payload(json.dumps({"command": command}))

    assert spec.command == command


def test_boundary_values_are_accepted() -> None:
    spec = parse_payload(job(id="j" * 255, max_retries=1000, priority=-1_000_000,
                             queue="q" * 64, timeout=31_536_000))

    assert spec.id == "j" * 255
    assert spec.max_retries == 1000
    assert spec.priority == -1_000_000
    assert spec.queue == "q" * 64
    assert spec.timeout == 31_536_000.0


def test_delay_sets_run_at_from_now() -> None:
    now = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)

    spec = validate_payload({"command": "true", "delay": 90}, now=now)

    assert spec.run_at == now + timedelta(seconds=90)


def test_zero_delay_is_accepted() -> None:
    now = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)

    spec = validate_payload({"command": "true", "delay": 0}, now=now)

    assert spec.run_at == now


@pytest.fixture
def kolkata_local_time(monkeypatch):
    """Make the process's local time zone UTC+05:30, which has no daylight saving time."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_run_at_without_offset_is_local_time(kolkata_local_time) -> None:
    spec = parse_payload(job(run_at="2030-01-15T12:00:00"))

    assert spec.run_at == datetime(2030, 1, 15, 6, 30, tzinfo=timezone.utc)


def test_run_at_is_returned_in_utc(kolkata_local_time) -> None:
    spec = parse_payload(job(run_at="2030-01-15T12:00:00"))

    assert spec.run_at.utcoffset() == timedelta(0)


def test_run_at_with_offset_ignores_local_time(kolkata_local_time) -> None:
    spec = parse_payload(job(run_at="2030-01-15T12:00:00+02:00"))

    assert spec.run_at == datetime(2030, 1, 15, 10, 0, tzinfo=timezone.utc)


def test_run_at_with_z_suffix_is_utc() -> None:
    spec = parse_payload(job(run_at="2030-01-15T12:00:00Z"))

    assert spec.run_at == datetime(2030, 1, 15, 12, 0, tzinfo=timezone.utc)


def test_local_run_at_before_year_1_is_rejected(kolkata_local_time) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_payload(job(run_at="0001-01-01T00:00:00"))

    assert "out of range" in raised.value.message
