"""Call scripts: the campaign keeps the script's text (validated at create).

Revision ID: 0003_scripts
Revises: 0002_dialer
Create Date: 2026-11-27 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_scripts"
down_revision = "0002_dialer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dialer_campaign") as batch:
        batch.add_column(sa.Column("script_text", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dialer_campaign") as batch:
        batch.drop_column("script_text")
