"""Contact claims: the balance gate in the same transaction, leases, windows, DNC."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter, TrunkKind
from dialer import claims, store
from dialer.campaign_state import Action
from dialer.campaigns import CampaignSpec, add_trunk, change_state, create_campaign, import_contacts

NOW = datetime(2026, 11, 27, 12, 0)


async def prepared(
    db_url: str, tmp_path: Path, phones: int = 6, *, channels: int = 30, trunk_cps: float = 100,
    campaigns: tuple[str, ...] = ("spring",), max_concurrent: int = 30, cps: float = 100,
) -> tuple[Database, Ledger]:  # fmt: skip
    database = Database(db_url)
    ledger = Ledger(database)
    await ledger.create_account("acme")
    for counter in Counter:
        await ledger.buy_package("acme", counter, 1)
    await add_trunk(database, name="main", account="acme", kind="platform", uri="sip:127.0.0.1",
                    channels=channels, cps=trunk_cps)  # fmt: skip
    for n, name in enumerate(campaigns):
        spec = CampaignSpec(name=name, account="acme", trunk="main",
                            max_concurrent=max_concurrent, cps=cps)  # fmt: skip
        await create_campaign(database, spec)
        csv = tmp_path / f"{name}.csv"
        numbers = (f"+1415555{4000 + 100 * n + k}" for k in range(phones))
        csv.write_text("phone\n" + "\n".join(numbers) + "\n")
        await import_contacts(database, name, csv)
        await change_state(database, ledger.tariff, name, Action.START)
    return database, ledger


def claimer(ledger: Ledger, worker: str, limit: int, now: datetime = NOW,
            open_zone: Any = lambda zone: True, name: str = "spring") -> Any:  # fmt: skip
    def claim(conn: Connection) -> claims.ClaimResult:
        campaign = store.campaign_by_name(conn, name)
        return claims.claim_contacts(conn, campaign, TrunkKind.PLATFORM, ledger.tariff, worker,
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
        # never taken straight from a dead worker: first settled (was it answered?)
        assert len((await database.run(claimer(ledger, "w3", 10, later))).contacts) == 0
        settled = await database.run(lambda c: store.reconcile_abandoned(c, later, "w3"))
        assert settled == []  # no call had been placed for them: no CDR to close
        again = await database.run(claimer(ledger, "w3", 10, later))
        assert {c.contact_id for c in again.contacts} == ids1 | ids2
        assert all(c.attempt == 1 for c in again.contacts)  # the dead claims gave it back
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


async def test_calls_left_by_a_dead_worker_are_settled_once(db_url: str, tmp_path: Path) -> None:
    """Worker w1 dies with three calls up: one answered (two increments debited per
    counter, in advance), one still ringing, one that died between the debit at the
    answer and writing answered_at into its CDR. Recovery closes the CDRs as
    interrupted, bills exactly what was debited, never debits again, finishes the
    answered contacts (the debit proves the answer) and gives the ringing one back for
    another attempt after the campaign's retry delay."""
    database, ledger = await prepared(db_url, tmp_path, phones=3)
    try:
        [answered, ringing, half] = (await database.run(claimer(ledger, "w1", 3))).contacts
        campaign = await database.run(lambda c: store.campaign_by_name(c, "spring"), write=False)
        for contact, call_id, up in ((answered, "c-ans", True), (ringing, "c-ring", False),
                                     (half, "c-half", False)):  # fmt: skip
            cdr = {"call_id": call_id, "campaign_id": campaign.id, "account": "acme",
                   "contact_id": contact.contact_id, "phone": contact.phone, "attempt": 1,
                   "direction": "outbound", "trunk_kind": "platform", "invite_at": NOW,
                   "answered_at": NOW + timedelta(seconds=2) if up else None}  # fmt: skip
            await database.run(partial(store.write_call, values=cdr))
        for counter in Counter:
            for increment in (1, 2):
                await ledger.debit("acme", counter, 15, call_id="c-ans", increment=increment)
            await ledger.debit("acme", counter, 15, call_id="c-half", increment=1)
        before = await ledger.balances("acme")
        alive = await database.run(lambda c: store.reconcile_abandoned(c, NOW, "w2"))
        assert alive == []  # w1's leases have not run out: its calls are left alone
        later = NOW + timedelta(seconds=61)
        settled = await database.run(lambda c: store.reconcile_abandoned(c, later, "w2"))
        assert {s["call_id"]: s["billed"] for s in settled} == {
            "c-ans": {"telephony": 30, "speech": 30},
            "c-ring": {"telephony": 0, "speech": 0},
            "c-half": {"telephony": 15, "speech": 15},
        }
        again = await database.run(lambda c: store.reconcile_abandoned(c, later, "w2"))
        assert again == []  # once
        assert await ledger.balances("acme") == before  # nothing charged twice
        calls = {c.call_id: c for c in await database.run(
            lambda c: store.calls_of(c, campaign.id), write=False)}  # fmt: skip
        for call_id, billed in (("c-ans", 30), ("c-ring", 0), ("c-half", 15)):
            call = calls[call_id]
            assert call.disposition == "interrupted" and call.hangup_by == "recovery"
            assert call.billed_telephony_seconds == call.billed_speech_seconds == billed
            assert call.ended_at == later
        assert not (await database.run(claimer(ledger, "w2", 5, later))).contacts
        retry = later + timedelta(seconds=300)  # the campaign's retry delay
        claim = await database.run(claimer(ledger, "w2", 5, retry))
        # the answered contacts are never dialled again; the ringing one is, as attempt 2
        assert [(c.contact_id, c.attempt) for c in claim.contacts] == [(ringing.contact_id, 2)]
    finally:
        await database.dispose()


# -- limits shared by every worker (kept in the database) ---------------------------------


async def in_progress(database: Database) -> int:
    def count(conn: Connection) -> int:
        return sum(store.contact_counts(conn, c.id)[store.IN_PROGRESS]
                   for c in store.campaigns_of_account(conn, "acme"))  # fmt: skip

    return await database.run(count, write=False)


async def test_trunk_channels_hold_across_workers(db_url: str, tmp_path: Path) -> None:
    """Two campaigns on one 3-channel trunk, four workers (separate connection pools)
    claiming at once: never more than 3 contacts in progress, whoever claims."""
    database, ledger = await prepared(db_url, tmp_path, phones=10, channels=3,
                                      campaigns=("spring", "autumn"))  # fmt: skip
    others = [Database(db_url) for _ in range(3)]
    try:
        workers = [database, *others]
        results = await asyncio.gather(*(
            w.run(claimer(ledger, f"w{n}", 3, name=("spring", "autumn")[n % 2]))
            for n, w in enumerate(workers)
        ))  # fmt: skip
        assert sum(len(r.contacts) for r in results) == 3 == await in_progress(database)
        assert not (await others[0].run(claimer(ledger, "w9", 5, name="autumn"))).contacts
        # a call ends: its channel is free for any worker, on any campaign of the trunk
        owner, done = next((f"w{n}", r.contacts[0]) for n, r in enumerate(results) if r.contacts)
        # only the lease's owner may release it
        assert not await database.run(
            lambda c: store.release_contact(c, done.contact_id, "answered", None, "w9")
        )
        assert await database.run(
            lambda c: store.release_contact(c, done.contact_id, "answered", None, owner)
        )
        again = await others[1].run(claimer(ledger, "w8", 5, name="autumn"))
        assert len(again.contacts) == 1 and await in_progress(database) == 3
    finally:
        for other in others:
            await other.dispose()
        await database.dispose()


async def test_campaign_concurrency_holds_across_workers(db_url: str, tmp_path: Path) -> None:
    database, ledger = await prepared(db_url, tmp_path, phones=10, max_concurrent=2)
    other = Database(db_url)
    try:
        first, second = await asyncio.gather(
            database.run(claimer(ledger, "w1", 2)), other.run(claimer(ledger, "w2", 2))
        )
        assert len(first.contacts) + len(second.contacts) == 2
    finally:
        await other.dispose()
        await database.dispose()


async def test_calls_per_second_budgets_are_shared(db_url: str, tmp_path: Path) -> None:
    """A 2 cps trunk: two workers together get 2 calls at once (the saved-up second),
    then one per half second, never more than 2 saved up, whatever the campaigns' own
    budgets; a campaign's own budget (1 cps) holds across workers too."""
    database, ledger = await prepared(db_url, tmp_path, phones=20, trunk_cps=2,
                                      campaigns=("spring", "autumn"))  # fmt: skip
    other = Database(db_url)
    try:

        async def both(at: datetime, name: str = "spring") -> int:
            got = await asyncio.gather(
                database.run(claimer(ledger, "w1", 5, at, name=name)),
                other.run(claimer(ledger, "w2", 5, at, name="autumn")),
            )
            return sum(len(r.contacts) for r in got)

        assert await both(NOW) == 2
        assert await both(NOW + timedelta(seconds=0.2)) == 0
        assert await both(NOW + timedelta(seconds=0.5)) == 1
        assert await both(NOW + timedelta(seconds=60)) == 2  # saved up: one second's worth
        # another host's clock behind ours: no tokens out of thin air
        assert await both(NOW + timedelta(seconds=59)) == 0
        assert await both(NOW + timedelta(seconds=61)) == 2
    finally:
        await other.dispose()
        await database.dispose()


async def test_a_campaigns_own_cps_is_shared(db_url: str, tmp_path: Path) -> None:
    database, ledger = await prepared(db_url, tmp_path, phones=20, cps=1)
    other = Database(db_url)
    try:
        for second in range(5):
            at = NOW + timedelta(seconds=second)
            got = await asyncio.gather(
                database.run(claimer(ledger, "w1", 5, at)), other.run(claimer(ledger, "w2", 5, at))
            )
            assert sum(len(r.contacts) for r in got) == 1
    finally:
        await other.dispose()
        await database.dispose()


async def test_a_paused_campaign_is_not_claimed_from(db_url: str, tmp_path: Path) -> None:
    """A worker's view of the running campaigns is up to half a second old: the claim
    itself reads the state, so a pause (CLI, MQTT, another worker) stops new calls now."""
    database, ledger = await prepared(db_url, tmp_path)
    try:
        await change_state(database, ledger.tariff, "spring", Action.PAUSE)
        result = await database.run(claimer(ledger, "w1", 3))
        assert result.gate_open and not result.contacts
    finally:
        await database.dispose()


async def test_a_host_behind_cannot_refill_the_shared_bucket(db_url: str, tmp_path: Path) -> None:
    """2 cps trunk. t=10: 2 calls (burst). t=11: 1 (2 tokens saved, 1 left). A host 0.4 s
    behind claims at t=10.6 and takes the last token; the bucket's time stays at 11, so
    at t=11.2 only 0.4 tokens have come: nothing (from 10.6 it would grant one more)."""
    database, ledger = await prepared(db_url, tmp_path, phones=20, trunk_cps=2)
    try:

        def at(seconds: float) -> datetime:
            return NOW + timedelta(seconds=seconds)

        async def claim(seconds: float, limit: int) -> int:
            result = await database.run(claimer(ledger, "w1", limit, at(seconds)))
            return len(result.contacts)

        assert await claim(10, 5) == 2
        assert await claim(11, 1) == 1
        assert await claim(10.6, 5) == 1
        assert await claim(11.2, 5) == 0
        assert await claim(11.5, 5) == 1
    finally:
        await database.dispose()
