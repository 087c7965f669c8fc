"""Running the Alembic migrations that ship with queuectl."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def alembic_config(engine: Engine | None = None) -> Config:
    """Build an Alembic configuration for the packaged migration scripts.

    With an engine, env.py migrates that engine's database; without one, the database that
    `QUEUECTL_DB_URL` or the default names.
    """
    config = Config()
    config.set_main_option("script_location", str(resources.files("queuectl.migrations")))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the engine's database up to `revision`."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the engine's database down to `revision`."""
    command.downgrade(alembic_config(engine), revision)
