"""Rewrite legacy config keys such as `max-retries` to their canonical form.

Older releases stored keys as typed (`max-retries`, `Backoff-Base`). The canonical key is
lowercase with underscores. Where the canonical row exists too, it wins and the legacy row
is deleted. Where several legacy spellings of one key exist, the most recently updated wins.

The downgrade does nothing: the old spellings are not recorded, and the canonical keys are
valid for every release.

Revision ID: 0002_normalise_config_keys
Revises: 0001_initial
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_normalise_config_keys"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

config = sa.table(
    "config",
    sa.column("key", sa.String),
    sa.column("value", sa.Text),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def canonical_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(config.c.key, config.c.value, config.c.updated_at)).all()
    canonical_rows = {row.key for row in rows if canonical_key(row.key) == row.key}

    # The winning legacy row for each canonical key that has no canonical row of its own.
    winners: dict[str, sa.Row] = {}
    for row in sorted(rows, key=lambda r: (r.updated_at is not None, r.updated_at, r.key)):
        target = canonical_key(row.key)
        if target != row.key and target not in canonical_rows:
            winners[target] = row

    for row in rows:
        if canonical_key(row.key) != row.key:
            connection.execute(sa.delete(config).where(config.c.key == row.key))
    for target, row in winners.items():
        connection.execute(
            sa.insert(config).values(key=target, value=row.value, updated_at=row.updated_at)
        )


def downgrade() -> None:
    """Keep the canonical keys, which every release reads."""
