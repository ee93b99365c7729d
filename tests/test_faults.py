"""Faults, each with what happens stated and checked against real peers (sipp callees,
the real line processes, a real PostgreSQL that is stopped and started).

In every case the books balance: the ledger's debits = the CDRs' billed seconds = the
connected time the callee's own trace shows, rounded up to the increment; no contact is
lost (each is done, or waits for a retry its policy allows), none is dialled again after
a call of it was answered, and each INVITE the callee saw is one CDR.
(Also in the fault suite: the whole worker SIGKILLed, test_recovery.py; the MQTT broker
down mid-campaign, test_mqtt_worker.py.)
"""

from __future__ import annotations

import asyncio
import glob
import math
import os
import signal
import subprocess
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from siputil import Message, Sipp, rtp_base, sipps
from sqlalchemy import Connection, select

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer import runtime, store
from dialer.campaign_state import Action
from dialer.campaigns import CampaignSpec, add_trunk, change_state, create_campaign, import_contacts
from dialer.config import SipConfig
from dialer.worker import Worker

pytestmark = pytest.mark.sip

MINUTES = 60
T, S = Counter.TELEPHONY, Counter.SPEECH


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
                if not worker.sessions:
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


# -- what the callees saw ----------------------------------------------------------------


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


def rounded(seconds: float, increment: int = 15) -> int:
    return math.ceil(seconds / increment) * increment if seconds > 0 else 0


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


# -- the faults ---------------------------------------------------------------------------


async def test_callees_that_never_answer(db_url: str, tmp_path: Path) -> None:
    """Ringing forever: we CANCEL at the ring timeout, nothing is billed, each contact is
    tried as often as its policy says (3 attempts) and then finished as no_answer."""
    numbers = phones(3)
    with sipps(Sipp("uas_noanswer", tmp_path, calls=9)) as (uas,):
        outcome = await dial_campaign(
            db_url, tmp_path, {"main": (uas.uri, numbers)}, lines=1, ring_timeout=1.0,
            max_concurrent=3, cps=10, retries=2, retry_delay=0,
        )  # fmt: skip
        assert uas.wait(10) == 0, uas.error_text()  # every INVITE was CANCELled
    callees = callee_calls(uas)
    assert len(callees) == 9 and len(uas.received("CANCEL")) == 9
    check_books(outcome, callees)
    assert {c.disposition for c in outcome.calls} == {"no_answer"}
    assert all(c.last_disposition == "no_answer" and c.attempts == 3 for c in outcome.contacts)
    assert outcome.balances[T] == MINUTES * 60


async def test_callees_that_never_see_our_ack(db_url: str, tmp_path: Path) -> None:
    """The callee re-sends its 200 OK (our ACKs lost, as far as it knows), then hangs up:
    one answer, one meter, billed by its clock; the re-sent 200s change nothing."""
    numbers = phones(2)
    scenario = Sipp("uas_never_ack", tmp_path, calls=2, sets={"ring_ms": 100},
                    options=("-default_behaviors", "bye"))  # fmt: skip
    with sipps(scenario) as (uas,):
        outcome = await dial_campaign(
            db_url, tmp_path, {"main": (uas.uri, numbers)}, max_concurrent=2, cps=10,
        )  # fmt: skip
    callees = callee_calls(uas)
    assert len(uas.sent("SIP/2.0 200", "INVITE")) == 8  # four 200 OKs per call
    check_books(outcome, callees)
    assert [c.disposition for c in outcome.calls] == ["answered"] * 2
    assert all(c.hangup_by == "remote" for c in outcome.calls)
    assert all(c.billed_telephony_seconds == 15 for c in outcome.calls)


async def test_callees_that_never_answer_our_bye(db_url: str, tmp_path: Path) -> None:
    """We hang up (max call seconds) and the callee never answers the BYE: billing stops
    at our first BYE, not when the BYE transaction gives up 32 s later, and the slot is
    free at once (the next contact is dialled while our BYE is still being re-sent)."""
    numbers = phones(2)
    with sipps(Sipp("uas_ignore_bye", tmp_path, calls=2)) as (uas,):
        outcome = await dial_campaign(
            db_url, tmp_path, {"main": (uas.uri, numbers)}, max_concurrent=1, cps=10,
            max_call_seconds=2,
        )  # fmt: skip
    callees = callee_calls(uas)
    check_books(outcome, callees)
    assert all(c.hangup_by == "local" and c.billed_telephony_seconds == 15 for c in outcome.calls)
    first_byes = [m.at for m in uas.received("BYE")
                  if m.header("Call-ID") == uas.received("BYE")[0].header("Call-ID")]  # fmt: skip
    assert len(first_byes) >= 2  # re-sent: the callee never answered it
    assert callees[1].invited_at < first_byes[-1]


async def test_a_503_storm(db_url: str, tmp_path: Path) -> None:
    """Every INVITE refused with 503: nothing billed, each contact tried as its policy says
    and then finished as failed; the storm never speeds the dialling past the trunk's and
    campaign's calls per second (2/s: at most 2 + 2 x seconds INVITEs in any stretch)."""
    numbers = phones(5)
    with sipps(Sipp("uas_reject_503", tmp_path, calls=10)) as (uas,):
        outcome = await dial_campaign(
            db_url, tmp_path, {"main": (uas.uri, numbers)}, max_concurrent=4, cps=2,
            retries=1, retry_delay=0,
        )  # fmt: skip
    callees = callee_calls(uas)
    assert len(callees) == 10
    check_books(outcome, callees)
    assert {c.disposition for c in outcome.calls} == {"failed"}
    assert {c.sip_status for c in outcome.calls} == {503}
    assert all(c.state == store.DONE and c.attempts == 2 for c in outcome.contacts)
    times = [c.invited_at for c in callees]
    for i, start in enumerate(times):
        for j in range(i + 1, len(times)):
            # the callee's receive times: a grant-to-INVITE delay of up to 0.25 s allowed
            assert j - i + 1 <= 2 + 2 * (times[j] - start + 0.25), (i, j, times[j] - start)


async def test_malformed_sip_leaves_the_line_and_other_calls_alone(
    db_url: str, tmp_path: Path
) -> None:
    """A callee sending unparseable SIP (a 180 without Call-ID, a datagram of garbage) and
    a 200 OK whose SDP has no usable codec, next to well-behaved callees on the same line:
    the broken message is dropped, the unusable answer is ended at once (pjsip: 415) and
    billed as the answered call it was (one increment, as the callee's trace shows);
    the line is never restarted and the good calls are billed by their callees' clocks."""
    bad, good = phones(2), phones(3, base=7100)
    with sipps(
        Sipp("uas_malformed", tmp_path, calls=2),
        Sipp("uas_answer", tmp_path, calls=3, sets={"ring_ms": 200, "talk_ms": 2500}),
    ) as (broken, fine):
        outcome = await dial_campaign(
            db_url, tmp_path, {"bad": (broken.uri, bad), "good": (fine.uri, good)},
            max_concurrent=2, cps=10, retries=0,
        )  # fmt: skip
        pids = outcome.worker.pool.pids()
    check_books(outcome, callee_calls(broken, fine))
    by_phone = {c.phone: c for c in outcome.calls}
    assert all(by_phone[p].sip_status == 415 and by_phone[p].billed_telephony_seconds == 15
               for p in bad)  # fmt: skip
    assert all(by_phone[p].disposition == "answered" and by_phone[p].hangup_by == "remote"
               for p in good)  # fmt: skip
    assert outcome.worker.pool.line_deaths == 0 and all(pids)


async def test_a_line_process_killed_mid_call(db_url: str, tmp_path: Path) -> None:
    """SIGKILL of one line process with a call up on each of two lines: the call on the
    dead line ends `interrupted` and is billed up to the moment the line died (what the
    ledger holds: increments are taken in advance), its contact is finished, never
    dialled again (someone answered); the line is restarted; the other call goes on and
    is billed by its callee's clock. The killed call's callee never gets a BYE (the
    dialog died with the process): the carrier ends it by its own timers."""
    numbers = phones(2)
    killed: dict[str, Any] = {}

    async def kill_a_line(database: Database, worker: Worker) -> None:
        await calls_answered(worker, 2)
        await asyncio.sleep(1.0)
        victim = next(s for s in worker.sessions.values() if s.line == "line0")
        killed["call_id"] = victim.call_id
        pid = worker.pool.pids()[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    with sipps(Sipp("uas_answer", tmp_path, calls=2, sets={"ring_ms": 0, "talk_ms": 0})) as (uas,):
        outcome = await dial_campaign(
            db_url, tmp_path, {"main": (uas.uri, numbers)}, lines=2, max_concurrent=2,
            cps=10, max_call_seconds=4, during=kill_a_line,
        )  # fmt: skip
    callees = callee_calls(uas)
    dead = next(c for c in outcome.calls if c.call_id == killed["call_id"])
    alive = next(c for c in outcome.calls if c.call_id != killed["call_id"])
    assert dead.disposition == "interrupted" and dead.hangup_by == "line"
    assert dead.billed_telephony_seconds == 15  # up ~1 s: the first increment, no more
    assert alive.disposition == "answered" and alive.billed_telephony_seconds == 15
    assert next(c for c in callees if c.phone == dead.phone).ended_at is None
    # the books: everything billed is in the ledger; the dead call's callee has no end
    assert MINUTES * 60 - outcome.balances[T] == 30 and outcome.consistent
    assert all(c.state == store.DONE and c.attempts == 1 for c in outcome.contacts)
    assert outcome.worker.pool.line_deaths == 1


async def calls_answered(worker: Worker, count: int, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while worker.calls_by_state()["answered"] < count:
        assert asyncio.get_running_loop().time() < deadline, "calls never answered"
        await asyncio.sleep(0.05)


def _postgres(action: str) -> None:
    version = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))[-1]
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        command += ["-m", "fast"]
    if os.geteuid() != 0:
        command.insert(0, "sudo")
    # starting a running server exits 2: fine, it is up
    subprocess.run(command, check=action == "stop", capture_output=True, timeout=60)


async def test_postgresql_restarted_mid_campaign(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL stopped for 5 s while two calls are up, then started: the calls go on and
    end while it is away (their settlements wait and are retried: idempotent writes), no
    new call is placed without the database, then the campaign finishes; the books
    balance to the second."""
    numbers = phones(4)

    async def restart_postgres(database: Database, worker: Worker) -> None:
        await calls_answered(worker, 2)
        placed = worker.placed
        await asyncio.to_thread(_postgres, "stop")
        try:
            await asyncio.sleep(5)
            assert worker.placed == placed  # no claim, no INVITE without the database
        finally:
            await asyncio.to_thread(_postgres, "start")

    try:
        with sipps(Sipp("uas_answer", tmp_path, calls=4,
                        sets={"ring_ms": 100, "talk_ms": 3000})) as (uas,):  # fmt: skip
            outcome = await dial_campaign(
                pg_url, tmp_path, {"main": (uas.uri, numbers)}, lines=1, max_concurrent=2,
                cps=10, during=restart_postgres, within=120,
            )  # fmt: skip
    finally:
        await asyncio.to_thread(_postgres, "start")  # never leave the suite without it
    check_books(outcome, callee_calls(uas))
    assert outcome.worker.db_retries > 0  # the two calls' settlements waited for it
    assert [c.disposition for c in outcome.calls] == ["answered"] * 4
    assert all(c.billed_telephony_seconds == 15 for c in outcome.calls)
