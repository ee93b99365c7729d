"""The worker under hostile conditions, with real line processes, `dialer sim` callees
and SQLite/PostgreSQL: trunks added while it runs, a campaign it cannot dial, a wall
clock stepped mid-call, bad contact attributes in the database, a failing session."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, select, update
from workerutil import (
    callee_durations,
    make_campaign,
    rounded,
    running_worker,
    setup_account,
    simulator,
    wait_for_state,
)

from billing.ledger import Ledger, call_debits
from billing.storage import Database
from billing.tariff import Counter
from dialer import calls as clock_module
from dialer import store
from dialer.campaign_state import Action
from dialer.campaigns import (
    CampaignSpec,
    add_trunk,
    campaign_status,
    change_state,
    create_campaign,
)
from dialer.script_run import ScriptRun

pytestmark = pytest.mark.sip

T, S = Counter.TELEPHONY, Counter.SPEECH


@pytest.fixture
def voice(tmp_path: Path) -> Path:
    path = tmp_path / "voice.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "30",
                    "sine", "300", "vol", "0.3"], check=True)  # fmt: skip
    return path


def _plan(voice: Path, talks: Mapping[str, float]) -> str:
    return "".join(
        f'[numbers."{number}"]\nring = 0.2\ntalk = {talk}\nplay = "{voice}"\n\n'
        for number, talk in talks.items()
    )


async def _calls(database: Database, campaign: str) -> list[Any]:
    return list(
        await database.run(
            lambda c: store.calls_of(c, store.campaign_by_name(c, campaign).id), write=False
        )
    )


async def _books_match(database: Database, call: Any) -> None:
    """The CDR bills exactly what the ledger holds for the call."""
    debits = await database.run(lambda c: call_debits(c, call.call_id), write=False)
    assert (call.billed_telephony_seconds, call.billed_speech_seconds) == (
        debits[T], debits[S],
    ), call.call_id  # fmt: skip


async def test_a_trunk_added_while_the_worker_runs_is_dialled(
    pg_url: str, tmp_path: Path, voice: Path
) -> None:
    # one database: nothing here depends on which (the books are proven on both)
    with simulator(tmp_path, _plan(voice, {"+14155556001": 1, "+14155556002": 1})) as sim:
        async with Database(pg_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "early", "main", ["+14155556001,"], cps=10)
            async with running_worker(database, ledger, lines=2) as worker:
                assert [t.name for t in worker.pool.config.trunks] == ["main"]
                await add_trunk(database, name="late", account="acme", kind="platform",
                                uri=f"sip:127.0.0.1:{sim.port}")  # fmt: skip
                await make_campaign(database, tmp_path, "later", "late", ["+14155556002,"],
                                    cps=10)  # fmt: skip
                await change_state(database, ledger.tariff, "later", Action.START)
                status = await wait_for_state(database, "later", {"completed"}, within=60)
                carried = [t.name for t in worker.pool.config.trunks]
            calls = await _calls(database, "later")
    assert carried == ["main", "late"]
    assert status["calls"]["answered"] == 1 and status["blocked"] is None
    assert [c.phone for c in calls] == ["+14155556002"]
    assert callee_durations(sim).keys() == {"+14155556002"}


async def test_a_campaign_the_worker_cannot_carry_says_why(
    db_url: str, tmp_path: Path, voice: Path
) -> None:
    """Eight trunks in use, a line carries seven: the eighth's campaign is blocked, and
    its status says so, instead of `running` with nothing dialled."""
    with simulator(tmp_path, _plan(voice, {"+14155556101": 1})) as sim:
        async with Database(db_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "c0", "main", ["+14155556101,"])
            async with running_worker(database, ledger, lines=1):
                for n in range(1, 8):
                    await add_trunk(database, name=f"t{n}", account="acme", kind="platform",
                                    uri=f"sip:127.0.0.1:{sim.port}")  # fmt: skip
                    await create_campaign(database, CampaignSpec(
                        name=f"c{n}", account="acme", trunk=f"t{n}"))  # fmt: skip
                await make_campaign(database, tmp_path, "c8", "t7", ["+14155556102,"])
                await change_state(database, ledger.tariff, "c8", Action.START)
                deadline = asyncio.get_running_loop().time() + 30
                while not (status := await campaign_status(database, "c8"))["blocked"]:
                    assert asyncio.get_running_loop().time() < deadline, status
                    await asyncio.sleep(0.2)
    assert status["state"] == "running" and status["calls"]["placed"] == 0
    assert status["blocked"].startswith("trunk 't7' not carried: 8 trunks are in use")


async def test_a_trunk_row_that_fails_the_checks_never_stops_the_worker(
    sqlite_url: str, tmp_path: Path, voice: Path
) -> None:
    """A trunk saved by an older version with a URI the lines now refuse (a bare `sip:`, a
    CR/LF in its user name) used to make every worker exit at start; it is left out and
    logged, its campaign shows it as not carried, and the other campaigns dial."""
    with simulator(tmp_path, _plan(voice, {"+14155556201": 1})) as sim:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "good", "main", ["+14155556201,"], cps=10)
            await add_trunk(database, name="old", account="acme", kind="platform",
                            uri=f"sip:127.0.0.1:{sim.port}")  # fmt: skip
            await make_campaign(database, tmp_path, "stale", "old", ["+14155556202,"])
            await database.run(lambda c: c.execute(
                update(store.TRUNK).where(store.TRUNK.c.name == "old")
                .values(uri="sip:", username="evil\r\nX-Injected: 1")))  # fmt: skip
            await change_state(database, ledger.tariff, "good", Action.START)
            async with running_worker(database, ledger, lines=1) as worker:
                await change_state(database, ledger.tariff, "stale", Action.START)
                status = await wait_for_state(database, "good", {"completed"}, within=60)
                carried = [t.name for t in worker.pool.config.trunks]
                deadline = asyncio.get_running_loop().time() + 30
                while not (stale := await campaign_status(database, "stale"))["blocked"]:
                    assert asyncio.get_running_loop().time() < deadline, stale
                    await asyncio.sleep(0.2)
    assert carried == ["main"] and status["calls"]["answered"] == 1
    assert stale["calls"]["placed"] == 0 and "'old' not carried" in stale["blocked"]
    assert callee_durations(sim).keys() == {"+14155556201"}


class _SteppedClock:
    """The `time` module of the calls (their clock readings) with a wall clock that can
    be stepped."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_a_wall_clock_step_mid_call_is_not_billed(
    sqlite_url: str, tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """+1 h on the worker's wall clock 2 s into an 8 s call: billed by the callee's
    clock, 15 s, not 3,615 s."""
    clock = _SteppedClock()
    monkeypatch.setattr(clock_module, "time", clock)
    with simulator(tmp_path, _plan(voice, {"+14155556201": 8})) as sim:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "stepped", "main", ["+14155556201,"])
            await change_state(database, ledger.tariff, "stepped", Action.START)
            async with running_worker(database, ledger) as worker:
                deadline = asyncio.get_running_loop().time() + 30
                while not any(s.answered_at for s in list(worker.calls.values())):
                    assert asyncio.get_running_loop().time() < deadline, "never answered"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(2)
                clock.offset = 3600.0
                await wait_for_state(database, "stepped", {"completed"})
            [call] = await _calls(database, "stepped")
            await _books_match(database, call)
    talked = callee_durations(sim)["+14155556201"]
    assert call.billed_telephony_seconds == rounded(talked) == 15
    assert call.billed_speech_seconds == 15
    bot = [s for s in call.segments if s["kind"] == "bot"]
    assert len(bot) == 1 and abs(bot[0]["end"] - bot[0]["start"] - talked) < 1


async def _plant_contact(database: Database, campaign: str, phone: str, attributes: Any) -> None:
    def plant(conn: Connection) -> None:
        row = store.campaign_by_name(conn, campaign)
        conn.execute(insert(store.CONTACT).values(
            campaign_id=row.id, phone=phone, timezone="UTC", attributes=attributes,
            state="pending", attempts=0,
        ))  # fmt: skip

    await database.run(plant)


async def _contacts(database: Database) -> dict[str, Any]:
    rows = await database.run(lambda c: c.execute(select(store.CONTACT)).all(), write=False)
    return {r.phone: r for r in rows}


async def test_a_bad_attribute_in_the_database_never_leaves_a_call_open(
    db_url: str, tmp_path: Path, voice: Path
) -> None:
    """`transfer_after=abc` planted behind the import's back: the call runs without
    the transfer, its CDR is closed with what the ledger holds, the contact is done."""
    talks = {"+14155556301": 3, "+14155556302": 3}
    with simulator(tmp_path, _plan(voice, talks) + "[agents.agent1]\nhangup_after = 1\n") as sim:
        async with Database(db_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await create_campaign(database, CampaignSpec(
                name="attrs", account="acme", trunk="main", cps=10,
                agent_uri=f"sip:agent1@127.0.0.1:{sim.port}"))  # fmt: skip
            await _plant_contact(database, "attrs", "+14155556301", {"transfer_after": "abc"})
            await _plant_contact(database, "attrs", "+14155556302", {"transfer_after": [1]})
            await change_state(database, ledger.tariff, "attrs", Action.START)
            async with running_worker(database, ledger, lines=2):
                await wait_for_state(database, "attrs", {"completed"})
            calls = await _calls(database, "attrs")
            for call in calls:
                await _books_match(database, call)
            contacts = await _contacts(database)
    assert sorted(c.phone for c in calls) == sorted(talks)
    for call in calls:
        assert call.ended_at is not None and call.disposition == "answered"
        assert call.billed_telephony_seconds == 15 and call.agent_seconds == 0
    assert {(c.state, c.last_disposition) for c in contacts.values()} == {("done", "answered")}


async def test_a_failing_session_is_settled_at_once(
    db_url: str, tmp_path: Path, voice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks a call's session after the answer: the call is hung up, its CDR
    closed `interrupted` with what the ledger holds, its contact done (never redialled)
    — not left open until the worker restarts."""

    def broken(self: ScriptRun, now: float) -> list[Any]:
        raise RuntimeError("script bug")

    monkeypatch.setattr(ScriptRun, "answered", broken)
    with simulator(tmp_path, _plan(voice, {"+14155556401": 20})) as sim:
        async with Database(db_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "broken", "main", ["+14155556401,"])
            await change_state(database, ledger.tariff, "broken", Action.START)
            async with running_worker(database, ledger) as worker:
                await wait_for_state(database, "broken", {"completed"}, within=60)
                sessions = dict(worker.calls)
            [call] = await _calls(database, "broken")
            await _books_match(database, call)
            contact = (await _contacts(database))["+14155556401"]
    assert not sessions
    assert (call.disposition, call.hangup_by) == ("interrupted", "worker")
    assert call.billed_telephony_seconds == 15  # the first increment, taken at the answer
    assert (contact.state, contact.last_disposition, contact.attempts) == (
        "done", "interrupted", 1,
    )  # fmt: skip
    ended = sim.wait_for(lambda e: e["event"] == "ended" and e.get("role") == "callee")
    assert ended["talked"] < 10  # hung up by the worker, not the callee's 20 s
