"""Number policies (accounts, trunks), why a campaign is blocked and why a
contact was finished without a call, script prompts kept with the campaign, top-up
references scoped per account.

Top-up references: a package's idempotency key was ``package:REF`` for every account,
so one account's reference blocked another's purchase. It is now
``package:ACCOUNT_ID:REF`` (the key stays unique on its own: debits keep their global
call-id keys); existing package keys are rewritten so a retried payment with an old
reference is still recognised.

Revision ID: 0005_number_policy
Revises: 0004_shared_pacing
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_number_policy"
down_revision = "0004_shared_pacing"
branch_labels = None
depends_on = None

PREFIX = "package:"
ENTRY = sa.table(
    "billing_entry",
    sa.column("id", sa.BigInteger()),
    sa.column("account_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("idempotency_key", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("dialer_trunk") as batch:
        batch.add_column(sa.Column("allow_countries", sa.String(1200), nullable=True))
        batch.add_column(sa.Column("allow_types", sa.String(255), nullable=True))
    with op.batch_alter_table("dialer_campaign") as batch:
        batch.add_column(sa.Column("blocked_reason", sa.String(255), nullable=True))
    with op.batch_alter_table("dialer_contact") as batch:
        batch.add_column(sa.Column("last_reason", sa.String(255), nullable=True))
    op.create_table(
        "dialer_account_policy",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("allow_countries", sa.String(1200), nullable=True),
        sa.Column("allow_types", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "dialer_campaign_prompt",
        sa.Column(
            "campaign_id", sa.Integer(), sa.ForeignKey("dialer_campaign.id"), primary_key=True
        ),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
    )
    _rewrite_package_keys(scoped=True)


def downgrade() -> None:
    _rewrite_package_keys(scoped=False)
    op.drop_table("dialer_campaign_prompt")
    op.drop_table("dialer_account_policy")
    with op.batch_alter_table("dialer_contact") as batch:
        batch.drop_column("last_reason")
    with op.batch_alter_table("dialer_campaign") as batch:
        batch.drop_column("blocked_reason")
    with op.batch_alter_table("dialer_trunk") as batch:
        batch.drop_column("allow_types")
        batch.drop_column("allow_countries")


def _rewrite_package_keys(*, scoped: bool) -> None:
    """``package:REF`` <-> ``package:ACCOUNT_ID:REF``. Going down, a reference two
    accounts both used keeps its scoped key for all but the first (the old schema
    cannot hold it twice; the purchase stays, only its replay is no longer known)."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(ENTRY.c.id, ENTRY.c.account_id, ENTRY.c.idempotency_key)
        .where(ENTRY.c.kind == "package", ENTRY.c.idempotency_key.startswith(PREFIX))
        .order_by(ENTRY.c.id)
    ).all()
    taken = {row.idempotency_key for row in rows}
    moves: dict[int, str] = {}
    for entry_id, account_id, key in rows:
        scope = f"{PREFIX}{account_id}:"
        if scoped:
            moves[entry_id] = scope + key[len(PREFIX) :]
        elif key.startswith(scope) and PREFIX + key[len(scope) :] not in taken:
            moves[entry_id] = PREFIX + key[len(scope) :]
            taken.add(moves[entry_id])
    # through a temporary key each: a new key may be another row's old one ("1:X")
    for step in ("temporary", "final"):
        for entry_id, new in moves.items():
            key = f"migrating:{entry_id}" if step == "temporary" else new
            conn.execute(sa.update(ENTRY).where(ENTRY.c.id == entry_id).values(idempotency_key=key))
