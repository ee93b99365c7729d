"""The I/O side of one call: a task per call carries out what its ``CallSession`` decides.

Everything a call does to the world goes through here, in the order the session gave:
debits (``Ledger.debit``, idempotent, retried through a database outage), line commands
(a call already gone is no error), CDR writes, the settlement (contact released and CDR
closed in one transaction), events and log lines. The call's ids are bound to the task's
log context, so every line about the call carries them.

A session that fails (a bug, a write that cannot be done) never leaves a call up that
nobody bills: the call is hung up and settled at once from what the ledger holds, by the
same rule recovery uses (``store.settle_call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Connection
from structlog.contextvars import bound_contextvars

from billing.ledger import Ledger
from billing.period import utcnow
from billing.storage import Database
from dialer import store
from dialer.call import (
    Action,
    CallFailed,
    CallPlan,
    CallSession,
    Charge,
    Clock,
    ForgetPrompt,
    HangUp,
    Note,
    Play,
    Publish,
    Record,
    Settle,
    StartTransfer,
    StopPlay,
)
from dialer.durable import DurableWrites
from dialer.events import Events
from dialer.metrics import WorkerMetrics
from dialer.retry import Disposition
from sip.events import Answered, LineEvent
from sip.pool import LinePool, PoolError

log = structlog.get_logger("dialer.worker")


def read_clock() -> Clock:
    return Clock(time.monotonic(), time.time())


@dataclass
class CallIO:
    """What every call's I/O needs; one per worker."""

    db: Database
    ledger: Ledger
    pool: LinePool
    writes: DurableWrites
    metrics: WorkerMetrics
    worker_id: str
    events: Events | None
    forget_prompt: Callable[[str], None]


@dataclass
class Call:
    """One call this worker placed: its session, its events, its task."""

    session: CallSession
    io: CallIO
    line: str | None = None
    task: asyncio.Task[None] | None = None
    inbox: asyncio.Queue[LineEvent] = field(default_factory=asyncio.Queue)

    @property
    def plan(self) -> CallPlan:
        return self.session.plan

    @property
    def answered_at(self) -> float | None:
        return self.session.answered_at

    def deliver(self, event: LineEvent) -> None:
        self.inbox.put_nowait(event)

    async def run(self) -> None:
        plan = self.plan
        with bound_contextvars(call_id=plan.call_id, campaign=plan.campaign,
                               account=plan.account):  # fmt: skip
            try:
                while not self.session.settled:
                    event = await self._next(self.session.next_deadline())
                    clock = read_clock()
                    if event is None:
                        await self._carry_out(self.session.on_timer(clock))
                    else:
                        answered = isinstance(event, Answered)
                        await self._carry_out(
                            self.session.on_event(event, clock),
                            lag_from=clock.event_time(event) if answered else None,
                        )
            except Exception as exc:
                log.exception("call session failed: hanging up and settling it")
                if isinstance(exc, CallFailed):  # what was decided before the script failed
                    with contextlib.suppress(Exception):
                        await self._carry_out(exc.actions)
                with contextlib.suppress(Exception):
                    await self.io.pool.hangup(plan.call_id, "session failed")
                await self._settle_failed()

    async def _next(self, deadline: float | None) -> LineEvent | None:
        """The next event, or None when the deadline comes first. Events already queued
        come first (after a stall, a zero timeout would fire before them)."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self.inbox.get_nowait()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None

    async def _carry_out(self, actions: list[Action], lag_from: float | None = None) -> None:
        """``lag_from``: the answer's time; the billing lag (answer -> first debit
        committed) is measured at the first charge."""
        io = self.io
        for action in actions:
            match action:
                case Charge():
                    await self._charge(action)
                    if lag_from is not None:
                        io.metrics.billing_lag.append(time.monotonic() - lag_from)
                        lag_from = None
                case Play() | StopPlay() | StartTransfer() | HangUp():
                    with contextlib.suppress(PoolError):  # a call already gone
                        await self._command(action)
                case Publish():
                    if io.events is not None:
                        io.events.emit(action.kind, **action.fields)
                case Note():
                    getattr(log, action.level)(action.message, **action.fields)
                case Record():
                    await self._record(action)
                case ForgetPrompt():
                    io.forget_prompt(action.wav)
                case Settle():
                    await self._settle(action)

    async def _command(self, action: Play | StopPlay | StartTransfer | HangUp) -> None:
        pool, call_id = self.io.pool, self.plan.call_id
        match action:
            case Play():
                await pool.play(call_id, action.wav)
            case StopPlay():
                await pool.stop_play(call_id)
            case StartTransfer():
                await pool.transfer(call_id, action.agent, action.mode, action.ring_timeout)
            case HangUp():
                await pool.hangup(call_id, action.reason)

    async def _charge(self, charge: Charge) -> None:
        plan, io, debit = self.plan, self.io, charge.debit
        result = await io.writes.write(
            "debit",
            functools.partial(
                io.ledger.debit, plan.account, debit.counter, debit.seconds,
                call_id=plan.call_id, increment=debit.increment, campaign=plan.campaign,
                contact=plan.phone, at=charge.due,
            ),
        )  # fmt: skip
        if not result.replayed and io.events is not None:
            io.events.emit("billing.debit", account=plan.account, counter=debit.counter.value,
                           seconds=debit.seconds, balance_seconds=result.balance_seconds,
                           call_id=plan.call_id, increment=debit.increment,
                           campaign=plan.campaign)  # fmt: skip

    async def _record(self, record: Record) -> None:
        def work(conn: Connection) -> None:
            store.write_call(conn, record.cdr)

        await self.io.writes.write("call record", lambda: self.io.db.run(work))

    async def _settle(self, settle: Settle) -> None:
        plan, io = self.plan, self.io

        def work(conn: Connection) -> bool:
            # the contact's row first, then the CDR: the order recovery locks them in
            held = store.release_contact(conn, plan.contact_id, settle.disposition.value,
                                         settle.retry_at, io.worker_id)  # fmt: skip
            store.write_call(conn, settle.cdr)
            return held

        if not await io.writes.write("call settlement", lambda: io.db.run(work)):
            log.error("lease lost before the call was settled (recovered elsewhere as "
                      "interrupted); the CDR now has the final billing",
                      contact=plan.contact_id)  # fmt: skip
        io.metrics.dispositions[settle.disposition.value] += 1

    async def _settle_failed(self) -> None:
        """The CDR closed `interrupted`, billed what the ledger holds, and the contact
        released, as recovery would, but at once."""
        plan, io = self.plan, self.io
        now = utcnow()

        def work(conn: Connection) -> dict[str, int]:
            return store.settle_call(conn, plan.call_id, plan.contact_id, io.worker_id, now,
                                     plan.retry.to_json())  # fmt: skip

        try:
            billed = await io.writes.write("failed call settlement", lambda: io.db.run(work))
        except Exception:  # recovery settles it at the next start (same worker id)
            log.exception("could not settle the failed call")
            return
        io.metrics.dispositions[Disposition.INTERRUPTED.value] += 1
        if io.events is not None:
            io.events.emit("call.ended", account=plan.account, campaign=plan.campaign,
                           call_id=plan.call_id, disposition=Disposition.INTERRUPTED.value,
                           sip_status=None, hangup_by="worker",
                           billed_seconds=billed)  # fmt: skip
