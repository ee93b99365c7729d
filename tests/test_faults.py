"""Faults, each with what happens stated and checked against real peers (sipp callees,
the real line processes, a real PostgreSQL that is stopped and started).

In every case the books balance: the ledger's debits = the CDRs' billed seconds = the
connected time the callee's own trace shows, rounded up to the increment; no contact is
lost (each is done, or waits for a retry its policy allows), none is dialled again after
a call of it was answered, and each INVITE the callee saw is one CDR.
(Also in the fault suite: the whole worker SIGKILLed, test_liveness_process.py; the MQTT broker
down mid-campaign, test_mqtt_worker.py.)
"""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from siputil import Sipp, sipps
from workerutil import MINUTES, callee_calls, calls_answered, check_books, dial_campaign, phones

from billing.storage import Database
from billing.tariff import Counter
from dialer import store
from dialer.worker import Worker

pytestmark = pytest.mark.sip

T, S = Counter.TELEPHONY, Counter.SPEECH


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
        victim = next(s for s in worker.calls.values() if s.line == "line0")
        killed["call_id"] = victim.plan.call_id
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
        placed = worker.metrics.placed
        await asyncio.to_thread(_postgres, "stop")
        try:
            await asyncio.sleep(5)
            assert worker.metrics.placed == placed  # no claim, no INVITE without the database
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
    assert outcome.worker.metrics.db_retries > 0  # the two calls' settlements waited for it
    assert [c.disposition for c in outcome.calls] == ["answered"] * 4
    assert all(c.billed_telephony_seconds == 15 for c in outcome.calls)
