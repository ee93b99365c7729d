"""Workers announce themselves: one row per running worker, kept fresh by its heartbeat,
so a dead worker's calls are settled in seconds instead of when their leases run out.

Revision ID: 0006_workers
Revises: 0005_number_policy
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_workers"
down_revision = "0005_number_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dialer_worker",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("run", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("dead_after", sa.Float(), nullable=False),
        sa.Column("beats", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dialer_worker")
