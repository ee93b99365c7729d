"""The worker's own fault handling, driven by a scripted line pool (an in-memory double:
the timings below are impossible to hit reliably over real SIP) on a real database.

- A hangup the line stamped just before an increment boundary but that reaches the
  worker just after it: billed up to the hangup, not one increment more, and settled.
- An unexpected error in a dialling round: logged, the worker goes on (no silent worker
  leaving calls up that nobody bills).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter, Tariff
from dialer import store
from dialer.campaign_state import Action
from dialer.campaigns import CampaignSpec, add_trunk, change_state, create_campaign, import_contacts
from dialer.worker import Worker
from sip.events import Answered, Hangup, LineEvent
from sip.pool import DialOutcomeUnknown, DialRefused


class ScriptedPool:
    """Answers every dial at once; each call then hangs up as ``hangup_after`` says, the
    hangup stamped ``stamp_early`` s before it reaches the worker."""

    def __init__(
        self, hangup_after: float, stamp_early: float, fail_first: Exception | None = None
    ) -> None:
        self.fail_first = fail_first  # raised by the first dial
        self.hangup_after = hangup_after
        self.stamp_early = stamp_early
        self.queue: asyncio.Queue[LineEvent] = asyncio.Queue()
        self.dialled: list[str] = []
        self.hung_up: list[str] = []
        self.line_deaths = 0
        self.lines_up = 1
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def free_slots(self) -> int:
        return 4

    async def dial(self, call_id: str, to: str, trunk: str, **_: Any) -> str:
        if self.fail_first is not None:
            failure, self.fail_first = self.fail_first, None
            raise failure
        self.dialled.append(to)
        task = asyncio.create_task(self._call(call_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return "line0"

    async def _call(self, call_id: str) -> None:
        answered = time.time()
        await self.queue.put(Answered(call_id=call_id, at=answered))
        # the hangup happens at answered + hangup_after, and is seen stamp_early later
        await asyncio.sleep(self.hangup_after + self.stamp_early)
        await self.queue.put(
            Hangup(call_id=call_id, by="remote", status=200, at=answered + self.hangup_after)
        )

    def reconfigure(self, trunks: tuple[Any, ...]) -> None:
        self.trunks = trunks  # the worker's trunks, read at its first refresh

    async def hangup(self, call_id: str, reason: str = "") -> None:
        self.hung_up.append(call_id)

    async def play(self, *_: Any) -> None:
        return None

    async def stop_play(self, *_: Any) -> None:
        return None

    async def transfer(self, *_: Any) -> None:
        return None

    async def next_event(self, within: float | None = None) -> LineEvent:
        async with asyncio.timeout(within):
            return await self.queue.get()


async def campaign(db_url: str, tmp_path: Path, phones: list[str]) -> tuple[Database, Ledger]:
    database = Database(db_url)
    ledger = Ledger(database, Tariff(increment_seconds=1))
    await ledger.create_account("acme")
    for counter in Counter:
        await ledger.buy_package("acme", counter, 10)
    await add_trunk(database, name="main", account="acme", kind="platform", uri="sip:127.0.0.1")
    await create_campaign(database, CampaignSpec(name="spring", account="acme", trunk="main",
                                                 max_concurrent=4, cps=10))  # fmt: skip
    csv = tmp_path / "c.csv"
    csv.write_text("phone\n" + "\n".join(phones) + "\n")
    await import_contacts(database, "spring", csv)
    await change_state(database, ledger.tariff, "spring", Action.START)
    return database, ledger


async def run_until_done(worker: Worker, database: Database, within: float = 20) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop, drain_seconds=2))
    try:
        for _ in range(int(within * 10)):
            row = await database.run(lambda c: store.campaign_by_name(c, "spring"), write=False)
            if row.state == "completed":
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task


async def test_a_hangup_stamped_before_a_boundary_arriving_after_it(
    db_url: str, tmp_path: Path
) -> None:
    """1 s increments; the callee hangs up 3 ms before the 2nd boundary and the event
    arrives 8 ms after it: 2 increments (the call lasted 1.997 s), not 3, and the call
    is settled (no "earlier than the previous event" crash leaving the contact leased)."""
    database, ledger = await campaign(db_url, tmp_path, ["+14155550100", "+14155550101"])
    try:
        pool = ScriptedPool(hangup_after=1.997, stamp_early=0.011)
        worker = Worker(database, ledger, pool, worker_id="w1")  # type: ignore[arg-type]
        await run_until_done(worker, database)
        calls = await database.run(lambda c: list(c.execute(select(store.CALL))), write=False)
        assert len(calls) == 2
        for call in calls:
            assert call.disposition == "answered", call
            assert call.billed_telephony_seconds == 2 == call.billed_speech_seconds
        balances = await ledger.balances("acme")
        assert balances[Counter.TELEPHONY] == 600 - 4 and balances[Counter.SPEECH] == 600 - 4
        assert not pool.hung_up  # no session failed
    finally:
        await database.dispose()


async def test_an_unexpected_error_in_a_round_does_not_stop_the_worker(
    db_url: str, tmp_path: Path
) -> None:
    database, ledger = await campaign(db_url, tmp_path, ["+14155550100"])
    try:
        pool = ScriptedPool(hangup_after=0.3, stamp_early=0.0)
        worker = Worker(database, ledger, pool, worker_id="w1")  # type: ignore[arg-type]
        refresh = worker.cache.refresh
        failures: list[int] = []

        async def flaky_refresh() -> None:
            if not failures:
                failures.append(1)
                raise RuntimeError("something nobody expected")
            await refresh()

        worker.cache.refresh = flaky_refresh  # type: ignore[method-assign]
        await run_until_done(worker, database)
        assert failures and pool.dialled == ["+14155550100"]
        row = await database.run(lambda c: store.campaign_by_name(c, "spring"), write=False)
        assert row.state == "completed"
    finally:
        with contextlib.suppress(Exception):
            await database.dispose()


@pytest.mark.parametrize(
    "failure", [DialRefused("line full"), RuntimeError("a bug in the pool")], ids=str
)
async def test_a_dial_that_never_left(failure: Exception, db_url: str, tmp_path: Path) -> None:
    """The line refuses the dial (or something unexpected breaks it) after the CDR was
    written: the CDR is forgotten, the attempt given back, no call left half-known; the
    contact is dialled again and the campaign completes."""
    database, ledger = await campaign(db_url, tmp_path, ["+14155550100"])
    try:
        pool = ScriptedPool(hangup_after=0.3, stamp_early=0.0, fail_first=failure)
        worker = Worker(database, ledger, pool, worker_id="w1")  # type: ignore[arg-type]
        await run_until_done(worker, database)
        calls = await database.run(lambda c: list(c.execute(select(store.CALL))), write=False)
        contacts = await database.run(lambda c: list(c.execute(select(store.CONTACT))), write=False)
        assert [c.disposition for c in calls] == ["answered"]  # no orphan CDR
        assert [(c.state, c.attempts) for c in contacts] == [("done", 1)]
        assert not worker.calls and pool.dialled == ["+14155550100"]
    finally:
        await database.dispose()


async def test_a_dial_whose_outcome_is_unknown(db_url: str, tmp_path: Path) -> None:
    """The line froze and was killed before acknowledging: the INVITE may have left. The
    CDR is kept and closed `interrupted`, the attempt counts, the contact is retried."""
    database, ledger = await campaign(db_url, tmp_path, ["+14155550100"])
    try:
        await database.run(lambda c: c.execute(
            store.CAMPAIGN.update().values(retry={"max_attempts": 3, "delay_seconds": 0})
        ))  # fmt: skip
        pool = ScriptedPool(hangup_after=0.3, stamp_early=0.0,
                            fail_first=DialOutcomeUnknown("line0 did not answer"))  # fmt: skip
        worker = Worker(database, ledger, pool, worker_id="w1")  # type: ignore[arg-type]
        await run_until_done(worker, database)
        calls = await database.run(
            lambda c: list(c.execute(select(store.CALL).order_by(store.CALL.c.attempt))),
            write=False,
        )
        assert [(c.attempt, c.disposition) for c in calls] == [(1, "interrupted"), (2, "answered")]
        assert calls[0].billed_telephony_seconds == 0
    finally:
        await database.dispose()


async def test_every_log_line_of_a_call_carries_its_ids(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call's task binds its ids to the log context: lines logged anywhere below it
    (the session's notes, the settlement, a database retry) carry them unasked."""
    import structlog
    from structlog.testing import LogCapture

    capture = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        database, ledger = await campaign(sqlite_url, tmp_path, ["+14155550100", "+14155550101"])
        try:
            pool = ScriptedPool(hangup_after=0.3, stamp_early=0.0)
            worker = Worker(database, ledger, pool, worker_id="w1")  # type: ignore[arg-type]
            await run_until_done(worker, database)
        finally:
            await database.dispose()
    finally:
        structlog.reset_defaults()
    of_calls = [e for e in capture.entries if e["event"] in ("answered", "call ended")]
    assert len(of_calls) == 4, capture.entries
    assert {e["call_id"] for e in of_calls} == {
        e["call_id"] for e in of_calls if e["event"] == "answered"
    }
    for entry in of_calls:
        assert entry["campaign"] == "spring" and entry["account"] == "acme", entry
        assert entry["call_id"].startswith("spring-"), entry
    # nothing leaks out of the call's task into the worker's own lines
    assert all(
        "call_id" not in e for e in capture.entries if e["event"] == "stopping: no new calls"
    )
