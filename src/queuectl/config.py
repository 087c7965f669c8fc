"""Settings stored in the database: their names, defaults, validation and storage."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from queuectl.db import read_only
from queuectl.errors import InvalidInput
from queuectl.tables import config_table, utcnow

log = logging.getLogger(__name__)

Number = int | float


@dataclass(frozen=True)
class Setting:
    """A configuration key, its default, its allowed range and what it controls."""

    key: str
    kind: type  # int or float
    default: Number
    minimum: Number
    maximum: Number
    help: str

    def parse(self, raw: str) -> Number:
        """Convert text to this setting's value, or raise InvalidInput naming the range."""
        text = raw.strip()
        try:
            value: Number = float(text)
            if self.kind is int:
                if not value.is_integer():
                    raise ValueError(text)
                value = int(value)
        except (ValueError, OverflowError):
            raise InvalidInput(
                f"invalid value {raw!r} for {self.key}: expected {self.describe_range()}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(
                f"invalid value {raw!r} for {self.key}: expected {self.describe_range()}"
            )
        if not self.minimum <= value <= self.maximum:
            raise InvalidInput(
                f"value {raw!r} for {self.key} is out of range: expected {self.describe_range()}"
            )
        return value

    def describe_range(self) -> str:
        noun = "a whole number" if self.kind is int else "a number"
        return f"{noun} from {_format(self.minimum)} to {_format(self.maximum)}"


def _format(value: Number) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


SETTINGS: dict[str, Setting] = {
    setting.key: setting
    for setting in (
        Setting("max_retries", int, 3, 1, 1000,
                "attempts a new job gets before it moves to the dead letter queue"),
        Setting("backoff_base", float, 2, 1, 1000,
                "the delay after the n-th failed attempt is backoff_base ** n seconds"),
        Setting("backoff_max", float, 3600, 0, 31_536_000,
                "the longest delay between two attempts, in seconds"),
        Setting("job_timeout", float, 0, 0, 31_536_000,
                "seconds before an attempt is killed, for jobs without a timeout; 0 is none"),
        Setting("lease_seconds", float, 30, 3, 86_400,
                "seconds after a worker's last heartbeat before its job is recovered"),
        Setting("poll_interval", float, 1, 0.05, 60,
                "seconds an idle worker waits before it looks for due jobs again"),
        Setting("output_limit", int, 65_536, 0, 16_777_216,
                "bytes of each attempt's output (the tail) stored with the job"),
    )
}


def canonical_key(key: str) -> str:
    """Return the stored form of a key: lowercase, with underscores for hyphens."""
    return key.strip().lower().replace("-", "_")


def lookup(key: str) -> Setting:
    """Return the setting for a key in any spelling, or raise InvalidInput listing the keys."""
    setting = SETTINGS.get(canonical_key(key))
    if setting is None:
        raise InvalidInput(
            f"unknown config key {key!r}; valid keys: {', '.join(sorted(SETTINGS))}"
        )
    return setting


def _normalise_legacy_rows(conn: Connection) -> None:
    """Rewrite rows stored under a legacy spelling to the canonical key.

    The canonical row wins over legacy ones; among legacy rows the latest update wins.
    """
    rows = conn.execute(select(config_table.c.key, config_table.c.value,
                               config_table.c.updated_at)).all()
    canonical = {key for key, _, _ in rows if canonical_key(key) == key}
    legacy = sorted(((updated_at, key, value) for key, value, updated_at in rows
                     if canonical_key(key) != key))
    winners: dict[str, tuple] = {}
    for updated_at, key, value in legacy:
        if canonical_key(key) not in canonical:
            winners[canonical_key(key)] = (value, updated_at)
    for _, key, _ in legacy:
        log.info("renaming the legacy config key %r to %r", key, canonical_key(key))
        conn.execute(delete(config_table).where(config_table.c.key == key))
    for key, (value, updated_at) in winners.items():
        conn.execute(insert(config_table).values(key=key, value=value, updated_at=updated_at))


def _read_stored(engine: Engine, conn: Connection | None = None) -> dict[str, str]:
    query = select(config_table.c.key, config_table.c.value)
    if conn is not None:
        return dict(conn.execute(query).all())
    with read_only(engine).connect() as conn:
        return dict(conn.execute(query).all())


def stored_values(engine: Engine, conn: Connection | None = None) -> dict[str, str]:
    """Return the stored raw values by canonical key, normalising legacy rows on the way.

    conn, when given, is the connection to read them on, saving a checkout of another.
    """
    stored = _read_stored(engine, conn)
    if any(canonical_key(key) != key for key in stored):
        try:
            with engine.begin() as conn:
                _normalise_legacy_rows(conn)
        except IntegrityError:
            # Another process normalised the same legacy row first, and its result is kept.
            log.debug("a concurrent reader normalised the legacy config keys first")
        stored = _read_stored(engine)
    return stored


def effective_values(engine: Engine, stored: dict[str, str] | None = None) -> dict[str, Number]:
    """Return every setting's value: the stored one where valid, else the default."""
    if stored is None:
        stored = stored_values(engine)
    values: dict[str, Number] = {}
    for key, setting in SETTINGS.items():
        raw = stored.get(key)
        if raw is None:
            values[key] = setting.default
            continue
        try:
            values[key] = setting.parse(raw)
        except InvalidInput:
            log.warning("ignoring the invalid stored value %r for %s; using %s",
                        raw, key, setting.default)
            values[key] = setting.default
    return values


def get_value(engine: Engine, key: str, conn: Connection | None = None) -> Number:
    """Return one setting's value by a key in any spelling, read on conn when given."""
    setting = lookup(key)
    return effective_values(engine, stored_values(engine, conn))[setting.key]


def set_value(engine: Engine, key: str, raw: str) -> tuple[str, Number]:
    """Validate and store a setting; return its canonical key and parsed value."""
    setting = lookup(key)
    value = setting.parse(raw)
    stored_values(engine)  # normalises legacy rows first, so none can shadow the new value
    row = {"value": str(value), "updated_at": utcnow()}
    with engine.begin() as conn:
        updated = conn.execute(
            update(config_table).where(config_table.c.key == setting.key).values(**row))
        if updated.rowcount == 0:
            conn.execute(insert(config_table).values(key=setting.key, **row))
    return setting.key, value


def list_values(engine: Engine) -> list[tuple[Setting, Number, bool]]:
    """Return each setting with its value and whether that value is stored (not a default)."""
    stored = stored_values(engine)
    values = effective_values(engine, stored)
    return [(setting, values[key], key in stored) for key, setting in SETTINGS.items()]



def format_value(value: Number) -> str:
    """Format a setting's value for display: whole numbers without a decimal point."""
    return _format(value)
