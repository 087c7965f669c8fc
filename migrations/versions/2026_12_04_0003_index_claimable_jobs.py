"""Index the claimable jobs in the order workers claim them.

A worker claims the due pending or failed job of highest priority, oldest first. The
indexes of the first revision found those jobs by state but not in that order, so every
claim sorted all waiting jobs: the cost of a claim grew with the length of the queue.
These partial indexes hold only pending and failed jobs, in claim order (one of them per
queue), so a claim reads the first due entry. They replace ix_jobs_claim.

Revision ID: 0003_index_claimable_jobs
Revises: 0002_normalise_config_keys
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_index_claimable_jobs"
down_revision = "0002_normalise_config_keys"
branch_labels = None
depends_on = None

CLAIMABLE = sa.text("state IN ('pending', 'failed')")


def upgrade() -> None:
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.create_index("ix_jobs_ready", "jobs", [sa.text("priority DESC"), "seq"],
                    sqlite_where=CLAIMABLE, postgresql_where=CLAIMABLE)
    op.create_index("ix_jobs_ready_queue", "jobs", ["queue", sa.text("priority DESC"), "seq"],
                    sqlite_where=CLAIMABLE, postgresql_where=CLAIMABLE)


def downgrade() -> None:
    op.drop_index("ix_jobs_ready_queue", table_name="jobs")
    op.drop_index("ix_jobs_ready", table_name="jobs")
    op.create_index("ix_jobs_claim", "jobs", ["state", "queue", "priority", "seq"])
