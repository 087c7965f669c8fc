"""Validation of job payloads: the JSON object that `queuectl enqueue` takes."""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from queuectl.errors import InvalidInput

FIELDS = ("id", "command", "max_retries", "priority", "queue", "run_at", "delay", "timeout")
_FIELD_SET = frozenset(FIELDS)

MAX_ID_LENGTH = 255
MAX_COMMAND_BYTES = 1_048_576
MAX_PRIORITY = 1_000_000
MAX_RETRIES = 1000
# One year, the longest delay or timeout queuectl accepts.
MAX_SECONDS = 31_536_000.0
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EXAMPLE = '{"id":"job1","command":"sleep 2"}'


@dataclass
class JobSpec:
    """A validated request to enqueue one job."""

    command: str
    id: str | None = None
    max_retries: int | None = None
    priority: int = 0
    queue: str = "default"
    run_at: datetime | None = None  # aware, UTC
    timeout: float | None = None


def _reject_constant(name: str) -> None:
    raise InvalidInput(f"invalid JSON number {name}; give a finite number")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInput(f"invalid job: field {key!r} appears twice; give it once")
        result[key] = value
    return result


# One decoder for every payload: json.loads with hooks would build a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicate_keys,
                            parse_constant=_reject_constant)


def parse_payload(raw: str, defaults: dict[str, Any] | None = None) -> JobSpec:
    """Parse and validate one JSON job object, or raise InvalidInput naming the problem.

    Fields in `defaults` (from command-line options) apply where the object lacks them.
    """
    data = decode_payload(raw)
    if defaults and isinstance(data, dict):
        data = {**defaults, **data}
    return validate_payload(data)


def decode_payload(raw: str) -> Any:
    """Decode JSON text, rejecting NaN, Infinity and repeated keys."""
    try:
        if raw.startswith("\ufeff"):
            # The check that json.loads makes before decoding, with its message.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        data = _DECODER.decode(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
            f"expected an object such as {EXAMPLE}"
        ) from None
    except ValueError:
        # json.loads raises a plain ValueError for an integer longer than Python's limit
        # of 4300 digits.
        raise InvalidInput(
            f"invalid JSON: a number is too long; expected an object such as {EXAMPLE}"
        ) from None
    except RecursionError:
        raise InvalidInput(
            "invalid JSON: arrays or objects are nested too deeply; "
            f"expected an object such as {EXAMPLE}"
        ) from None
    return data


def validate_payload(data: Any, now: datetime | None = None) -> JobSpec:
    """Validate a decoded job object and return the spec it describes.

    The fields are checked in a fixed order, so the first invalid one is the one reported.
    """
    if not isinstance(data, dict):
        raise InvalidInput(
            f"invalid job: expected a JSON object such as {EXAMPLE}, got {_json_type(data)}"
        )
    if not _FIELD_SET.issuperset(data):
        unknown = sorted(set(data) - _FIELD_SET)
        raise InvalidInput(
            f"invalid job: unknown field {unknown[0]!r}; valid fields: {', '.join(FIELDS)}"
        )
    command = _command(data)
    job_id = _job_id(data["id"]) if "id" in data else None
    max_retries = _integer(data, "max_retries", 1, MAX_RETRIES) if "max_retries" in data else None
    priority = _integer(data, "priority", -MAX_PRIORITY, MAX_PRIORITY) if "priority" in data else 0
    queue = _queue_name(data["queue"]) if "queue" in data else "default"
    timeout = _seconds(data, "timeout", minimum_exclusive=True) if "timeout" in data else None
    run_at = None
    if "run_at" in data and "delay" in data:
        raise InvalidInput("invalid job: give either run_at or delay, not both")
    if "run_at" in data:
        run_at = parse_time(data["run_at"], "run_at")
    if "delay" in data:
        delay = _seconds(data, "delay", minimum_exclusive=False)
        run_at = (now or datetime.now(timezone.utc)) + timedelta(seconds=delay)
    return JobSpec(command=command, id=job_id, max_retries=max_retries, priority=priority,
                   queue=queue, run_at=run_at, timeout=timeout)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _command(data: dict[str, Any]) -> str:
    if "command" not in data:
        raise InvalidInput(f"invalid job: 'command' is missing; for example {EXAMPLE}")
    command = data["command"]
    if not isinstance(command, str):
        raise InvalidInput(
            f"invalid job: 'command' must be a string, got {_json_type(command)}"
        )
    if not command.strip():
        raise InvalidInput("invalid job: 'command' is empty; give the shell command to run")
    if "\x00" in command:
        raise InvalidInput("invalid job: 'command' contains a NUL character, which sh cannot run")
    try:
        # ASCII text takes one byte a character, and contains no surrogate.
        size = len(command) if command.isascii() else len(command.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate, from a \ud800 escape or an invalid UTF-8 byte in argv, which
        # neither database can store.
        raise InvalidInput(
            "invalid job: 'command' contains a lone surrogate or an invalid UTF-8 byte; "
            "give valid UTF-8 text"
        ) from None
    if size > MAX_COMMAND_BYTES:
        raise InvalidInput(
            f"invalid job: 'command' is longer than {MAX_COMMAND_BYTES} bytes; "
            "put long scripts in a file and run the file"
        )
    return command


def _job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"invalid job: 'id' must be a string, got {_json_type(value)}")
    if not value:
        raise InvalidInput("invalid job: 'id' is empty; give an id or omit it")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"invalid job: 'id' is longer than {MAX_ID_LENGTH} characters")
    # Every whitespace character but the space is also unprintable (a test checks it).
    if value.startswith("-") or " " in value or not value.isprintable():
        raise InvalidInput(
            f"invalid job id {value!r}: use printable characters without spaces, "
            "not starting with '-'"
        )
    return value


def validate_queue_name(value: Any) -> str:
    """Return a valid queue name unchanged, or raise InvalidInput naming the rule."""
    return _queue_name(value)


def _queue_name(value: Any) -> str:
    if not isinstance(value, str) or not QUEUE_NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid queue name {value!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _integer(data: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    value = data[name]
    if type(value) is int and minimum <= value <= maximum:  # the common case, checked first
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(
            f"invalid job: {name!r} must be a whole number from {minimum} to {maximum}, "
            f"got {json.dumps(value)}"
        )
    if not minimum <= value <= maximum:
        raise InvalidInput(
            f"invalid job: {name!r} is {value}, out of range; "
            f"expected a whole number from {minimum} to {maximum}"
        )
    return value


def _seconds(data: dict[str, Any], name: str, minimum_exclusive: bool) -> float:
    value = data[name]
    bound = "greater than 0" if minimum_exclusive else "from 0"
    expected = f"a number of seconds {bound} up to {int(MAX_SECONDS)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"invalid job: {name!r} must be {expected}, got {json.dumps(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float is out of range as well
        value = math.inf
    too_small = value <= 0 if minimum_exclusive else value < 0
    if not math.isfinite(value) or too_small or value > MAX_SECONDS:
        raise InvalidInput(f"invalid job: {name!r} is {data[name]}, out of range; expected {expected}")
    return value


def parse_time(value: Any, name: str = "run_at") -> datetime:
    """Parse an ISO 8601 time; a time without an offset is local time. Return it in UTC."""
    if not isinstance(value, str):
        raise InvalidInput(f"invalid job: {name!r} must be an ISO 8601 string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(
            f"invalid {name} {value!r}: expected an ISO 8601 time such as 2026-01-31T14:30:00+01:00"
        ) from None
    try:
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # the local time zone, as the user sees it
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        # A time such as 0001-01-01T00:00:00+01:00 falls before year 1 in UTC.
        raise InvalidInput(
            f"invalid {name} {value!r}: the time is out of range; give a time between "
            "the years 1 and 9999 in UTC"
        ) from None


def command_from_argv(argv: list[str]) -> str:
    """Join arguments into one shell command line that runs them unchanged."""
    return shlex.join(argv)
