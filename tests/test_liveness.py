"""The dead-worker rule (dialer.liveness) with a clock the test moves: a worker silent for
its dead_after is settled by another, with the recovery rules; a worker never judges
itself; nobody is dead because the database was away for everyone; a worker cut off
alone is fenced before anyone may settle it, and notices when it was."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from billing.ledger import Ledger
from billing.period import utcnow
from billing.storage import Database
from billing.tariff import Counter
from dialer import store
from dialer.campaigns import CampaignSpec, add_trunk, create_campaign, import_contacts
from dialer.config import WorkerConfig
from dialer.liveness import (
    Liveness,
    Seen,
    Watch,
    default_worker_id,
    interval_of,
    settle_dead,
    workers,
)

DEAD_AFTER = 30.0
ID_PATTERN = WorkerConfig.model_fields["id"].metadata[0].pattern


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the rule, sans I/O ---------------------------------------------------------------------


def seen(beats: int, worker: str = "b", run: str = "r1") -> Seen:
    return Seen(worker, run, beats, DEAD_AFTER)


def test_a_worker_is_dead_after_its_dead_after_of_silence_and_not_before() -> None:
    watch = Watch(gap=15)
    t = 0.0
    for beats in range(3):  # it beats: never dead
        assert watch.round(t, t + 0.01, [seen(beats)]) == []
        t += 5
    first = t - 5  # its last value was first read here
    while t - (first + 0.01) < DEAD_AFTER:
        assert watch.round(t, t + 0.01, [seen(2)]) == []
        t += 5
    assert watch.round(t, t + 0.01, [seen(2)]) == [seen(2)]


def test_a_new_run_or_a_beat_starts_the_watch_again() -> None:
    watch = Watch(gap=15)
    for t in range(0, 30, 5):
        watch.round(t, t, [seen(7)])
    assert watch.round(30, 30, [seen(7, run="r2")]) == []  # restarted under the same id
    assert watch.round(35, 35, [seen(8, run="r2")]) == []
    for t in range(40, 65, 5):
        assert watch.round(t, t, [seen(8, run="r2")]) == []
    assert watch.round(65, 65, [seen(8, run="r2")]) == [seen(8, run="r2")]


def test_a_judge_that_lost_touch_forgets_what_it_saw() -> None:
    """The database away for 40 s (for everyone): on its return the judge sees the others
    as before the outage, but that proves nothing: they beat again before it has watched
    them long enough."""
    watch = Watch(gap=15)
    for t in range(0, 20, 5):
        watch.round(t, t, [seen(3)])
    assert watch.round(60, 60, [seen(3)]) == []  # 40 s without a round of its own
    assert watch.round(65, 65, [seen(4)]) == []  # the other worker beats again
    # a judge whose round itself took longer than the gap (it stalled) is blind too
    for t in range(70, 100, 5):
        watch.round(t, t, [seen(4)])
    assert watch.round(100, 120, [seen(4)]) == []


def test_heartbeat_interval() -> None:
    assert interval_of(30) == 5 and interval_of(6) == 1 and interval_of(600) == 5


def test_default_ids_are_stable_per_host_and_port() -> None:
    a, again, b = (default_worker_id("0.0.0.0", 5060), default_worker_id("0.0.0.0", 5060),
                   default_worker_id("0.0.0.0", 5070))  # fmt: skip
    assert a == again and a != b and a.endswith(":5060")
    assert default_worker_id("10.1.2.3", 5060) != default_worker_id("10.1.2.4", 5060)
    assert default_worker_id("127.0.0.1", 0) != default_worker_id("127.0.0.1", 0)
    for made in (a, b, default_worker_id("10.1.2.3", 5060), default_worker_id("::1", 65535)):
        assert re.fullmatch(ID_PATTERN, made), made


def test_dead_after_is_configurable() -> None:
    assert WorkerConfig().dead_after == 30.0
    assert WorkerConfig(dead_after=8).dead_after == 8.0
    with pytest.raises(ValueError):
        WorkerConfig(dead_after=1)


# -- on the database ------------------------------------------------------------------------


async def _campaign(database: Database, tmp_path: Path) -> None:
    ledger = Ledger(database)
    await ledger.create_account("acme")
    for counter in Counter:
        await ledger.buy_package("acme", counter, 10)
    await add_trunk(database, name="main", account="acme", kind="platform",
                    uri="sip:127.0.0.1:5999")  # fmt: skip
    await create_campaign(database, CampaignSpec(name="spring", account="acme", trunk="main"))
    csv = tmp_path / "c.csv"
    csv.write_text("phone\n+14155550101\n+14155550102\n")
    await import_contacts(database, "spring", csv)


async def _hold(database: Database, worker: str, phone: str, call_id: str) -> None:
    """``worker`` has a call up (dialled, ringing) for the contact ``phone``."""

    def hold(conn: Connection) -> None:
        contact = conn.execute(select(store.CONTACT).where(store.CONTACT.c.phone == phone)).one()
        conn.execute(
            update(store.CONTACT).where(store.CONTACT.c.id == contact.id).values(
                state=store.IN_PROGRESS, attempts=1, lease_owner=worker,
                lease_until=utcnow() + timedelta(seconds=900),
            )
        )  # fmt: skip
        store.write_call(conn, {"call_id": call_id, "campaign_id": contact.campaign_id,
                                "account": "acme", "contact_id": contact.id, "phone": phone,
                                "direction": "outbound", "trunk_kind": "platform",
                                "invite_at": utcnow()})  # fmt: skip

    await database.run(hold)


async def _state(database: Database) -> dict[str, Any]:
    def read(conn: Connection) -> dict[str, Any]:
        contacts = {r.phone: (r.state, r.lease_owner) for r in conn.execute(
            select(store.CONTACT))}  # fmt: skip
        calls = {r.call_id: r.disposition for r in conn.execute(select(store.CALL))}
        return {"contacts": contacts, "calls": calls,
                "workers": sorted(r.id for r in workers(conn))}  # fmt: skip

    return await database.run(read, write=False)


async def _rounds(clock: Clock, *members: Liveness, seconds: float, every: float = 5) -> None:
    """Let ``seconds`` pass with a round of each member every ``every`` seconds."""
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(every)
        for member in members:
            await member.step()


async def test_a_silent_worker_is_settled_by_another_never_by_itself(
    db_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    settled: list[dict[str, Any]] = []
    async with Database(db_url) as database:
        await _campaign(database, tmp_path)
        a = Liveness(database, "host-a:5060", DEAD_AFTER, clock=clock)
        b = Liveness(database, "host-b:5060", DEAD_AFTER, clock=clock, on_settled=settled.extend)
        await a.announce()
        await b.announce()
        try:
            await _hold(database, "host-a:5060", "+14155550101", "call-a")
            await _hold(database, "host-b:5060", "+14155550102", "call-b")
            await _rounds(clock, a, b, seconds=60)  # both beat: nobody is dead
            assert (await _state(database))["workers"] == ["host-a:5060", "host-b:5060"]
            # a goes silent: b settles it once b has watched it for its dead_after
            await _rounds(clock, b, seconds=DEAD_AFTER - 5)
            assert (await _state(database))["calls"]["call-a"] is None
            await _rounds(clock, b, seconds=10)
            state = await _state(database)
            assert state["calls"] == {"call-a": "interrupted", "call-b": None}
            assert state["contacts"] == {
                "+14155550101": ("pending", None),  # retried
                "+14155550102": ("in_progress", "host-b:5060"),
            }
            assert state["workers"] == ["host-b:5060"]
            assert [c["call_id"] for c in settled] == ["call-a"]
            # b alone for a long time (its own contact, its clock jumping): never itself
            await _rounds(clock, b, seconds=300, every=20)
            assert (await _state(database))["contacts"]["+14155550102"][0] == "in_progress"
        finally:
            await a.close(withdraw_row=True)
            await b.close(withdraw_row=True)
        assert (await _state(database))["workers"] == []  # clean stops remove their rows


async def test_the_database_away_for_everyone_kills_nobody(db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    async with Database(db_url) as database:
        await _campaign(database, tmp_path)
        a = Liveness(database, "host-a:5060", DEAD_AFTER, clock=clock)
        b = Liveness(database, "host-b:5060", DEAD_AFTER, clock=clock)
        await a.announce()
        await b.announce()
        try:
            await _hold(database, "host-a:5060", "+14155550101", "call-a")
            await _rounds(clock, a, b, seconds=20)
            clock.advance(40)  # nobody reaches the database
            assert a.fenced and b.fenced  # no claims meanwhile
            await b.step()  # b is back first and sees a as it was 40 s ago
            await a.step()
            assert not a.fenced
            await _rounds(clock, b, a, seconds=20)
            state = await _state(database)
            assert state["calls"] == {"call-a": None}
            assert state["workers"] == ["host-a:5060", "host-b:5060"]
        finally:
            await a.close(withdraw_row=True)
            await b.close(withdraw_row=True)


async def test_a_worker_cut_off_alone_is_fenced_first_and_notices_its_settlement(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    fenced_at: list[float] = []
    settled_at: list[float] = []
    async with Database(db_url) as database:
        await _campaign(database, tmp_path)
        a = Liveness(database, "host-a:5060", DEAD_AFTER, clock=clock,
                     on_fence=lambda: fenced_at.append(clock.now))  # fmt: skip
        b = Liveness(database, "host-b:5060", DEAD_AFTER, clock=clock,
                     on_settled=lambda calls: settled_at.append(clock.now))  # fmt: skip
        await a.announce()
        await b.announce()
        try:
            await _hold(database, "host-a:5060", "+14155550101", "call-a")
            await _rounds(clock, a, b, seconds=10)
            last_beat = clock.now
            # a cannot reach the database (b can): second by second, who knows what
            while not settled_at:
                clock.advance(1)
                if a.fenced and not fenced_at:
                    fenced_at.append(clock.now)
                if clock.now % 5 == 0:
                    await b.step()
            assert fenced_at[0] - last_beat == DEAD_AFTER - a.interval  # fenced first
            assert settled_at[0] - last_beat >= DEAD_AFTER
            assert a.fenced
            await a.step()  # back: its row is gone, it says so and announces itself again
            assert not a.fenced
            assert (await _state(database))["workers"] == ["host-a:5060", "host-b:5060"]
        finally:
            await a.close(withdraw_row=True)
            await b.close(withdraw_row=True)


async def test_a_beat_between_judgement_and_settlement_saves_the_worker(
    db_url: str, tmp_path: Path
) -> None:
    async with Database(db_url) as database:
        await _campaign(database, tmp_path)
        a = Liveness(database, "host-a:5060", DEAD_AFTER)
        await a.announce()
        try:
            await _hold(database, "host-a:5060", "+14155550101", "call-a")
            judged = Seen("host-a:5060", a.me.run, 0, DEAD_AFTER)
            await a.step()  # beats: 1
            now = utcnow()
            assert await database.run(lambda c: settle_dead(c, judged, "host-b", now)) is None
            with pytest.raises(ValueError):
                await database.run(lambda c: settle_dead(c, judged, "host-a:5060", now))
            assert (await _state(database))["calls"] == {"call-a": None}
        finally:
            await a.close(withdraw_row=True)
