"""Settings stored in the database: key spellings, validation and legacy rows."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from queuectl import config
from queuectl.errors import InvalidInput
from queuectl.models import ConfigEntry, utcnow
from tests.tables import table_contents


def stored_keys(engine) -> list[str]:
    """Return the keys of every row in the config table, sorted."""
    with Session(engine) as session:
        return sorted(session.scalars(select(ConfigEntry.key)))


def insert_rows(engine, **rows: str) -> None:
    """Insert config rows as given, bypassing validation, as an older release would have."""
    with Session(engine) as session, session.begin():
        for key, value in rows.items():
            session.add(ConfigEntry(key=key, value=value, updated_at=utcnow()))


def test_defaults_apply_without_stored_rows(engine) -> None:
    assert config.get_value(engine, "max_retries") == 3
    assert config.get_value(engine, "backoff_base") == 2


@pytest.mark.parametrize("spelling", ["Max-Retries", "max-retries", "MAX_RETRIES",
                                      " max_retries "])
def test_key_spellings_name_the_same_setting(spelling: str) -> None:
    assert config.lookup(spelling) is config.SETTINGS["max_retries"]


def test_hyphenated_key_is_stored_canonical(engine) -> None:
    config.set_value(engine, "Max-Retries", "5")

    assert config.get_value(engine, "max_retries") == 5
    assert stored_keys(engine) == ["max_retries"]


def test_set_value_returns_canonical_key_and_parsed_value(engine) -> None:
    assert config.set_value(engine, "Backoff-Base", "2.5") == ("backoff_base", 2.5)


def test_set_value_replaces_previous_value(engine) -> None:
    config.set_value(engine, "max_retries", "5")

    config.set_value(engine, "max-retries", "6")

    assert config.get_value(engine, "max_retries") == 6


@pytest.mark.parametrize(("key", "raw", "message"), [
    ("max_retries", "0", "out of range: expected a whole number from 1 to 1000"),
    ("max_retries", "1001", "out of range: expected a whole number from 1 to 1000"),
    ("max_retries", "-1", "out of range: expected a whole number from 1 to 1000"),
    ("max_retries", "abc", "invalid value 'abc' for max_retries"),
    ("max_retries", "2.5", "expected a whole number from 1 to 1000"),
    ("max_retries", "", "invalid value '' for max_retries"),
    ("backoff_base", "0.5", "expected a number from 1 to 1000"),
    ("backoff_base", "nan", "invalid value 'nan' for backoff_base"),
    ("backoff_max", "inf", "invalid value 'inf' for backoff_max"),
    ("backoff_max", "-5", "expected a number from 0 to 31536000"),
    ("poll_interval", "0.01", "expected a number from 0.05 to 60"),
])
def test_invalid_value_is_rejected_with_range(key: str, raw: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        config.lookup(key).parse(raw)

    assert message in raised.value.message


def test_rejected_value_leaves_stored_value(engine) -> None:
    config.set_value(engine, "max_retries", "7")
    before = table_contents(engine)

    with pytest.raises(InvalidInput):
        config.set_value(engine, "max-retries", "0")

    assert table_contents(engine) == before


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(InvalidInput) as raised:
        config.lookup("retries")

    message = raised.value.message
    assert "unknown config key 'retries'" in message
    for key in config.SETTINGS:
        assert key in message


def test_unknown_key_is_rejected_when_read(engine) -> None:
    with pytest.raises(InvalidInput):
        config.get_value(engine, "colour")


def test_legacy_row_is_normalised_when_read(engine) -> None:
    # Given a row that an older release stored under the hyphenated key
    insert_rows(engine, **{"max-retries": "5"})

    # When the setting is read
    value = config.get_value(engine, "max_retries")

    # Then the value applies and the row now has its canonical key
    assert value == 5
    assert stored_keys(engine) == ["max_retries"]


def test_canonical_row_wins_over_legacy_row(engine) -> None:
    insert_rows(engine, **{"max_retries": "9", "Max-Retries": "7"})

    value = config.get_value(engine, "max-retries")

    assert value == 9
    assert stored_keys(engine) == ["max_retries"]


def test_set_value_replaces_legacy_row(engine) -> None:
    insert_rows(engine, **{"Backoff-Base": "4"})

    config.set_value(engine, "backoff_base", "3")

    assert config.get_value(engine, "backoff_base") == 3
    assert stored_keys(engine) == ["backoff_base"]


def test_invalid_stored_value_falls_back_to_default(engine) -> None:
    insert_rows(engine, max_retries="banana")

    assert config.get_value(engine, "max_retries") == 3


def test_list_values_marks_stored_settings(engine) -> None:
    config.set_value(engine, "backoff_base", "3")

    entries = config.list_values(engine)
    listed = {setting.key: (value, stored) for setting, value, stored in entries}

    assert listed["backoff_base"] == (3.0, True)
    assert listed["max_retries"] == (3, False)
    assert set(listed) == set(config.SETTINGS)
