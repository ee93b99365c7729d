"""Claims: which contacts a worker may dial now, in one transaction with the balance gate
and the limits every worker shares (trunk channels, campaign concurrency, calls per
second). The contact rows move as dialer.contact_state says (CLAIM, DEFER, REFUSE)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from billing.ledger import account_id, gate
from billing.tariff import Tariff, TrunkKind
from dialer.campaign_state import CampaignState
from dialer.contact_state import ContactStep
from dialer.pacing import shared_tokens
from dialer.retry import Disposition
from dialer.store import (
    CAMPAIGN,
    CONTACT,
    DNC,
    IN_PROGRESS,
    TRUNK,
    contact_values,
    in_state,
    number_refusal,
)


@dataclass(frozen=True)
class Claimed:
    contact_id: int
    phone: str
    timezone: str
    attempt: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ClaimResult:
    contacts: list[Claimed]
    gate_open: bool
    gate_reason: str = ""
    #: (contact id, phone, why) finished without a call: the number policy refused them
    refused: list[tuple[int, str, str]] = field(default_factory=list)


def claim_contacts(
    conn: Connection,
    campaign: Any,
    trunk_kind: TrunkKind,
    tariff: Tariff,
    worker: str,
    now: datetime,
    limit: int,
    lease_seconds: int,
    is_open: Any,
    next_open: Any,
) -> ClaimResult:
    """Claim up to ``limit`` due contacts, in one transaction with the balance gate.

    The gate is read first: when it says no, nothing is claimed (and the caller pauses
    the account's campaigns), so no INVITE can leave after the exhausting debit commits.
    Contacts outside their calling window get ``next_attempt_at`` moved to the window's
    next opening; DNC numbers are finished as rejected without a call.
    """
    # the trunk and campaign rows first (claims on one trunk take turns), then the gate:
    # read as late as possible, so a debit another worker just committed is seen
    budget = SharedBudget.read(conn, campaign.id, now)
    decision = gate(conn, account_id(conn, campaign.account), trunk_kind, tariff)
    if not decision.allowed:
        return ClaimResult([], False, decision.reason())
    limit = min(limit, budget.calls)
    if limit <= 0:
        return ClaimResult([], True)
    due = _due_contacts(conn, campaign.id, now, limit * 4 + 10)
    ready, refusals = _sort_out(conn, campaign, due, is_open, next_open)
    claimed: list[Claimed] = []
    until = now + timedelta(seconds=lease_seconds)
    for row in sorted(_lock_claimable(conn, ready, limit), key=lambda r: ready.index(r)):
        conn.execute(
            update(CONTACT)
            .where(CONTACT.c.id == row.id)
            .values(contact_values(ContactStep.CLAIM, worker=worker, until=until))
        )
        claimed.append(
            Claimed(row.id, row.phone, row.timezone, row.attempts + 1, dict(row.attributes or {}))
        )
    budget.spend(conn, len(claimed))
    return ClaimResult(claimed, True, refused=refusals)


def _due_contacts(conn: Connection, campaign_id: int, now: datetime, most: int) -> list[Any]:
    """Pending contacts whose next attempt has come, oldest first. Only pending ones: an
    in-progress contact whose lease ran out (its worker died) goes through
    reconcile_abandoned first, which knows whether its call was answered."""
    return list(
        conn.execute(
            select(CONTACT)
            .where(
                CONTACT.c.campaign_id == campaign_id,
                in_state(ContactStep.CLAIM),
                or_(CONTACT.c.next_attempt_at.is_(None), CONTACT.c.next_attempt_at <= now),
            )
            .order_by(
                CONTACT.c.next_attempt_at.is_not(None), CONTACT.c.next_attempt_at, CONTACT.c.id
            )
            .limit(most)
        ).all()
    )


def _lock_claimable(conn: Connection, rows: list[Any], most: int | None = None) -> list[Any]:
    """The rows still claimable that no other transaction holds (PostgreSQL: SKIP LOCKED;
    SQLite: BEGIN IMMEDIATE already made this the only writer)."""
    if not rows:
        return []
    stmt = select(CONTACT.c.id).where(
        CONTACT.c.id.in_([r.id for r in rows]), in_state(ContactStep.CLAIM)
    )
    if most is not None:
        stmt = stmt.order_by(CONTACT.c.id).limit(most)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    held = set(conn.execute(stmt).scalars())
    return [r for r in rows if r.id in held]


def _sort_out(
    conn: Connection, campaign: Any, due: list[Any], is_open: Any, next_open: Any
) -> tuple[list[Any], list[tuple[int, str, str]]]:
    """Of the due contacts: finish the ones never to be dialled (the do-not-call list,
    the number policy as it is now: one tightened after the import holds before the
    dial), defer the ones outside their calling window; the rest are ready."""
    blocked = set(
        conn.execute(
            select(DNC.c.phone).where(
                DNC.c.account == campaign.account, DNC.c.phone.in_([r.phone for r in due])
            )
        ).scalars()
    )
    dnc = [r for r in due if r.phone in blocked]
    check = number_refusal(conn, campaign.account, campaign.trunk_id)
    why = {r.id: check(r.phone) for r in due if r.phone not in blocked}
    refused = [r for r in due if why.get(r.id)]
    closed = [r for r in due if r.id in why and not why[r.id] and not is_open(r.timezone)]
    ready = [r for r in due if r.id in why and not why[r.id] and is_open(r.timezone)]
    refuse = contact_values(ContactStep.REFUSE)
    for row in _lock_claimable(conn, dnc):
        conn.execute(
            update(CONTACT)
            .where(CONTACT.c.id == row.id)
            .values(refuse | {"last_disposition": Disposition.DNC.value})
        )
    refusals: list[tuple[int, str, str]] = []
    for row in _lock_claimable(conn, refused):
        reason = str(why[row.id])
        conn.execute(
            update(CONTACT)
            .where(CONTACT.c.id == row.id)
            .values(refuse | {"last_disposition": Disposition.NUMBER_POLICY.value,
                              "last_reason": reason[:255]})
        )  # fmt: skip
        refusals.append((row.id, row.phone, reason))
    for row in _lock_claimable(conn, closed):
        conn.execute(
            update(CONTACT)
            .where(CONTACT.c.id == row.id)
            .values(
                contact_values(ContactStep.DEFER) | {"next_attempt_at": next_open(row.timezone)}
            )
        )
    return ready, refusals


@dataclass(frozen=True)
class SharedBudget:
    """What one claim may dial under the limits all workers share, read with the trunk
    and campaign rows locked (PostgreSQL: FOR UPDATE, so claims on one trunk take turns;
    SQLite: BEGIN IMMEDIATE already made this the only writer): the trunk's channels and
    the campaign's max_concurrent minus the contacts in progress anywhere (claimed and
    not yet released: calls up, about to be dialled, or left by a dead worker until it
    is reconciled), and the calls-per-second buckets of both rows."""

    trunk_id: int
    campaign_id: int
    now: datetime
    trunk_tokens: float
    trunk_at: datetime
    campaign_tokens: float
    campaign_at: datetime
    calls: int

    @classmethod
    def read(cls, conn: Connection, campaign_id: int, now: datetime) -> SharedBudget:
        pacing = (CAMPAIGN.c.cps, CAMPAIGN.c.pace_tokens, CAMPAIGN.c.pace_at)
        campaign_q = select(CAMPAIGN.c.trunk_id, CAMPAIGN.c.state, CAMPAIGN.c.max_concurrent,
                            *pacing).where(CAMPAIGN.c.id == campaign_id)  # fmt: skip
        trunk_id = conn.execute(campaign_q).one().trunk_id
        trunk_q = select(TRUNK.c.channels, TRUNK.c.cps, TRUNK.c.pace_tokens,
                         TRUNK.c.pace_at).where(TRUNK.c.id == trunk_id)  # fmt: skip
        if conn.dialect.name == "postgresql":  # lock order: trunk, then campaign
            trunk_q, campaign_q = trunk_q.with_for_update(), campaign_q.with_for_update()
        trunk = conn.execute(trunk_q).one()
        campaign = conn.execute(campaign_q).one()
        up = select(func.count()).where(CONTACT.c.state == IN_PROGRESS)
        trunk_up = conn.execute(
            up.join(CAMPAIGN, CAMPAIGN.c.id == CONTACT.c.campaign_id).where(
                CAMPAIGN.c.trunk_id == trunk_id
            )
        ).scalar_one()
        campaign_up = conn.execute(up.where(CONTACT.c.campaign_id == campaign_id)).scalar_one()
        trunk_tokens = shared_tokens(trunk.pace_tokens, since(trunk.pace_at, now), trunk.cps)
        campaign_tokens = shared_tokens(
            campaign.pace_tokens, since(campaign.pace_at, now), campaign.cps
        )
        calls = min(
            trunk.channels - int(trunk_up),
            campaign.max_concurrent - int(campaign_up),
            math.floor(trunk_tokens + 1e-9),
            math.floor(campaign_tokens + 1e-9),
        )
        if campaign.state != CampaignState.RUNNING.value:  # paused since the worker last looked
            calls = 0
        return cls(
            trunk_id, campaign_id, now,
            trunk_tokens, max(now, trunk.pace_at or now),
            campaign_tokens, max(now, campaign.pace_at or now),
            max(0, calls),
        )  # fmt: skip

    def spend(self, conn: Connection, calls: int) -> None:
        """Take ``calls`` tokens from both buckets (only what was claimed is spent)."""
        if calls <= 0:
            return  # the buckets refill from their last write: nothing to store
        conn.execute(
            update(TRUNK).where(TRUNK.c.id == self.trunk_id)
            .values(pace_tokens=self.trunk_tokens - calls, pace_at=self.trunk_at)
        )  # fmt: skip
        conn.execute(
            update(CAMPAIGN).where(CAMPAIGN.c.id == self.campaign_id)
            .values(pace_tokens=self.campaign_tokens - calls, pace_at=self.campaign_at)
        )  # fmt: skip


def since(at: datetime | None, now: datetime) -> float:
    return 0.0 if at is None else (now - at).total_seconds()
