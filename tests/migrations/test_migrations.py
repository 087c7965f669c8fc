"""The Alembic migrations: they build exactly the models' schema, and carry old data forward."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import make_url

from queuectl import db, migrate
from queuectl.models import Base, ConfigEntry

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_engine(db_url):
    """An engine on an empty database of the backend under test."""
    engine = db.create_queue_engine(make_url(db_url))
    yield engine
    engine.dispose()


def schema_differences(engine) -> list:
    """Return what Alembic's autogenerate finds between the database and the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_schema_revision_is_script_head() -> None:
    packaged = ScriptDirectory.from_config(migrate.alembic_config())
    checkout = ScriptDirectory.from_config(Config(str(REPO_ROOT / "alembic.ini")))

    assert packaged.get_heads() == [db.SCHEMA_REVISION]
    assert checkout.get_heads() == [db.SCHEMA_REVISION]


def test_upgrade_to_head_matches_models(empty_engine) -> None:
    migrate.upgrade(empty_engine)

    assert db.current_revision(empty_engine) == db.SCHEMA_REVISION
    assert schema_differences(empty_engine) == []


def test_downgrade_to_base_removes_every_table(empty_engine) -> None:
    migrate.upgrade(empty_engine)

    migrate.downgrade(empty_engine, "base")

    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}


def test_upgrade_after_downgrade_matches_models(empty_engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.downgrade(empty_engine, "base")

    migrate.upgrade(empty_engine)

    assert schema_differences(empty_engine) == []


def insert_config_rows(engine, rows: dict[str, str]) -> None:
    """Insert config rows with raw SQL, as a release at revision 0001_initial stored them."""
    with engine.begin() as conn:
        for key, value in rows.items():
            conn.execute(
                text("INSERT INTO config (key, value, updated_at) VALUES (:key, :value, :now)"),
                {"key": key, "value": value, "now": "2026-01-01 00:00:00"},
            )


def config_rows(engine) -> dict[str, str]:
    """Return the config table as a dict of key to raw value."""
    with engine.connect() as conn:
        return dict(conn.execute(select(ConfigEntry.key, ConfigEntry.value)).all())


@pytest.mark.parametrize(("legacy", "expected"), [
    pytest.param({"max-retries": "5", "Backoff-Base": "4"},
                 {"max_retries": "5", "backoff_base": "4"}, id="legacy-keys-renamed"),
    pytest.param({"max-retries": "7", "max_retries": "9"},
                 {"max_retries": "9"}, id="canonical-key-wins"),
])
def test_upgrade_normalises_legacy_config_keys(empty_engine, legacy, expected) -> None:
    # Given a database at the first revision with keys stored as users typed them
    migrate.upgrade(empty_engine, "0001_initial")
    insert_config_rows(empty_engine, legacy)

    # When it is upgraded to the current schema
    migrate.upgrade(empty_engine)

    # Then every key is canonical, and where both spellings existed the canonical value won
    assert config_rows(empty_engine) == expected
