"""`dialer demo`: the whole product in one run, on the embedded default (SQLite).

It starts two simulated callee farms (`dialer sim`), a line pool and the worker, gives a
fresh account a small balance, and runs two campaigns of 30 contacts in all that show
every rule: humans who answer and talk, answering machines (recognised, hung up on, billed),
busy, no answer, transfers to an agent on the customer's own trunk and back (agent time
not billed), the balance running out mid-campaign (the calls up finish, the balance goes
negative, the campaigns pause), a top-up that pays off the debt, and a manual resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter as Tally
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import Connection, update

from billing.errors import DuplicateAccount
from billing.ledger import BalanceSignal, Ledger, SignalKind
from billing.period import Period, utcnow
from billing.storage import Database
from billing.tariff import Counter
from dialer import db, store
from dialer.campaign_state import LIVE_STATES, Action, CampaignState
from dialer.campaigns import (
    CampaignSpec,
    add_trunk,
    campaign_status,
    change_state,
    create_campaign,
    import_contacts,
)
from dialer.config import Settings
from dialer.runtime import running_worker
from dialer.tts import synthesise

RING_TIMEOUT = 5.0

# (number suffix, what the callee does); numbers are +1415555 01xx / 02xx
PLATFORM_CALLEES = [
    ("01", "long"),
    *[(f"{n:02d}", "human") for n in range(2, 9)],
    ("09", "machine"), ("10", "machine"), ("11", "busy"), ("12", "busy"),
    ("13", "noanswer"), ("14", "human"), ("15", "human"), ("16", "human"),
    ("17", "decline"), ("18", "human"),
]  # fmt: skip
CUSTOMER_CALLEES = [
    ("01", "transfer"), ("02", "human"), ("03", "transfer"), ("04", "human"),
    ("05", "machine"), ("06", "human"), ("07", "transfer"), ("08", "busy"),
    ("09", "human"), ("10", "human"), ("11", "noanswer"), ("12", "human"),
]  # fmt: skip

BEHAVIOUR = {
    "human": 'ring = 0.6\nplay = "hello.wav"\ntalk = {talk}\n',
    "long": 'ring = 0.3\nplay = "hello.wav"\ntalk = 22\n',
    "machine": 'ring = 0.4\nplay = "voicemail.wav"\ntalk = 7\n',
    "transfer": 'ring = 0.5\nplay = "hello.wav"\ntalk = 14\n',
    "busy": "reject = 486\n",
    "decline": "reject = 603\n",
    "noanswer": "answer = false\n",
}


def spoken_wav(path: Path, text: str, beep_hz: float) -> None:
    """A callee's voice (festival, as `say` text is synthesised), then 0.5 s of beep."""
    voice = synthesise(text, "slt", path.parent)
    with wave.open(str(voice)) as source:
        frames = source.readframes(source.getnframes())
        rate = source.getframerate()
    if beep_hz:
        frames += b"\0\0" * (rate // 2)
        for n in range(rate // 2):
            frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * beep_hz * n / rate)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def sim_farm(folder: Path, name: str, callees: list[tuple[str, str]], prefix: str,
             agents: bool) -> Any:  # fmt: skip
    plan = folder / f"{name}.toml"
    lines = []
    for n, (suffix, kind) in enumerate(callees):
        talk = 3 + (n % 4) * 2.5
        lines.append(f'[numbers."{prefix}{suffix}"]\n' + BEHAVIOUR[kind].format(talk=talk))
    if agents:
        lines.append("[agents.agent1]\nring = 0.5\nhangup_after = 6\n")
    plan.write_text("\n".join(lines))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dialer", "sim", "--plan", str(plan), "--port", str(port),
         "--rtp-port", str(41000 + (port % 20) * 200)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "DIALER_LOGGING__LEVEL": "warning"},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        if not first or json.loads(first).get("event") != "ready":
            raise RuntimeError(f"the simulated {name} farm did not start")
        yield port
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()


async def _stop_leftovers(database: Database) -> None:
    """Campaigns of an earlier demo that was interrupted: their callee farms are gone."""

    def stop(conn: Connection) -> None:
        conn.execute(
            update(store.CAMPAIGN)
            .where(
                store.CAMPAIGN.c.account.like("demo-%"),
                store.CAMPAIGN.c.state.in_([s.value for s in LIVE_STATES]),
            )
            .values(state=CampaignState.STOPPED.value, pause_reason=None)
        )

    await database.run(stop)


async def _fresh_account(ledger: Ledger) -> str:
    existing = {a.name for a in await ledger.list_accounts()}
    n = 1
    while True:
        name = f"demo-{n}"
        if name not in existing:
            with contextlib.suppress(DuplicateAccount):
                await ledger.create_account(name)
                return name
        n += 1


class Narrator:
    def __init__(self, out: Console) -> None:
        self.out = out
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        self.lines.append(text)


async def run_demo(cfg: Settings, out: Console) -> None:
    database = Database(cfg.database.url, create=True)
    await db.upgrade(database)
    try:
        with tempfile.TemporaryDirectory(prefix="dialer-demo-") as tmp:
            await _run(cfg, database, Path(tmp), out)
    finally:
        await database.dispose()


async def _run(cfg: Settings, database: Database, folder: Path, out: Console) -> None:
    started = time.monotonic()
    await asyncio.to_thread(spoken_wav, folder / "hello.wav", "Hello? Who is this?", 0.0)
    await asyncio.to_thread(
        spoken_wav, folder / "voicemail.wav",
        "Hi, you have reached Sam. I am not available right now. "
        "Please leave a message after the tone.", 1000.0,
    )  # fmt: skip
    ledger = Ledger(database, cfg.billing.make_tariff())
    story = Narrator(out)
    await _stop_leftovers(database)
    account = await _fresh_account(ledger)
    out.rule(f"[b]dialer demo[/b]: account {account} on {database.shown}")
    await ledger.buy_package(account, Counter.TELEPHONY, 10)
    await ledger.buy_package(account, Counter.SPEECH, 1)
    story.say(f"{account}: bought 10 min telephony and 1 min speech (little, on purpose)")
    story.say(
        "callees: humans (talk 3-22 s), answering machines (recognised and hung up on: "
        "billed the first 15 s), busy, "
        "declined, no answer; support calls go to an agent on the customer's own trunk"
    )

    async def narrate(signal: BalanceSignal) -> None:
        if signal.kind is SignalKind.EXHAUSTED:
            story.say(
                f"[red]{signal.counter.value} balance at {signal.balance_seconds} s[/red]: "
                "every campaign pauses; calls already up finish (and keep being billed)"
            )

    ledger.subscribe(narrate)
    with (
        sim_farm(folder, "platform callees", PLATFORM_CALLEES, "+141555501", False) as p_port,
        sim_farm(folder, "customer callees", CUSTOMER_CALLEES, "+141555502", True) as c_port,
    ):
        await add_trunk(database, name=f"{account}-platform", account=account, kind="platform",
                        uri=f"sip:127.0.0.1:{p_port}", channels=2)  # fmt: skip
        await add_trunk(database, name=f"{account}-own", account=account, kind="customer",
                        uri=f"sip:127.0.0.1:{c_port}", channels=4)  # fmt: skip
        campaigns = {
            f"{account}-sales": (f"{account}-platform", PLATFORM_CALLEES, "+141555501", None),
            f"{account}-support": (
                f"{account}-own", CUSTOMER_CALLEES, "+141555502",
                f"sip:agent1@127.0.0.1:{c_port}",
            ),
        }  # fmt: skip
        for name, (trunk, callees, prefix, agent) in campaigns.items():
            await create_campaign(database, CampaignSpec(
                name=name, account=account, trunk=trunk, max_concurrent=2, cps=2,
                retries=0, agent_uri=agent, max_call_seconds=20,
            ))  # fmt: skip
            csv = folder / f"{name}.csv"
            rows = [f"{prefix}{s},{'2' if kind == 'transfer' else ''}" for s, kind in callees]
            csv.write_text("phone,transfer_after\n" + "\n".join(rows) + "\n")
            await import_contacts(database, name, csv)
            await change_state(database, ledger.tariff, name, Action.START)
        story.say(
            f"started {len(campaigns)} campaigns, {len(PLATFORM_CALLEES) + len(CUSTOMER_CALLEES)}"
            " contacts: sales on the platform trunk, support on the customer's own trunk"
            " (with transfers to a human agent)"
        )
        async with running_worker(database, ledger, lines=3, rtp_port=32000,
                                  ring_timeout=RING_TIMEOUT, drain_seconds=20):  # fmt: skip
            await _watch(database, ledger, account, list(campaigns), story, out)
    out.rule("what happened")
    for line in story.lines:
        out.print(line)
    await _report(database, ledger, account, list(campaigns), out, time.monotonic() - started)


async def _watch(database: Database, ledger: Ledger, account: str, names: list[str],
                 story: Narrator, out: Console) -> None:  # fmt: skip
    resume_at: float | None = None
    with Live(console=out, refresh_per_second=4, transient=False) as live:
        while True:
            statuses = [await campaign_status(database, n) for n in names]
            balances = await ledger.balances(account)
            live.update(_view(statuses, balances, story))
            if all(s["state"] == CampaignState.COMPLETED for s in statuses):
                return
            paused = [s for s in statuses if s["pause_reason"] == "balance"]
            up = sum(s["contacts"]["in_progress"] for s in statuses)
            if paused and resume_at is None and up == 0:
                story.say("no call is up any more; the balance stays as it is until a top-up")
                for counter in Counter:
                    if balances[counter] <= 0:
                        result = await ledger.buy_package(account, counter, 10)
                        story.say(
                            f"top-up: 10 min {counter.value}: the debt of "
                            f"{-balances[counter]} s is paid off first, balance now "
                            f"{result.balance_seconds} s"
                        )
                story.say("campaigns stay paused after a top-up: a person resumes them...")
                resume_at = time.monotonic() + 2
            if resume_at is not None and time.monotonic() >= resume_at:
                for status in statuses:
                    if status["state"] == CampaignState.PAUSED:
                        await change_state(
                            database, ledger.tariff, status["campaign"], Action.RESUME
                        )
                        story.say(f"resumed {status['campaign']}")
                resume_at = None
            await asyncio.sleep(0.25)


def _view(statuses: list[dict[str, Any]], balances: dict[Counter, int], story: Narrator) -> Group:
    table = Table("campaign", "state", "contacts done", "calls", "billed telephony",
                  "billed speech")  # fmt: skip
    for s in statuses:
        state = s["state"] + (f" ({s['pause_reason']})" if s["pause_reason"] else "")
        calls = s["calls"]
        table.add_row(
            s["campaign"], state, f"{s['contacts']['done']}/{s['contacts']['total']}",
            f"{calls['answered']} answered, {calls['busy']} busy, {calls['no_answer']} no answer",
            f"{s['billed_seconds']['telephony']} s", f"{s['billed_seconds']['speech']} s",
        )  # fmt: skip
    money = ", ".join(f"{c.value} {balances[c]} s" for c in Counter)
    return Group(*story.lines[-8:], table, f"balance: {money}")


async def _report(database: Database, ledger: Ledger, account: str, names: list[str],
                  out: Console, seconds: float) -> None:  # fmt: skip
    out.rule("call records")
    table = Table("campaign", "phone", "disposition", "talk s", "agent s", "telephony", "speech")
    dispositions: Tally[str] = Tally()
    for name in names:

        def rows(conn: Connection, name: str = name) -> list[Any]:
            return list(store.calls_of(conn, store.campaign_by_name(conn, name).id))

        for call in await database.run(rows, write=False):
            dispositions[call.disposition or "?"] += 1
            talk = (
                (call.ended_at - call.answered_at).total_seconds()
                if call.answered_at and call.ended_at
                else 0
            )
            table.add_row(
                name.split("-")[-1], call.phone, call.disposition or "", f"{talk:.1f}",
                f"{call.agent_seconds:.1f}", str(call.billed_telephony_seconds),
                str(call.billed_speech_seconds),
            )  # fmt: skip
    out.print(table)
    out.print("dispositions: " + ", ".join(f"{k} {v}" for k, v in sorted(dispositions.items())))
    balances = await ledger.balances(account)
    out.print("balance: " + ", ".join(f"{c.value} {balances[c]} s" for c in Counter))
    report = await ledger.usage(account, Period.containing(utcnow()))
    out.print(f"usage {report.period}: {report.unique_contacts} unique contacts reached; "
              + ", ".join(f"{c.value} {report.billed_seconds[c]} s" for c in Counter))  # fmt: skip
    audit = await ledger.audit(account)
    verdict = "balance = sum of ledger entries" if all(a.consistent for a in audit) else "MISMATCH"
    out.print(f"audit: {verdict}. Demo took {seconds:.0f} s.")
    out.print(f"try: dialer cdr export {names[0]} | head; dialer billing usage {account} --json")
