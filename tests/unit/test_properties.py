"""Property tests: whatever the input, it is stored unchanged or rejected with nothing written.

Each test runs on both backends, so the example counts stay modest.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from queuectl import config, jobs
from queuectl.errors import InvalidInput
from queuectl.models import Job, utcnow
from queuectl.spec import MAX_PRIORITY, MAX_RETRIES, MAX_SECONDS, QUEUE_NAME, parse_payload
from tests.tables import table_contents

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    # The engine fixture is shared by the examples of one test; each example resets what
    # it depends on.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)
zones = st.sampled_from([None, timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                         timezone(timedelta(hours=-8))])

# Values that the contract accepts, for every field.
valid_fields = {
    "command": st.text(min_size=1, max_size=40).filter(
        lambda text: text.strip() and "\x00" not in text),
    "id": st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=30)
          .filter(lambda text: not text.startswith("-")),
    "max_retries": st.integers(1, MAX_RETRIES),
    "priority": st.integers(-MAX_PRIORITY, MAX_PRIORITY),
    "queue": st.from_regex(QUEUE_NAME, fullmatch=True),
    "run_at": st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                           timezones=zones).map(datetime.isoformat),
    "delay": st.integers(0, int(MAX_SECONDS)) | st.floats(0, MAX_SECONDS),
    "timeout": st.integers(1, int(MAX_SECONDS)) | st.floats(0, MAX_SECONDS, exclude_min=True),
}
valid_payloads = st.fixed_dictionaries(
    {"command": valid_fields["command"]},
    optional={name: value for name, value in valid_fields.items() if name != "command"},
).map(lambda payload: {name: value for name, value in payload.items()
                       if not (name == "delay" and "run_at" in payload)})

# Values of any JSON type and size, mostly invalid, and two fields that do not exist.
any_fields = st.fixed_dictionaries({}, optional={
    "command": (st.text(max_size=40) | json_values
                | st.text(st.characters(categories=["Cs", "Cc"]), min_size=1, max_size=3)),
    "id": st.text(max_size=300) | json_values,
    "max_retries": st.integers() | st.floats() | json_values,
    "priority": st.integers() | st.floats() | json_values,
    "queue": st.from_regex(r"[A-Za-z0-9._ -]{0,70}", fullmatch=True) | json_values,
    "run_at": st.datetimes(timezones=zones).map(datetime.isoformat) | json_values,
    "delay": st.integers() | st.floats() | json_values,
    "timeout": st.integers() | st.floats() | json_values,
    "retries": json_values,
    "Command": json_values,
})

payloads = (valid_payloads
            | st.builds(lambda valid, other: {**valid, **other}, valid_payloads, any_fields)
            | any_fields)


def expected_run_at(text: str) -> datetime:
    """Return the moment an ISO 8601 run_at names; a time without an offset is local."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def check_job_read_back(engine, payload: dict) -> None:
    """Enqueue the payload, then check the stored job against every given field."""
    before = utcnow()
    created = jobs.enqueue(engine, parse_payload(json.dumps(payload)))
    after = utcnow()
    stored = jobs.get_job(engine, created.id)

    assert stored.command == payload["command"]
    assert stored.id == payload.get("id", created.id)
    assert stored.max_retries == payload.get("max_retries", 3)
    assert stored.priority == payload.get("priority", 0)
    assert stored.queue == payload.get("queue", "default")
    assert stored.timeout == payload.get("timeout")
    if "run_at" in payload:
        assert stored.run_at == expected_run_at(payload["run_at"])
    if "delay" in payload:
        delay = timedelta(seconds=payload["delay"])
        assert before + delay - timedelta(microseconds=1) <= stored.run_at <= after + delay


@PROPERTY_SETTINGS
@given(payload=payloads)
def test_job_payload_is_stored_unchanged_or_rejected(engine, payload: dict) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Job.__table__))
    before = table_contents(engine)

    try:
        parse_payload(json.dumps(payload))
    except InvalidInput:
        assert table_contents(engine) == before
        return

    check_job_read_back(engine, payload)


setting_keys = st.sampled_from(sorted(config.SETTINGS)).flatmap(lambda key: st.sampled_from([
    key, key.upper(), key.replace("_", "-"), key.title().replace("_", "-"), f" {key} ",
]))
setting_values = (
    st.integers(-10, 20_000_000).map(str)
    | st.floats(min_value=-1, max_value=100).map(str)
    | st.floats().map(repr)
    | st.integers().map(str)
    | st.text(max_size=12)
)


@PROPERTY_SETTINGS
@given(key=setting_keys, raw=setting_values)
def test_config_value_is_stored_unchanged_or_rejected(engine, key: str, raw: str) -> None:
    before = table_contents(engine)

    try:
        canonical, value = config.set_value(engine, key, raw)
    except InvalidInput:
        assert table_contents(engine) == before
        return

    assert canonical == config.canonical_key(key)
    # An integer setting also takes a whole number written as a float, such as "1.0".
    assert value == config.SETTINGS[canonical].kind(float(raw.strip()))
    assert config.get_value(engine, key) == value


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=60) | st.binary(max_size=60).map(
    lambda data: data.decode("utf-8", "surrogateescape")))
def test_any_text_gives_job_or_invalid_input(raw: str) -> None:
    try:
        spec = parse_payload(raw)
    except InvalidInput as error:
        assert "\n" not in error.message
        return

    assert isinstance(spec.command, str)
