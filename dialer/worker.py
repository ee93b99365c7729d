"""The campaign worker: claims contacts, dials through the line pool, runs each call.

The life of one call (docs/architecture.md): a running campaign (``CampaignCache``), an
open calling window in the contact's time zone, a pacing token and a free slot -> the
claim, in one transaction with the balance gate (``claims.claim_contacts``) -> the CDR
written, the INVITE sent -> a task per call (``dialer.calls``) feeds the line's events to
the call's pure ``CallSession`` (``dialer.call``: billing, script, disposition, retry)
and carries out what it decides -> the settlement releases the contact.

This module keeps only the I/O around that: the dialling loop, claims and give-backs,
routing line events to their calls, balance signals, leases and recovery, stopping.

A debit that leaves a charged counter <= 0 pauses every campaign of the account; calls
that are up continue to their natural end and keep being billed. The gate in the claim
transaction makes sure no INVITE leaves for the account afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Connection

from billing.ledger import BalanceSignal, Ledger, SignalKind
from billing.period import utcnow
from billing.storage import Database, DatabaseUnavailable, first_line
from dialer import claims, store
from dialer.call import CallPlan, CallSession
from dialer.calls import Call, CallIO, read_clock
from dialer.campaign_cache import CampaignCache, CampaignView
from dialer.campaign_state import Action, CampaignState, transition
from dialer.campaigns import campaign_status, pause_for_balance, status_of
from dialer.durable import FIRST_RETRY, MAX_RETRY, DurableWrites
from dialer.events import Events
from dialer.inbound import InboundRecords, inbound_cdr
from dialer.liveness import Liveness
from dialer.metrics import WorkerMetrics
from dialer.windows import parse_zone
from sip.events import InboundRejected, Interrupted, LineDied, LineEvent, Registration
from sip.pool import DialOutcomeUnknown, DialRefused, LinePool, PoolClosed, PoolError
from sip.recognizer import private_temp_dir

if TYPE_CHECKING:
    from dialer.mqtt import MqttBridge

log = structlog.get_logger("dialer.worker")

STATUS_SECONDS = 5.0
RECOVER_SECONDS = 60.0  # look for dead workers' calls; renew our own leases
LOOP_SECONDS = 0.05
LEASE_SECONDS = 900
PAUSE_AGAIN_SECONDS = 2.0
INBOUND_SUMMARY_SECONDS = 60.0


class Worker:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        pool: LinePool,
        *,
        worker_id: str | None = None,
        assets: Path | None = None,
        ring_timeout: float = 30.0,
        events: Events | None = None,
        campaign_header: bool = False,
    ) -> None:
        self.db = db
        self.events = events
        self.ledger = ledger
        self.pool = pool
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        self.ring_timeout = ring_timeout
        self.campaign_header = campaign_header  # X-Campaign tells the far end our customer
        self.metrics = WorkerMetrics()
        self.mqtt: MqttBridge | None = None  # the MQTT bridge, when the runtime made one
        self.ops_port: int | None = None  # the metrics/health endpoints, when configured
        self.liveness: Liveness | None = None  # heartbeat and fence, when the runtime made one
        self.writes = DurableWrites(self.metrics)
        self.cache = CampaignCache(db, pool, assets or private_temp_dir("dialer-assets"), events)
        self.calls: dict[str, Call] = {}
        self._io = CallIO(db, ledger, pool, self.writes, self.metrics, self.worker_id, events,
                          self.cache.forget_prompt)  # fmt: skip
        self.inbound = InboundRecords()
        self._inbound_summary_at = time.monotonic()
        # claimed contacts not dialled (yet), with the call id of a CDR written for them
        self._undialled: dict[int, str | None] = {}
        self._paused_at: dict[str, float] = {}  # account: when its campaigns were paused
        self._exhaustions: dict[str, int] = {}  # per account: EXHAUSTED signals seen
        self._stopping = False
        self._states: dict[str, tuple[str, str, str | None]] = {}  # name: account, state, why
        self._status_at = 0.0
        self._states_seen = False
        self._recovered = 0.0
        ledger.subscribe(self._on_signal)

    @property
    def lines(self) -> LinePool:
        return self.pool

    def mqtt_connected(self) -> bool | None:
        """None: no MQTT configured; else whether the bridge is connected now."""
        return None if self.mqtt is None else self.mqtt.connected.is_set()

    def calls_up(self) -> int:
        return len(self.calls)

    def calls_by_state(self) -> dict[str, int]:
        """Calls up: dialing (no answer yet), answered (with the bot), agent (bridged)."""
        counts = {"dialing": 0, "answered": 0, "agent": 0}
        for call in list(self.calls.values()):
            if call.answered_at is None:
                counts["dialing"] += 1
            elif call.session.with_agent:
                counts["agent"] += 1
            else:
                counts["answered"] += 1
        return counts

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, drain_seconds: float = 30.0) -> None:
        """Dial until ``stop`` is set; then let calls finish up to ``drain_seconds``."""
        router = asyncio.create_task(self._route_events(), name="worker-events")
        leases = asyncio.create_task(self._keep_leases(), name="worker-leases")
        try:
            await self._dial_until(stop)
            self._stopping = True
            log.info("stopping: no new calls", calls_up=len(self.calls))
            await self._drain(drain_seconds)
            if self.events is not None and not self.writes.abandoned:  # states reached
                with contextlib.suppress(Exception):  # while draining (completed...)
                    await self._complete_finished()
                    await self._publish_states()
        finally:
            self.cache.close()
            for task in (router, leases):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _dial_until(self, stop: asyncio.Event) -> None:
        recovered_at_start = False
        pause = LOOP_SECONDS
        while not stop.is_set():
            try:
                if not recovered_at_start:
                    await self._recover(own_previous=True)
                    recovered_at_start = True
                await self._dial_round()
                pause = LOOP_SECONDS
                self.metrics.last_round = time.monotonic()
            except DatabaseUnavailable as exc:
                # no claim, no call: calls up go on, their writes wait (DurableWrites)
                if pause == LOOP_SECONDS:
                    log.error("database unavailable: not dialling", error=str(exc))
                pause = min(max(pause * 2, FIRST_RETRY), MAX_RETRY)
            except Exception:
                # never a silent worker: whatever went wrong, log it and try again
                # (calls up keep their tasks; /health reports the stale loop)
                log.exception("dialling round failed: retrying")
                pause = min(max(pause * 2, FIRST_RETRY), MAX_RETRY)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def _drain(self, seconds: float) -> None:
        await self._calls_gone(seconds)
        for call_id in list(self.calls):
            with contextlib.suppress(PoolError):
                await self.pool.hangup(call_id, "worker stopping")
        await self._calls_gone(10)
        if self.calls:  # their writes wait for a database that is away: stop waiting;
            self.writes.abandon()  # the next start (same id) settles them from the ledger
            log.error("stopping with calls unsettled (database unavailable)",
                      calls=sorted(self.calls))  # fmt: skip
            await self._calls_gone(2 * MAX_RETRY)
        if self._undialled:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._give_back(), MAX_RETRY)

    async def _calls_gone(self, within: float) -> None:
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    async def cancel_unanswered(self, reason: str) -> None:
        """Hang up the calls not answered yet (a fenced worker: the settlement elsewhere
        may give their contacts to another worker)."""
        for call in list(self.calls.values()):
            if call.answered_at is None:
                with contextlib.suppress(PoolError):
                    await self.pool.hangup(call.plan.call_id, reason)

    # -- dialling -------------------------------------------------------------------------

    async def _dial_round(self) -> None:
        if self._undialled:
            await self._give_back()
        if time.monotonic() - self._recovered >= RECOVER_SECONDS:
            await self._recover()
        if self.cache.due():
            await self.cache.refresh()
            if self.events is not None:
                await self._publish_states()
            await self._complete_finished()
        if self.liveness is not None and self.liveness.fenced:
            return  # others may be settling our calls (dialer.liveness): no new claim
        for view in list(self.cache.campaigns.values()):
            if self._stopping:
                return
            try:
                await self._dial_campaign(view)
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # one campaign's trouble must not stop the others
                await self.cache.unusable(view.row, exc)

    def _active(self, campaign_id: int) -> int:
        return sum(1 for c in self.calls.values() if c.plan.campaign_id == campaign_id)

    async def _dial_campaign(self, view: CampaignView) -> None:
        row = view.row
        why = self.cache.carried(view)
        if why is not None:
            await self.cache.block(row, why)
            return
        # a local first look (saves claims that cannot succeed); the claim itself applies
        # the trunk's and campaign's limits all workers share, as the database has them
        room = min(row.max_concurrent - self._active(row.id), self.pool.free_slots)
        now_mono = time.monotonic()
        want = 0
        while want < room and view.bucket.available(now_mono):
            view.bucket.take(now_mono)
            want += 1
        if want <= 0:
            return
        now = utcnow()
        aware = now.replace(tzinfo=UTC)

        def is_open(zone: str) -> bool:
            return view.window.is_open(aware, parse_zone(zone))

        def next_open(zone: str) -> datetime:
            return view.window.next_open(aware, parse_zone(zone)).replace(tzinfo=None)

        def claim(conn: Connection) -> claims.ClaimResult:
            return claims.claim_contacts(
                conn, row, view.trunk_kind, self.ledger.tariff, self.worker_id, now, want,
                LEASE_SECONDS, is_open, next_open,
            )  # fmt: skip

        seen = self._exhaustions.get(row.account, 0)
        result = await self.db.run(claim)
        for contact_id, phone, reason in result.refused:
            log.warning("number refused by policy: not dialled", campaign=row.name,
                        contact=contact_id, reason=reason)  # fmt: skip
            self._emit("contact.refused", account=row.account, campaign=row.name,
                       contact=contact_id, phone=phone, reason=reason)  # fmt: skip
        if not result.gate_open:
            log.warning("balance gate closed", account=row.account, reason=result.gate_reason)
            await self._pause_account(row.account, durable=False)
            return
        # claimed and not dialled yet: given back if this round stops short (balance
        # exhausted meanwhile, a refused dial, the database gone), now or next round
        self._undialled.update(dict.fromkeys((c.contact_id for c in result.contacts), None))
        try:
            for contact in result.contacts:
                # A debit of a call up may exhaust the balance while this batch is dialled:
                # then not one more INVITE (the claim's gate was read before it).
                if self._exhaustions.get(row.account, 0) != seen:
                    break
                if not await self._dial(view, contact):
                    break
        finally:
            if self._undialled:
                await self._give_back()

    async def _give_back(self) -> None:
        undialled = dict(self._undialled)

        def give_back(conn: Connection) -> None:
            for contact_id, call_id in sorted(undialled.items()):
                store.unclaim(conn, contact_id, self.worker_id)
                if call_id is not None:  # its CDR was written, the INVITE never left
                    store.forget_call(conn, call_id)

        await self.db.run(give_back)
        for contact_id in undialled:
            self._undialled.pop(contact_id, None)

    def _plan(self, view: CampaignView, contact: claims.Claimed) -> CallPlan:
        row = view.row
        return CallPlan(
            call_id=f"{row.name}-{contact.contact_id}-{contact.attempt}-{uuid.uuid4().hex[:6]}",
            account=row.account, campaign=row.name, campaign_id=row.id,
            contact_id=contact.contact_id, phone=contact.phone, attempt=contact.attempt,
            trunk_kind=view.trunk_kind, retry=view.retry,
            max_call_seconds=row.max_call_seconds, agent_uri=row.agent_uri,
            attributes=contact.attributes,
        )  # fmt: skip

    async def _dial(self, view: CampaignView, contact: claims.Claimed) -> bool:
        """Place one claimed contact's call. False: the line refused it (no INVITE left;
        the contact is given back with the rest of the batch)."""
        row, plan = view.row, self._plan(view, contact)
        session = CallSession(plan, self.ledger.tariff, view.script, view.audio, read_clock())
        call = Call(session, self._io)
        # the CDR exists before the INVITE leaves: a crash after it can never make the
        # call look "claimed, never dialled" (that would give the attempt back and dial
        # a contact who may have answered)
        cdr = dict(session.cdr)
        self._undialled[contact.contact_id] = plan.call_id  # given back: CDR forgotten
        await self.db.run(lambda c: store.write_call(c, cdr))
        self.calls[plan.call_id] = call
        try:
            call.line = await self.pool.dial(
                plan.call_id,
                contact.phone,
                view.trunk_name,
                ring_timeout=self.ring_timeout,
                caller_id=row.caller_id,
                headers={"X-Campaign": row.name} if self.campaign_header else {},
                listen=view.script.phrases(),
            )
        except DialOutcomeUnknown as exc:
            # the line froze and was killed; the INVITE may have left with it: the
            # attempt counts, the call is settled as interrupted like any lost line's
            log.error("dial outcome unknown: settled as interrupted", call_id=plan.call_id,
                      error=str(exc))  # fmt: skip
            self._undialled.pop(contact.contact_id, None)
            self._start(call)
            clock = read_clock()
            call.deliver(Interrupted(call_id=plan.call_id, at=clock.epoch, mono=clock.mono))
            return True
        except BaseException as exc:
            self.calls.pop(plan.call_id, None)
            if isinstance(exc, PoolError | ValueError):  # ValueError: refused by the pipe
                log.warning("dial refused", call_id=plan.call_id, error=str(exc))
                if isinstance(exc, DialRefused | ValueError):  # not a full pool: say why
                    await self.cache.block(row, f"dial refused: {first_line(exc)}")
                return False
            raise
        self._undialled.pop(contact.contact_id, None)
        session.dialled(call.line)
        self._start(call)
        self.metrics.placed += 1
        await self.cache.block(row, None)
        self._emit("call.dialing", account=plan.account, campaign=plan.campaign,
                   call_id=plan.call_id, phone=contact.phone, attempt=contact.attempt)  # fmt: skip
        return True

    def _start(self, call: Call) -> None:
        call_id = call.plan.call_id

        async def run() -> None:
            try:
                await call.run()
            finally:
                self.calls.pop(call_id, None)

        call.task = asyncio.create_task(run(), name=call_id)

    async def _complete_finished(self) -> None:
        for view in list(self.cache.campaigns.values()):
            if self._active(view.row.id):
                continue

            def complete(conn: Connection, campaign_id: int = view.row.id,
                         name: str = view.row.name) -> bool:  # fmt: skip
                row = store.campaign_by_name(conn, name, lock=True)
                if row.state != CampaignState.RUNNING.value or store.unfinished(conn, campaign_id):
                    return False
                store.set_status(
                    conn, campaign_id, transition(status_of(row), Action.COMPLETE), utcnow()
                )
                return True

            if await self.db.run(complete):
                log.info("campaign completed", campaign=view.row.name)

    async def _publish_states(self) -> None:
        """Campaign state changes, whoever made them (this worker, the CLI, MQTT), and the
        retained status documents: on a change, and every STATUS_SECONDS while running."""
        assert self.events is not None
        rows = await self.db.run(store.campaign_states, write=False)
        periodic = time.monotonic() - self._status_at >= STATUS_SECONDS
        if periodic:
            self._status_at = time.monotonic()
        first, known = not self._states_seen, self._states
        self._states = {row.name: (row.account, row.state, row.pause_reason) for row in rows}
        self._states_seen = True
        for row in rows:
            now = self._states[row.name]
            before = known.get(row.name)
            if first:  # what was so before this worker started is not news
                before = now
            if before != now:
                self.events.emit(
                    "campaign.state", account=row.account, campaign=row.name, state=row.state,
                    pause_reason=row.pause_reason, previous=before[1] if before else None,
                )  # fmt: skip
            if before != now or (periodic and row.state == CampaignState.RUNNING.value):
                status = await campaign_status(self.db, row.name)
                self.events.status(row.account, row.name, status)

    # -- leases and recovery --------------------------------------------------------------

    async def _recover(self, own_previous: bool = False) -> None:
        """Settle the calls a dead worker left (its leases ran out); at start also those
        this worker's id held in its previous run."""
        self._recovered = time.monotonic()
        now = utcnow()
        worker = self.worker_id if own_previous else ""
        # later, never this worker's own contacts: after a long outage their leases may
        # have run out while the calls are still up here (_keep_leases renews them)
        exclude = None if own_previous else self.worker_id

        def work(conn: Connection) -> list[dict[str, Any]]:
            return store.reconcile_abandoned(conn, now, worker, exclude=exclude)

        for call in await self.db.run(work):
            self.metrics.recovered += 1
            log.warning("call left by a dead worker settled as interrupted", **call)

    async def _keep_leases(self) -> None:
        """Renew the leases of this worker's contacts (calls up, claims being dialled)
        every RECOVER_SECONDS, on its own: a stuck dialling round must not let them run
        out (another worker would then settle a live call and dial the contact again)."""
        while True:
            await asyncio.sleep(RECOVER_SECONDS)
            held = [c.plan.contact_id for c in list(self.calls.values())]
            held += list(self._undialled)
            until = utcnow() + timedelta(seconds=LEASE_SECONDS)
            try:
                await self.db.run(
                    functools.partial(
                        store.extend_leases, contact_ids=held, until=until, worker=self.worker_id
                    )
                )
            except Exception as exc:  # the next turn tries again; leases last 15 min
                log.error("could not renew leases", error=first_line(exc), contacts=len(held))

    # -- money ----------------------------------------------------------------------------

    async def _on_signal(self, signal: BalanceSignal) -> None:
        if signal.kind is not SignalKind.EXHAUSTED:
            return
        self._exhaustions[signal.account] = self._exhaustions.get(signal.account, 0) + 1
        self.metrics.exhausted_with_calls_up.append(len(self.calls))
        self.metrics.exhausted_at.append(time.time())  # after the exhausting debit committed
        self._emit(
            "billing.exhausted", account=signal.account, counter=signal.counter.value,
            balance_seconds=signal.balance_seconds,
        )  # fmt: skip
        # while the balance stays negative every debit signals again: one pause write per
        # account every few seconds is enough (the claim's gate, not this pause, is what
        # stops new calls)
        last = self._paused_at.get(signal.account, -PAUSE_AGAIN_SECONDS)
        if time.monotonic() - last >= PAUSE_AGAIN_SECONDS:
            await self._pause_account(signal.account)

    async def _pause_account(self, account: str, *, durable: bool = True) -> None:
        """Pause the account's campaigns. From the dialling loop not ``durable``: an
        outage then ends the round (the next one finds the gate closed again) instead
        of holding the loop, and a stop, until the database is back."""
        self._paused_at[account] = time.monotonic()
        if durable:
            paused = await self.writes.write(
                "pause campaigns", lambda: pause_for_balance(self.db, account)
            )
        else:
            paused = await pause_for_balance(self.db, account)
        if paused:
            log.warning("balance exhausted: campaigns paused", account=account, campaigns=paused)
        self.cache.forget_account(account)

    # -- line events ----------------------------------------------------------------------

    async def _route_events(self) -> None:
        """Every line event to its call; the rest recorded or logged here."""
        while True:
            try:
                event = await self.pool.next_event()
            except PoolClosed:
                return
            await self._route(event)

    async def _route(self, event: LineEvent) -> None:
        call = self.calls.get(getattr(event, "call_id", None) or "")
        if call is not None:
            call.deliver(event)
        elif isinstance(event, InboundRejected):
            try:
                await self._record_inbound(event)
            except Exception:  # never let one record stop the routing of all calls
                log.exception("could not record an inbound call")
        elif isinstance(event, LineDied | Registration):
            log.info(event.event, **event.model_dump(exclude={"event", "v"}, exclude_none=True))

    async def _record_inbound(self, event: InboundRejected) -> None:
        """Campaign bots take no calls: the line refused it; it is recorded (at a bounded
        rate: a flood of INVITEs is not a flood of rows), never billed."""
        if not self.inbound.admit(time.monotonic()):
            self.metrics.inbound_unrecorded += 1
            if time.monotonic() - self._inbound_summary_at >= INBOUND_SUMMARY_SECONDS:
                self._inbound_summary_at = time.monotonic()
                log.warning("inbound calls rejected without a record (rate limit)",
                            count=self.inbound.take_dropped())  # fmt: skip
            return
        at = read_clock().now if event.at is None else datetime.fromtimestamp(event.at, UTC)
        cdr = inbound_cdr(f"in-{uuid.uuid4().hex[:12]}", at.replace(tzinfo=None), event)
        log.info("inbound call rejected", caller=cdr["phone"], status=cdr["sip_status"])
        await self.db.run(lambda conn: store.write_call(conn, cdr))

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **fields)
