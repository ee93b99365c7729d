"""Minute ledger: accounts, balances, entries, packages.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "billing_account",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "billing_balance",
        sa.Column(
            "account_id", sa.Integer(), sa.ForeignKey("billing_account.id"), primary_key=True
        ),
        sa.Column("counter", sa.String(16), primary_key=True),
        sa.Column("balance_seconds", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "billing_entry",
        sa.Column("id", ID, primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("billing_account.id"), nullable=False),
        sa.Column("counter", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("call_id", sa.String(128)),
        sa.Column("increment", sa.Integer()),
        sa.Column("campaign", sa.String(128)),
        sa.Column("contact", sa.String(64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_billing_entry_key"),
    )
    op.create_index("ix_billing_entry_account_time", "billing_entry", ["account_id", "created_at"])
    op.create_table(
        "billing_package",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("billing_account.id"), nullable=False),
        sa.Column("counter", sa.String(16), nullable=False),
        sa.Column("minutes", sa.Integer(), nullable=False),
        sa.Column(
            "entry_id",
            sa.BigInteger(),
            sa.ForeignKey("billing_entry.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("bought_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("billing_package")
    op.drop_index("ix_billing_entry_account_time", table_name="billing_entry")
    op.drop_table("billing_entry")
    op.drop_table("billing_balance")
    op.drop_table("billing_account")
