"""Contact claims: the balance gate in the same transaction, leases, windows, DNC."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter, TrunkKind
from dialer import store
from dialer.campaign_state import Action
from dialer.campaigns import CampaignSpec, add_trunk, change_state, create_campaign, import_contacts

NOW = datetime(2026, 11, 27, 12, 0)


async def prepared(db_url: str, tmp_path: Path, phones: int = 6) -> tuple[Database, Ledger]:
    database = Database(db_url)
    ledger = Ledger(database)
    await ledger.create_account("acme")
    for counter in Counter:
        await ledger.buy_package("acme", counter, 1)
    await add_trunk(database, name="main", account="acme", kind="platform", uri="sip:127.0.0.1")
    await create_campaign(database, CampaignSpec(name="spring", account="acme", trunk="main"))
    csv = tmp_path / "c.csv"
    csv.write_text("phone\n" + "\n".join(f"+1415555{4000 + n}" for n in range(phones)) + "\n")
    await import_contacts(database, "spring", csv)
    await change_state(database, ledger.tariff, "spring", Action.START)
    return database, ledger


def claimer(ledger: Ledger, worker: str, limit: int, now: datetime = NOW,
            open_zone: Any = lambda zone: True) -> Any:  # fmt: skip
    def claim(conn: Connection) -> store.ClaimResult:
        campaign = store.campaign_by_name(conn, "spring")
        return store.claim_contacts(conn, campaign, TrunkKind.PLATFORM, ledger.tariff, worker,
                                    now, limit, 60, open_zone,
                                    lambda zone: now + timedelta(hours=3))  # fmt: skip

    return claim


async def test_leases_keep_two_workers_apart(db_url: str, tmp_path: Path) -> None:
    database, ledger = await prepared(db_url, tmp_path)
    try:
        first, second = await asyncio.gather(
            database.run(claimer(ledger, "w1", 3)), database.run(claimer(ledger, "w2", 3))
        )
        ids1 = {c.contact_id for c in first.contacts}
        ids2 = {c.contact_id for c in second.contacts}
        assert len(ids1) == len(ids2) == 3 and not ids1 & ids2
        assert not (await database.run(claimer(ledger, "w3", 3))).contacts  # all leased
        later = NOW + timedelta(seconds=61)  # w1 and w2 died: their leases ran out
        again = await database.run(claimer(ledger, "w3", 10, later))
        assert {c.contact_id for c in again.contacts} == ids1 | ids2
        assert all(c.attempt == 2 for c in again.contacts)
    finally:
        await database.dispose()


async def test_the_gate_is_read_in_the_claim_transaction(db_url: str, tmp_path: Path) -> None:
    database, ledger = await prepared(db_url, tmp_path)
    try:
        for n in range(1, 5):
            await ledger.debit("acme", Counter.SPEECH, 15, call_id="c", increment=n)
        result = await database.run(claimer(ledger, "w1", 3))
        assert not result.gate_open and not result.contacts
        assert "speech balance is 0 s" in result.gate_reason
    finally:
        await database.dispose()


async def test_closed_windows_and_dnc(db_url: str, tmp_path: Path) -> None:
    database, ledger = await prepared(db_url, tmp_path, phones=3)
    try:
        await database.run(lambda c: store.add_dnc(c, "acme", ["+14155554000"], NOW))
        closed = await database.run(claimer(ledger, "w1", 5, open_zone=lambda zone: False))
        assert not closed.contacts
        rows = await database.run(
            lambda c: c.execute(store.CONTACT.select().order_by(store.CONTACT.c.id)).all(),
            write=False,
        )
        assert rows[0].state == "done" and rows[0].last_disposition == "dnc"
        assert all(r.next_attempt_at == NOW + timedelta(hours=3) for r in rows[1:])
        assert not (await database.run(claimer(ledger, "w1", 5))).contacts  # not due yet
        due = await database.run(claimer(ledger, "w1", 5, NOW + timedelta(hours=3)))
        assert len(due.contacts) == 2
    finally:
        await database.dispose()
