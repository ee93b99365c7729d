"""Dialer tables: trunks, campaigns, contacts, call records, do-not-call list.

Revision ID: 0002_dialer
Revises: 0001_ledger
Create Date: 2026-11-27 11:02:10.146231
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_dialer"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "dialer_dnc",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account", "phone", name="uq_dialer_dnc"),
    )
    op.create_table(
        "dialer_trunk",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("uri", sa.String(length=255), nullable=False),
        sa.Column("outbound_proxy", sa.String(length=255), nullable=True),
        sa.Column("username", sa.String(length=128), nullable=True),
        sa.Column("password", sa.String(length=255), nullable=True),
        sa.Column("registers", sa.Boolean(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("cps", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("dialer_trunk", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dialer_trunk_account"), ["account"], unique=False)

    op.create_table(
        "dialer_campaign",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("trunk_id", sa.Integer(), nullable=False),
        sa.Column("script", sa.String(length=500), nullable=True),
        sa.Column("caller_id", sa.String(length=32), nullable=True),
        sa.Column("window", sa.String(length=16), nullable=False),
        sa.Column("days", sa.String(length=32), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("cps", sa.Float(), nullable=False),
        sa.Column("retry", sa.JSON(), nullable=False),
        sa.Column("agent_uri", sa.String(length=255), nullable=True),
        sa.Column("max_call_seconds", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("pause_reason", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trunk_id"],
            ["dialer_trunk.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("dialer_campaign", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dialer_campaign_account"), ["account"], unique=False)

    op.create_table(
        "dialer_contact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("last_disposition", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["dialer_campaign.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "phone", name="uq_dialer_contact_phone"),
    )
    with op.batch_alter_table("dialer_contact", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dialer_contact_due", ["campaign_id", "state", "next_attempt_at"], unique=False
        )

    op.create_table(
        "dialer_call",
        sa.Column("call_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("phone", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("trunk_kind", sa.String(length=16), nullable=False),
        sa.Column("line", sa.String(length=32), nullable=True),
        sa.Column("invite_at", sa.DateTime(), nullable=True),
        sa.Column("ringing_at", sa.DateTime(), nullable=True),
        sa.Column("answered_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("sip_status", sa.Integer(), nullable=True),
        sa.Column("disposition", sa.String(length=32), nullable=True),
        sa.Column("hangup_by", sa.String(length=16), nullable=True),
        sa.Column("amd_reason", sa.String(length=255), nullable=True),
        sa.Column("agent_seconds", sa.Float(), nullable=False),
        sa.Column("billed_telephony_seconds", sa.Integer(), nullable=False),
        sa.Column("billed_speech_seconds", sa.Integer(), nullable=False),
        sa.Column("segments", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["dialer_campaign.id"],
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["dialer_contact.id"],
        ),
        sa.PrimaryKeyConstraint("call_id"),
    )
    with op.batch_alter_table("dialer_call", schema=None) as batch_op:
        batch_op.create_index("ix_dialer_call_campaign", ["campaign_id", "invite_at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("dialer_call", schema=None) as batch_op:
        batch_op.drop_index("ix_dialer_call_campaign")

    op.drop_table("dialer_call")
    with op.batch_alter_table("dialer_contact", schema=None) as batch_op:
        batch_op.drop_index("ix_dialer_contact_due")

    op.drop_table("dialer_contact")
    with op.batch_alter_table("dialer_campaign", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dialer_campaign_account"))

    op.drop_table("dialer_campaign")
    with op.batch_alter_table("dialer_trunk", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dialer_trunk_account"))

    op.drop_table("dialer_trunk")
    op.drop_table("dialer_dnc")
