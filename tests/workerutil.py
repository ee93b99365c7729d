"""The campaign worker against real callees, for the worker, fault and MQTT tests:
`dialer sim` callees (SimProcess) or sipp ones, accounts and campaigns set up through the
core or the CLI, and the books checked against what the callees measured."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siputil import Message, SimProcess, Sipp, rtp_base
from sqlalchemy import Connection, select

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import runtime, store
from dialer.campaign_state import Action
from dialer.campaigns import (
    CampaignSpec,
    add_trunk,
    campaign_status,
    change_state,
    create_campaign,
    import_contacts,
)
from dialer.config import SipConfig
from dialer.worker import Worker

MINUTES = 60  # each counter's package in dial_campaign
T, S = Counter.TELEPHONY, Counter.SPEECH


def rounded(seconds: float, increment: int = 15) -> int:
    return math.ceil(seconds / increment) * increment if seconds > 0 else 0


# -- `dialer sim` callees -----------------------------------------------------------------


async def wait_until(condition: Any, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def simulator(tmp_path: Path, plan: str) -> Iterator[SimProcess]:
    path = tmp_path / "plan.toml"
    path.write_text(plan)
    sim = SimProcess(path)
    try:
        yield sim
    finally:
        sim.stop()


def running_worker(database: Database, ledger: Ledger, lines: int = 1) -> Any:
    return runtime.running_worker(database, ledger, lines=lines, rtp_port=rtp_base(),
                                  assets=None, drain_seconds=5)  # fmt: skip


async def wait_for_state(database: Database, campaign: str, states: set[str],
                         within: float = 90) -> dict[str, Any]:  # fmt: skip
    deadline = asyncio.get_running_loop().time() + within
    while True:
        status = await campaign_status(database, campaign)
        if status["state"] in states:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{campaign}: still {status}")
        await asyncio.sleep(0.25)


async def setup_account(database: Database, ledger: Ledger, sim: SimProcess, kind: str,
                        minutes: int, trunk: str = "main") -> None:  # fmt: skip
    if trunk == "main":
        await ledger.create_account("acme")
        for counter in Counter:
            await ledger.buy_package("acme", counter, minutes)
    await add_trunk(database, name=trunk, account="acme", kind=kind,
                    uri=f"sip:127.0.0.1:{sim.port}")  # fmt: skip


async def make_campaign(database: Database, tmp_path: Path, name: str, trunk: str,
                        rows: list[str], **spec: Any) -> None:  # fmt: skip
    await create_campaign(database, CampaignSpec(name=name, account="acme", trunk=trunk, **spec))
    csv = tmp_path / f"{name}.csv"
    csv.write_text("phone,transfer_after\n" + "\n".join(rows) + "\n")
    await import_contacts(database, name, csv)


def callee_durations(sim: SimProcess) -> dict[str, float]:
    return {e["number"]: e["talked"] for e in sim.events
            if e["event"] == "ended" and e.get("role") == "callee"}  # fmt: skip


def cli_campaign(cli: Any, sim: SimProcess, folder: Path, phones: list[str],
                 *extra: str) -> None:  # fmt: skip
    """Account, 5 min per counter, a trunk to the simulator and a started campaign, all
    through the `dialer` command, as an operator sets it up."""
    cli("db", "upgrade")
    cli("account", "create", "acme")
    cli("billing", "topup", "acme", "--counter", "telephony", "--minutes", "5")
    cli("billing", "topup", "acme", "--counter", "speech", "--minutes", "5")
    cli("trunk", "add", "main", "--account", "acme", "--kind", "platform",
        "--uri", f"sip:127.0.0.1:{sim.port}")  # fmt: skip
    cli("campaign", "create", "spring", "--account", "acme", "--trunk", "main",
        "--max-concurrent", "2", *extra)  # fmt: skip
    (folder / "c.csv").write_text("phone\n" + "\n".join(phones) + "\n")
    cli("campaign", "import", "spring", str(folder / "c.csv"))
    cli("campaign", "start", "spring")


# -- sipp callees, the books checked against their traces ---------------------------------


@dataclass
class Outcome:
    calls: list[Any]
    contacts: list[Any]
    balances: dict[Counter, int]
    consistent: bool
    worker: Worker


def phones(n: int, base: int = 7000) -> list[str]:
    return [f"+1415555{base + k}" for k in range(n)]


async def dial_campaign(
    db_url: str,
    tmp_path: Path,
    trunks: dict[str, tuple[str, list[str]]],
    *,
    lines: int = 1,
    ring_timeout: float = 30.0,
    during: Callable[[Database, Worker], Awaitable[None]] | None = None,
    within: float = 90,
    sip: SipConfig | None = None,
    **spec: Any,
) -> Outcome:
    """One campaign per trunk {name: (uri, phones)}, all run by one worker to the end."""
    async with Database(db_url) as database:
        ledger = Ledger(database)
        await ledger.create_account("acme")
        for counter in Counter:
            await ledger.buy_package("acme", counter, MINUTES)
        for name, (uri, numbers) in trunks.items():
            await add_trunk(database, name=name, account="acme", kind="platform", uri=uri)
            await create_campaign(
                database, CampaignSpec(name=f"c-{name}", account="acme", trunk=name, **spec)
            )
            csv = tmp_path / f"{name}.csv"
            csv.write_text("phone\n" + "\n".join(numbers) + "\n")
            await import_contacts(database, f"c-{name}", csv)
            await change_state(database, ledger.tariff, f"c-{name}", Action.START)
        async with runtime.running_worker(
            database, ledger, lines=lines, rtp_port=rtp_base(), ring_timeout=ring_timeout,
            drain_seconds=5, sip=sip,
        ) as worker:  # fmt: skip
            if during is not None:
                await during(database, worker)
            deadline = asyncio.get_running_loop().time() + within
            while await database.run(unfinished, write=False):
                assert asyncio.get_running_loop().time() < deadline, "campaigns never finished"
                await asyncio.sleep(0.25)
            for _ in range(200):  # the last CDR written
                if not worker.calls:
                    break
                await asyncio.sleep(0.05)

        def rows(conn: Connection) -> tuple[list[Any], list[Any]]:
            calls = list(conn.execute(select(store.CALL).order_by(store.CALL.c.invite_at)))
            return calls, list(conn.execute(select(store.CONTACT)))

        calls, contacts = await database.run(rows, write=False)
        audit = await ledger.audit("acme")
        return Outcome(
            calls,
            contacts,
            await ledger.balances("acme"),
            all(line.consistent for line in audit),
            worker,
        )


def unfinished(conn: Connection) -> int:
    return sum(store.unfinished(conn, c.id) for c in store.campaigns_of_account(conn, "acme"))


async def calls_answered(worker: Worker, count: int, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while worker.calls_by_state()["answered"] < count:
        assert asyncio.get_running_loop().time() < deadline, "calls never answered"
        await asyncio.sleep(0.05)


@dataclass
class CalleeCall:
    phone: str
    invited_at: float
    answered_at: float | None  # our side's 200 OK as the callee sent it
    ended_at: float | None  # the first BYE, whoever sent it


def callee_calls(*runs: Sipp) -> list[CalleeCall]:
    by_id: dict[str, list[Message]] = defaultdict(list)
    for run in runs:
        for message in run.messages():
            call_id = message.header("Call-ID")
            if call_id:
                by_id[call_id].append(message)
    found = []
    for messages in by_id.values():
        invite = next(m for m in messages if not m.sent and m.first_line.startswith("INVITE"))
        phone = invite.first_line.split("sip:", 1)[1].split("@", 1)[0]
        ok = [m for m in messages if m.sent and m.first_line.startswith("SIP/2.0 200")
              and (m.header("CSeq") or "").endswith("INVITE")]  # fmt: skip
        byes = [m for m in messages if m.first_line.startswith("BYE")]
        found.append(CalleeCall(phone, invite.at, ok[0].at if ok else None,
                                byes[0].at if byes else None))  # fmt: skip
    return sorted(found, key=lambda c: c.invited_at)


def check_books(
    outcome: Outcome, callees: list[CalleeCall], *, ended_by_callee: bool = True
) -> None:
    """The invariants of every fault (module docstring)."""
    calls = [c for c in outcome.calls if c.direction == "outbound"]
    for counter, column in ((T, "billed_telephony_seconds"), (S, "billed_speech_seconds")):
        billed = sum(getattr(c, column) for c in calls)
        assert MINUTES * 60 - outcome.balances[counter] == billed, counter
    assert outcome.consistent
    # every INVITE the callees saw is one CDR, and the other way round
    by_phone: dict[str, list[CalleeCall]] = defaultdict(list)
    for callee in callees:
        by_phone[callee.phone].append(callee)
    cdrs: dict[str, list[Any]] = defaultdict(list)
    for call in calls:
        cdrs[call.phone].append(call)
    assert {p: len(v) for p, v in by_phone.items()} == {p: len(v) for p, v in cdrs.items()}
    for phone, ours in cdrs.items():
        theirs = by_phone[phone]
        for call, callee in zip(ours, theirs, strict=True):
            if callee.answered_at is None:
                assert call.answered_at is None and call.billed_telephony_seconds == 0
                continue
            assert call.answered_at is not None, (phone, "answered for the callee, not for us")
            if ended_by_callee:
                assert callee.ended_at is not None
                talked = callee.ended_at - callee.answered_at
                allowed = {rounded(talked - 0.5) or 15, rounded(talked + 0.5)}
                assert call.billed_telephony_seconds in allowed, (phone, talked)
            assert call.billed_speech_seconds == call.billed_telephony_seconds
        answered = [n for n, call in enumerate(ours) if call.answered_at is not None]
        assert not answered or answered[0] == len(ours) - 1, (phone, "dialled after an answer")
    # no contact lost: done, or pending with attempts its policy still allows
    for contact in outcome.contacts:
        assert contact.state in (store.DONE, store.PENDING), contact
        assert contact.lease_owner is None
        assert contact.attempts == len(cdrs[contact.phone])
