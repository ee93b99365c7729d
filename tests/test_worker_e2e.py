"""The campaign worker end to end: real line processes, `dialer sim` callees, real
SQLite/PostgreSQL ledger. Billing is checked against what the callee measured."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from siputil import rtp_base
from sqlalchemy import select
from workerutil import (
    callee_durations,
    cli_campaign,
    make_campaign,
    rounded,
    running_worker,
    setup_account,
    simulator,
    wait_for_state,
    wait_until,
)

from billing.ledger import ENTRY, Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import runtime, store
from dialer.campaign_state import Action, CampaignStateError
from dialer.campaigns import (
    add_trunk,
    campaign_status,
    change_state,
)

pytestmark = pytest.mark.sip

T, S = Counter.TELEPHONY, Counter.SPEECH
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def voice(tmp_path: Path) -> Path:
    path = tmp_path / "voice.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "30",
                    "sine", "300", "vol", "0.3"], check=True)  # fmt: skip
    return path


async def test_every_call_is_billed_by_the_callees_own_clock(
    pg_url: str, tmp_path: Path, voice: Path
) -> None:
    # one database: nothing here depends on which (the books are proven on both)
    talks = [1.0, 2.0, 3.5, 14.0, 16.5, 1.5, 2.5, 4.0, 1.0, 2.0,
             3.0, 1.0, 2.0, 16.0, 1.0, 2.0, 3.0, 1.0, 2.0, 5.0]  # fmt: skip
    numbers = [f"+1415555{1000 + n}" for n in range(len(talks))]
    plan = "".join(
        f'[numbers."{num}"]\nring = 0.2\ntalk = {talk}\nplay = "{voice}"\n\n'
        for num, talk in zip(numbers, talks, strict=True)
    )
    with simulator(tmp_path, plan) as sim:
        async with Database(pg_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 60)
            await make_campaign(database, tmp_path, "spring", "main",
                                [f"{n}," for n in numbers], max_concurrent=4, cps=10)  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with running_worker(database, ledger):
                status = await wait_for_state(database, "spring", {"completed"})
            status = await campaign_status(database, "spring")
            calls = await database.run(
                lambda c: store.calls_of(c, store.campaign_by_name(c, "spring").id), write=False
            )
            audit = await ledger.audit("acme")
            balances = await ledger.balances("acme")
    durations = callee_durations(sim)
    assert status["state"] == "completed" and status["calls"]["answered"] == 20
    for call in calls:
        talked = durations[call.phone]
        allowed = {rounded(talked - 1), rounded(talked), rounded(talked + 1)}
        assert call.billed_telephony_seconds in allowed, (call.phone, talked)
        assert call.billed_speech_seconds == call.billed_telephony_seconds
        assert call.disposition == "answered" and call.hangup_by == "remote"
    total = sum(c.billed_telephony_seconds for c in calls)
    assert balances[T] == 3600 - total and all(line.consistent for line in audit)


async def test_agent_time_is_billed_on_platform_telephony_only(
    pg_url: str, tmp_path: Path, voice: Path
) -> None:
    plan = f"""
[numbers."+14155552001"]
ring = 0.2
talk = 20
play = "{voice}"
[numbers."+14155552002"]
ring = 0.2
talk = 20
play = "{voice}"
[agents.agent1]
ring = 0.2
hangup_after = 14
"""
    with simulator(tmp_path, plan) as sim:
        agent = f"sip:agent1@127.0.0.1:{sim.port}"
        async with Database(pg_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await setup_account(database, ledger, sim, "customer", 10, trunk="own")
            await make_campaign(database, tmp_path, "ours", "main", ["+14155552001,2"],
                                agent_uri=agent)  # fmt: skip
            await make_campaign(database, tmp_path, "theirs", "own", ["+14155552002,2"],
                                agent_uri=agent)  # fmt: skip
            await change_state(database, ledger.tariff, "ours", Action.START)
            await change_state(database, ledger.tariff, "theirs", Action.START)
            async with running_worker(database, ledger, lines=2):
                await wait_for_state(database, "ours", {"completed"})
                await wait_for_state(database, "theirs", {"completed"})
            ours = await database.run(lambda c: store.calls_of(c, 1), write=False)
            theirs = await database.run(lambda c: store.calls_of(c, 2), write=False)
    platform, customer = ours[0], theirs[0]
    for call in (platform, customer):
        assert 13 < call.agent_seconds < 15.5  # bot 2 s, agent 14 s, bot again ~4 s
        kinds = [seg["kind"] for seg in call.segments]
        assert kinds == ["bot", "agent", "bot"]
    # platform trunk: telephony runs all 20 s (30 billed); speech only in bot time (~6 s)
    assert platform.billed_telephony_seconds == 30 and platform.billed_speech_seconds == 15
    # customer's own trunk: no telephony, speech suspended while the agent talks
    assert customer.billed_telephony_seconds == 0 and customer.billed_speech_seconds == 15


async def test_running_out_mid_call(db_url: str, tmp_path: Path, voice: Path) -> None:
    """Four 20 s calls on 60 s of speech: the answers exhaust it, the calls finish, the
    balance ends at minus what they used, nothing more is dialed, resume waits for money."""
    numbers = [f"+1415555{3000 + n}" for n in range(10)]
    plan = "".join(f'[numbers."{n}"]\nring = 0.2\ntalk = 20\nplay = "{voice}"\n\n' for n in numbers)
    with simulator(tmp_path, plan) as sim:
        async with Database(db_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "customer", 1)
            await make_campaign(database, tmp_path, "spring", "main", [f"{n}," for n in numbers],
                                max_concurrent=4, cps=20)  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with running_worker(database, ledger):
                status = await wait_for_state(database, "spring", {"paused"}, 30)
                assert status["pause_reason"] == "balance"
                await asyncio.sleep(24)  # the calls that were up finish on their own
            status = await campaign_status(database, "spring")
            calls = await database.run(lambda c: store.calls_of(c, 1), write=False)
            entries = await ledger.entries("acme")
            balance = (await ledger.balances("acme"))[S]
            with pytest.raises(CampaignStateError, match="cannot resume: speech balance"):
                await change_state(database, ledger.tariff, "spring", Action.RESUME)
            topup = await ledger.buy_package("acme", S, 3)
            resumed = await change_state(database, ledger.tariff, "spring", Action.RESUME)
    answered = [c for c in calls if c.disposition == "answered"]
    assert len(answered) == 4 and status["state"] == "paused"
    for call in answered:
        assert call.hangup_by == "remote"  # not cut for lack of balance
        assert call.billed_speech_seconds == 30
    assert balance == 60 - 4 * 30 == -60
    assert topup.balance_seconds == 180 - 60
    assert resumed.state.value == "running"
    exhausting = min(
        e.created_at for e in entries
        if e.kind == "debit" and sum(x.seconds for x in entries if x.id <= e.id) <= 0
    )  # fmt: skip
    invites = [datetime.fromtimestamp(e["at"], UTC).replace(tzinfo=None)
               for e in sim.events if e["event"] == "incoming"]  # fmt: skip
    assert len(invites) == 4 and all(at < exhausting for at in invites)
    assert ENTRY is not None


async def test_sigterm_drain_and_inbound_calls(
    sqlite_url: str, tmp_path: Path, voice: Path
) -> None:
    # one database: nothing here depends on which (the books are proven on both)
    """Stopping: no new calls; calls up get until the drain deadline, then are hung up and
    settled (billed, CDR written, contact released). An inbound INVITE is recorded."""
    numbers = [f"+1415555{5000 + n}" for n in range(6)]
    plan = "".join(f'[numbers."{n}"]\nring = 0.2\ntalk = 60\nplay = "{voice}"\n\n' for n in numbers)
    with simulator(tmp_path, plan) as sim:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "spring", "main", [f"{n}," for n in numbers],
                                max_concurrent=2, cps=10)  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with runtime.running_worker(
                database,
                ledger,
                lines=1,
                rtp_port=rtp_base(),
                assets=None,
                drain_seconds=1.0,
            ) as worker:
                sessions = worker.calls
                await wait_until(
                    lambda: (
                        len(sessions) == 2
                        and all(s.answered_at is not None for s in sessions.values())
                    )
                )
                await asyncio.sleep(2)
                caller = await asyncio.create_subprocess_exec(
                    "sipp", "-sf", str(ROOT / "scripts" / "sipp" / "uac_inbound_603.xml"),
                    "-i", "127.0.0.1", "-p", "0", "-m", "1", "-nostdin", "-timeout", "10s",
                    f"127.0.0.1:{worker.pool.sip_ports[0]}",
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    cwd=ROOT,
                )  # fmt: skip
                assert await caller.wait() == 0
                await asyncio.sleep(0.5)
            # leaving the block stopped the worker: drained 1 s, then hung up and settled
            calls = await database.run(lambda c: store.calls_of(c, 1), write=False)
            inbound = await database.run(
                lambda c: c.execute(
                    select(store.CALL).where(store.CALL.c.direction == "inbound")
                ).all(),
                write=False,
            )
            status = await campaign_status(database, "spring")
    assert len(calls) == 2  # nothing new after the stop
    for call in calls:
        assert call.disposition == "answered" and call.hangup_by == "local"
        assert call.billed_telephony_seconds == 15  # ~3.5 s, settled at the hangup
    assert status["contacts"]["in_progress"] == 0 and status["contacts"]["done"] == 2
    assert len(inbound) == 1 and inbound[0].disposition == "inbound_rejected"
    assert inbound[0].billed_telephony_seconds == inbound[0].billed_speech_seconds == 0


async def test_no_invite_leaves_after_the_exhausting_debit(db_url: str, tmp_path: Path) -> None:
    """Calls answered at once, 16 slots, 1 minute of speech: the answers exhaust the
    balance while the worker is still dialling a claimed batch; no dial may be decided
    after the exhausting debit committed, and the callee sees no INVITE beyond those."""
    from siputil import Sipp, sipps

    with sipps(Sipp("uas_answer", tmp_path, calls=100, sets={"ring_ms": 0, "talk_ms": 2000})) as (
        uas,
    ):
        async with Database(db_url) as database:
            ledger = Ledger(database)
            await ledger.create_account("acme")
            await ledger.buy_package("acme", S, 1)
            await add_trunk(database, name="main", account="acme", kind="customer",
                            uri=uas.uri, channels=16, cps=100)  # fmt: skip
            numbers = [f"+1415555{6000 + n}" for n in range(40)]
            await make_campaign(database, tmp_path, "spring", "main", [f"{n}," for n in numbers],
                                max_concurrent=16, cps=100)  # fmt: skip
            await change_state(database, ledger.tariff, "spring", Action.START)
            async with running_worker(database, ledger, lines=4) as worker:
                await wait_for_state(database, "spring", {"paused"}, 30)
                await asyncio.sleep(4)
            calls = await database.run(lambda c: store.calls_of(c, 1), write=False)
            status = await campaign_status(database, "spring")
    exhausted = datetime.fromtimestamp(worker.metrics.exhausted_at[0], UTC).replace(tzinfo=None)
    decided = [c.invite_at for c in calls]
    assert decided and max(decided) <= exhausted
    assert len(uas.received("INVITE")) == len(calls) < 16  # the batch was cut short
    assert status["contacts"]["in_progress"] == 0  # the rest of the batch was given back


def test_the_worker_command_stops_gracefully_on_sigterm(tmp_path: Path, voice: Path) -> None:
    """The operator's edge: `dialer worker` as a process, SIGTERM while calls are up."""
    import json
    import os
    import signal
    import sys
    import time

    exe = str(Path(sys.executable).with_name("dialer"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env["DIALER_DATABASE__URL"] = f"sqlite:///{tmp_path / 'w.db'}"

    def cli(*args: str) -> str:
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    plan = f'[defaults]\nring = 0.2\ntalk = 60\nplay = "{voice}"\n'
    with simulator(tmp_path, plan) as sim:
        cli_campaign(cli, sim, tmp_path, ["+14155557001", "+14155557002", "+14155557003"])
        worker = subprocess.Popen(
            [exe, "worker", "--lines", "1", "--sip-port", "0", "--drain-seconds", "1"],
            env=env | {"DIALER_SIP__RTP_PORT_BASE": str(rtp_base())},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while (
                json.loads(cli("campaign", "status", "spring", "--json"))["calls"]["answered"] < 2
            ):
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.3)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        status = json.loads(cli("campaign", "status", "spring", "--json"))
        records = json.loads(cli("cdr", "export", "spring", "--format", "json"))
    assert status["contacts"] == {"total": 3, "pending": 1, "in_progress": 0, "done": 2}
    assert [r["hangup_by"] for r in records] == ["local", "local"]
    assert all(r["billed_telephony_seconds"] == 15 for r in records)
