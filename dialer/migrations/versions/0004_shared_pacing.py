"""Shared pacing: calls-per-second buckets of trunks and campaigns kept in the database,
so every worker draws from the same budget.

Revision ID: 0004_shared_pacing
Revises: 0003_scripts
Create Date: 2026-11-27 16:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_shared_pacing"
down_revision = "0003_scripts"
branch_labels = None
depends_on = None

TABLES = ("dialer_trunk", "dialer_campaign")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("pace_tokens", sa.Float(), nullable=True))
            batch.add_column(sa.Column("pace_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("pace_at")
            batch.drop_column("pace_tokens")
