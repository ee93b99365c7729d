"""The dialer's SQL: trunks, campaigns, contacts with leases, call records, DNC.

Transaction steps are plain functions of a Connection (run by billing.storage.Database,
like the ledger's). The contact claim and the balance gate share one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from billing.ledger import account_id, call_debits
from billing.tariff import Counter
from dialer.call import next_attempt
from dialer.campaign_state import LIVE_STATES, CampaignState, Status
from dialer.contact_state import ContactState, ContactStep, Lease, after_call, move
from dialer.errors import DialerError
from dialer.models import (
    AccountPolicy,
    CallRecord,
    Campaign,
    CampaignPrompt,
    Contact,
    DncEntry,
    Trunk,
)
from dialer.number_policy import NumberPolicy, refusal
from dialer.retry import Disposition, RetryPolicy

D = Disposition

TRUNK = Trunk.__table__  # type: ignore[attr-defined]
CAMPAIGN = Campaign.__table__  # type: ignore[attr-defined]
CONTACT = Contact.__table__  # type: ignore[attr-defined]
CALL = CallRecord.__table__  # type: ignore[attr-defined]
DNC = DncEntry.__table__  # type: ignore[attr-defined]
POLICY = AccountPolicy.__table__  # type: ignore[attr-defined]
PROMPT = CampaignPrompt.__table__  # type: ignore[attr-defined]

PENDING, IN_PROGRESS, DONE = ContactState.PENDING, ContactState.IN_PROGRESS, ContactState.DONE


class UnknownName(DialerError):
    pass


def trunk_by_name(conn: Connection, name: str) -> Any:
    row = conn.execute(select(TRUNK).where(TRUNK.c.name == name)).first()
    if row is None:
        raise UnknownName(f"unknown trunk {name!r}")
    return row


def trunk_by_id(conn: Connection, trunk_id: int) -> Any:
    return conn.execute(select(TRUNK).where(TRUNK.c.id == trunk_id)).one()


def campaign_by_name(conn: Connection, name: str, *, lock: bool = False) -> Any:
    """The campaign row; ``lock``: for a read-then-write of its state (PostgreSQL: FOR
    UPDATE, so two changes never overwrite each other)."""
    stmt = select(CAMPAIGN).where(CAMPAIGN.c.name == name)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        raise UnknownName(f"unknown campaign {name!r}")
    return row


def insert_row(conn: Connection, table: Any, values: dict[str, Any], what: str) -> int:
    try:
        with conn.begin_nested():
            return int(
                conn.execute(insert(table).values(values).returning(table.c[0])).scalar_one()
            )
    except IntegrityError:
        raise DialerError(f"{what} already exists") from None


def set_status(conn: Connection, campaign_id: int, status: Status, now: datetime) -> None:
    conn.execute(
        update(CAMPAIGN)
        .where(CAMPAIGN.c.id == campaign_id)
        .values(
            state=status.state.value,
            pause_reason=status.pause_reason.value if status.pause_reason else None,
            updated_at=now,
        )
    )


def set_blocked(conn: Connection, campaign_id: int, reason: str | None) -> None:
    """Why a running campaign cannot dial now (None: it can)."""
    conn.execute(
        update(CAMPAIGN)
        .where(CAMPAIGN.c.id == campaign_id)
        .values(blocked_reason=None if reason is None else reason[:255])
    )


# -- number policies ----------------------------------------------------------------------


def account_policy(conn: Connection, account: str) -> NumberPolicy:
    row = conn.execute(select(POLICY).where(POLICY.c.account == account)).first()
    if row is None:
        return NumberPolicy()
    return NumberPolicy.parse(row.allow_countries, row.allow_types)


def set_account_policy(conn: Connection, account: str, policy: NumberPolicy, now: datetime) -> None:
    account_id(conn, account)
    values = {"allow_countries": policy.countries_text, "allow_types": policy.types_text,
              "updated_at": now}  # fmt: skip
    done = conn.execute(update(POLICY).where(POLICY.c.account == account).values(values))
    if not done.rowcount:
        conn.execute(insert(POLICY).values(account=account, **values))


def trunk_policy(trunk: Any) -> NumberPolicy:
    return NumberPolicy.parse(trunk.allow_countries, trunk.allow_types)


def set_trunk_policy(conn: Connection, name: str, policy: NumberPolicy) -> None:
    trunk_by_name(conn, name)
    conn.execute(
        update(TRUNK)
        .where(TRUNK.c.name == name)
        .values(allow_countries=policy.countries_text, allow_types=policy.types_text)
    )


def number_refusal(conn: Connection, account: str, trunk_id: int) -> Any:
    """The account's and the trunk's policies, read now, as one check: phone -> why it
    may not be dialled, or None."""
    trunk = trunk_by_id(conn, trunk_id)
    policies = [(f"account {account!r}", account_policy(conn, account)),
                (f"trunk {trunk.name!r}", trunk_policy(trunk))]  # fmt: skip

    def check(phone: str) -> str | None:
        return refusal(phone, policies)

    return check


# -- script prompts -----------------------------------------------------------------------


def insert_prompts(
    conn: Connection, campaign_id: int, prompts: dict[str, tuple[str, bytes]]
) -> None:
    """name -> (sha256, content), as validated at create."""
    if prompts:
        conn.execute(
            insert(PROMPT),
            [{"campaign_id": campaign_id, "name": name, "sha256": sha, "content": data}
             for name, (sha, data) in sorted(prompts.items())],
        )  # fmt: skip


def campaign_prompts(conn: Connection, campaign_id: int) -> dict[str, tuple[str, bytes]]:
    rows = conn.execute(
        select(PROMPT.c.name, PROMPT.c.sha256, PROMPT.c.content).where(
            PROMPT.c.campaign_id == campaign_id
        )
    )
    return {r.name: (r.sha256, bytes(r.content)) for r in rows}


MAX_TRUNKS_PER_LINE = 7  # pjsua's 8 accounts per process, one kept for inbound calls


def trunks_in_use(conn: Connection) -> list[Any]:
    """Trunks of the campaigns that can still dial (the ones a worker's lines must carry)."""
    used = select(CAMPAIGN.c.trunk_id).where(CAMPAIGN.c.state.in_([s.value for s in LIVE_STATES]))
    rows = list(conn.execute(select(TRUNK).where(TRUNK.c.id.in_(used)).order_by(TRUNK.c.id)).all())
    if len(rows) > MAX_TRUNKS_PER_LINE:
        names = ", ".join(r.name for r in rows)
        raise DialerError(
            f"{len(rows)} trunks are in use ({names}); a worker carries at most "
            f"{MAX_TRUNKS_PER_LINE}: stop campaigns or run a worker per group of trunks"
        )
    return rows


def running_campaigns(conn: Connection) -> Sequence[Any]:
    return conn.execute(
        select(CAMPAIGN, TRUNK.c.kind.label("trunk_kind"), TRUNK.c.name.label("trunk_name"))
        .join(TRUNK, TRUNK.c.id == CAMPAIGN.c.trunk_id)
        .where(CAMPAIGN.c.state == CampaignState.RUNNING.value)
        .order_by(CAMPAIGN.c.id)
    ).all()


def trunks(conn: Connection) -> Sequence[Any]:
    """Every trunk, by name (its password is in the row: never print it)."""
    return conn.execute(select(TRUNK).order_by(TRUNK.c.name)).all()


def campaigns(conn: Connection) -> Sequence[Any]:
    """Every campaign, by name."""
    return conn.execute(select(CAMPAIGN).order_by(CAMPAIGN.c.name)).all()


def campaign_states(conn: Connection) -> Sequence[Any]:
    """Every campaign's name, account, state and pause reason (event diffs)."""
    return conn.execute(
        select(CAMPAIGN.c.name, CAMPAIGN.c.account, CAMPAIGN.c.state, CAMPAIGN.c.pause_reason)
    ).all()


def campaigns_of_account(conn: Connection, account: str, *, lock: bool = False) -> Sequence[Any]:
    """``lock``: rows locked in id order (one order for every transaction: no deadlock)."""
    stmt = select(CAMPAIGN).where(CAMPAIGN.c.account == account).order_by(CAMPAIGN.c.id)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return conn.execute(stmt).all()


# -- contacts -----------------------------------------------------------------------------


def contact_values(
    step: ContactStep, *, worker: str | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """The columns a lifecycle step (dialer.contact_state) sets; the caller's WHERE also
    requires ``move(step).before`` (use ``in_state``)."""
    m = move(step)
    values: dict[str, Any] = {"state": m.after.value}
    if m.attempts:
        values["attempts"] = CONTACT.c.attempts + m.attempts
    if m.lease is Lease.TAKE:
        values |= {"lease_owner": worker, "lease_until": until}
    elif m.lease is Lease.KEEP:
        values["lease_until"] = until
    else:  # leaving in_progress, or never in it: no lease
        values |= {"lease_owner": None, "lease_until": None}
    return values


def in_state(step: ContactStep) -> Any:
    return CONTACT.c.state == move(step).before.value


def insert_contacts(conn: Connection, campaign_id: int, rows: list[dict[str, Any]]) -> int:
    """Insert new contacts; numbers already in the campaign are skipped. Returns inserted."""
    existing = set(
        conn.execute(select(CONTACT.c.phone).where(CONTACT.c.campaign_id == campaign_id)).scalars()
    )
    base = {"campaign_id": campaign_id, "state": PENDING, "attempts": 0}
    fresh = [base | r for r in rows if r["phone"] not in existing]
    if fresh:
        conn.execute(insert(CONTACT), fresh)
    return len(fresh)


def release_contact(
    conn: Connection,
    contact_id: int,
    disposition: str,
    next_attempt: datetime | None,
    worker: str,
) -> bool:
    """Finish or re-queue a contact this worker holds. False: the lease was no longer
    ours (recovery settled it while we were cut off): it is left as it is."""
    values = contact_values(after_call(next_attempt)) | {"last_disposition": disposition}
    if next_attempt is not None:
        values["next_attempt_at"] = next_attempt
    done = conn.execute(update(CONTACT).where(held_by(contact_id, worker)).values(values))
    return bool(done.rowcount)


def held_by(contact_id: int, worker: str) -> Any:
    return and_(CONTACT.c.id == contact_id, CONTACT.c.state == IN_PROGRESS,
                CONTACT.c.lease_owner == worker)  # fmt: skip


def unclaim(conn: Connection, contact_id: int, worker: str) -> None:
    """Give a claimed contact back untouched (no call was placed): the attempt is undone."""
    conn.execute(
        update(CONTACT)
        .where(held_by(contact_id, worker))
        .values(contact_values(ContactStep.GIVE_BACK))
    )


def forget_call(conn: Connection, call_id: str) -> None:
    """The CDR written before an INVITE the line then refused: no call was placed."""
    conn.execute(CALL.delete().where(CALL.c.call_id == call_id, CALL.c.answered_at.is_(None)))


def reconcile_abandoned(
    conn: Connection, now: datetime, worker: str, *, exclude: str | None = None
) -> list[dict[str, Any]]:
    """Calls left in progress by a dead worker (lease run out, or claimed under this
    worker's own id by its previous run): each open CDR is closed as `interrupted`,
    billed what the ledger holds for it (debits are taken in advance and persisted:
    nothing is charged again, nothing forgotten); the contact is done if its call was
    answered, else pending again (a claim that never dialled gives its attempt back)."""
    abandoned = or_(CONTACT.c.lease_until < now, CONTACT.c.lease_owner == worker)
    stmt = select(CONTACT.c.id, CONTACT.c.lease_owner).where(
        CONTACT.c.state == IN_PROGRESS, abandoned
    )
    if exclude is not None:  # a live worker's own contacts (see Worker._recover)
        stmt = stmt.where(CONTACT.c.lease_owner != exclude)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)  # two recovering workers: one each
    settled: list[dict[str, Any]] = []
    for contact_id, owner in conn.execute(stmt).all():
        calls = conn.execute(
            select(CALL.c.call_id, CALL.c.answered_at).where(
                CALL.c.contact_id == contact_id, CALL.c.ended_at.is_(None)
            )
        ).all()
        debits = {c.call_id: call_debits(conn, c.call_id) for c in calls}
        # a call with debits was answered even if its CDR never said so (the debit at the
        # answer commits before the CDR's answered_at is written)
        answered = any(c.answered_at is not None or any(debits[c.call_id].values())
                       for c in calls)  # fmt: skip
        for call in calls:
            billed = debits[call.call_id]
            conn.execute(
                update(CALL).where(CALL.c.call_id == call.call_id).values(
                    ended_at=now, disposition=Disposition.INTERRUPTED.value,
                    hangup_by="recovery",
                    billed_telephony_seconds=billed[Counter.TELEPHONY],
                    billed_speech_seconds=billed[Counter.SPEECH],
                )
            )  # fmt: skip
            settled.append({"call_id": call.call_id, "contact_id": contact_id,
                            "owner": owner, "answered": call.answered_at is not None
                            or any(billed.values()),
                            "billed": {c.value: s for c, s in billed.items()}})  # fmt: skip
        if calls:  # the call's own rule (dialer.call), as if its line had died
            contact = conn.execute(
                select(CONTACT.c.attempts, CAMPAIGN.c.retry)
                .join(CAMPAIGN, CAMPAIGN.c.id == CONTACT.c.campaign_id)
                .where(CONTACT.c.id == contact_id)
            ).one()
            policy = RetryPolicy.from_json(contact.retry)
            retry_at = next_attempt(policy, Disposition.INTERRUPTED, contact.attempts, answered,
                                    now)  # fmt: skip
            values = contact_values(after_call(retry_at))
            values["last_disposition"] = Disposition.INTERRUPTED.value
            if retry_at is not None:
                values["next_attempt_at"] = retry_at
        else:  # claimed, never dialled
            values = contact_values(ContactStep.GIVE_BACK)
        conn.execute(update(CONTACT).where(CONTACT.c.id == contact_id).values(values))
    return settled


def settle_call(
    conn: Connection,
    call_id: str,
    contact_id: int,
    worker: str,
    now: datetime,
    retry: dict[str, Any],
) -> dict[str, int]:
    """One call whose session failed, settled at once as recovery would: its CDR closed
    `interrupted`, billed what the ledger holds; its contact (if this worker still holds
    it) done when the call was answered, else retried per the campaign's policy.
    Returns the billed seconds per counter."""
    call = conn.execute(
        select(CALL.c.answered_at, CALL.c.ended_at).where(CALL.c.call_id == call_id)
    ).first()
    billed = call_debits(conn, call_id)
    answered = any(billed.values()) or (call is not None and call.answered_at is not None)
    if call is not None and call.ended_at is None:
        conn.execute(
            update(CALL).where(CALL.c.call_id == call_id).values(
                ended_at=now, disposition=Disposition.INTERRUPTED.value, hangup_by="worker",
                billed_telephony_seconds=billed[Counter.TELEPHONY],
                billed_speech_seconds=billed[Counter.SPEECH],
            )
        )  # fmt: skip
    attempts = conn.execute(
        select(CONTACT.c.attempts).where(held_by(contact_id, worker))
    ).scalar_one_or_none()
    if attempts is not None:
        retry_at = next_attempt(RetryPolicy.from_json(retry), Disposition.INTERRUPTED, attempts,
                                answered, now)  # fmt: skip
        release_contact(conn, contact_id, Disposition.INTERRUPTED.value, retry_at, worker)
    return {c.value: s for c, s in billed.items()}


def extend_leases(conn: Connection, contact_ids: list[int], until: datetime, worker: str) -> None:
    if contact_ids:
        conn.execute(
            update(CONTACT)
            .where(CONTACT.c.id.in_(contact_ids), CONTACT.c.lease_owner == worker,
                   CONTACT.c.state == IN_PROGRESS)
            .values(contact_values(ContactStep.RENEW, until=until))
        )  # fmt: skip


def contact_counts(conn: Connection, campaign_id: int) -> dict[str, int]:
    rows = conn.execute(
        select(CONTACT.c.state, func.count())
        .where(CONTACT.c.campaign_id == campaign_id)
        .group_by(CONTACT.c.state)
    )
    counts = {PENDING: 0, IN_PROGRESS: 0, DONE: 0} | {state: int(n) for state, n in rows}
    counts["total"] = sum(counts[s] for s in (PENDING, IN_PROGRESS, DONE))
    return counts


def unfinished(conn: Connection, campaign_id: int) -> int:
    return int(
        conn.execute(
            select(func.count()).where(
                CONTACT.c.campaign_id == campaign_id, CONTACT.c.state != DONE
            )
        ).scalar_one()
    )


# -- call records -------------------------------------------------------------------------


def write_call(conn: Connection, values: dict[str, Any]) -> None:
    """Insert or update the CDR of a call (the call id is its key)."""
    exists = conn.execute(select(CALL.c.call_id).where(CALL.c.call_id == values["call_id"])).first()
    if exists:
        conn.execute(update(CALL).where(CALL.c.call_id == values["call_id"]).values(values))
    else:
        conn.execute(insert(CALL).values(values))


def call_counts(conn: Connection, campaign_id: int) -> dict[str, int]:
    """Calls by outcome; a call still up counts as answered once the callee answered."""
    outcome = case(
        (and_(CALL.c.disposition.is_(None), CALL.c.answered_at.is_not(None)), D.ANSWERED.value),
        else_=func.coalesce(CALL.c.disposition, "ringing"),
    )
    rows = conn.execute(
        select(outcome, func.count()).where(CALL.c.campaign_id == campaign_id).group_by(outcome)
    )
    by = {d: int(n) for d, n in rows}
    return {
        "placed": sum(by.values()),
        "answered": by.get(D.ANSWERED, 0),
        "answering_machine": by.get(D.ANSWERING_MACHINE, 0),
        "busy": by.get(D.BUSY, 0),
        "no_answer": by.get(D.NO_ANSWER, 0),
        "failed": sum(by.get(k, 0) for k in (D.FAILED, D.REJECTED, D.INTERRUPTED, D.CANCELLED)),
    }


def billed_totals(conn: Connection, campaign_id: int) -> dict[str, int]:
    row = conn.execute(
        select(
            func.coalesce(func.sum(CALL.c.billed_telephony_seconds), 0),
            func.coalesce(func.sum(CALL.c.billed_speech_seconds), 0),
        ).where(CALL.c.campaign_id == campaign_id)
    ).one()
    return {"telephony": int(row[0]), "speech": int(row[1])}


def calls_of(conn: Connection, campaign_id: int) -> Sequence[Any]:
    return conn.execute(
        select(CALL, CAMPAIGN.c.name.label("campaign"))
        .join(CAMPAIGN, CAMPAIGN.c.id == CALL.c.campaign_id)
        .where(CALL.c.campaign_id == campaign_id)
        .order_by(CALL.c.invite_at, CALL.c.call_id)
    ).all()


def add_dnc(conn: Connection, account: str, phones: list[str], now: datetime) -> int:
    existing = set(
        conn.execute(
            select(DNC.c.phone).where(DNC.c.account == account, DNC.c.phone.in_(phones))
        ).scalars()
    )
    fresh = [p for p in dict.fromkeys(phones) if p not in existing]
    if fresh:
        conn.execute(
            insert(DNC), [{"account": account, "phone": p, "added_at": now} for p in fresh]
        )
    return len(fresh)
