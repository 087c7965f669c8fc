"""Alembic environment: migrates the queuectl database, online only."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from queuectl.db import create_queue_engine
from queuectl.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# A random number that names queuectl's PostgreSQL advisory lock, so that two processes
# initialising one new database run the migrations one after the other.
MIGRATION_LOCK_ID = 7_391_004_211


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or create_queue_engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            compare_type=True,
            # SQLite runs DDL inside transactions too, so a failed migration leaves nothing.
            transactional_ddl=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("queuectl migrations run online only; drop --sql")
run_migrations_online()
