"""The campaign worker: claims contacts, dials through the line pool, bills in real time.

The life of one call (ARCHITECTURE.md): a running campaign, an open calling window in
the contact's time zone, a pacing token and a free slot -> the claim, in one transaction
with the balance gate -> dial -> on `answered` the call meter starts and the first
increment is debited, then one at each increment boundary -> agent segments follow the
tariff -> at hangup the meter closes, the last debits are taken, the CDR is written and
the contact is released (done, or retried per disposition).

A debit that leaves a charged counter <= 0 pauses every campaign of the account; calls
that are up continue to their natural end and keep being billed. The gate in the claim
transaction makes sure no INVITE leaves for the account afterwards.

Clocks: the meter, the increment deadlines and the script's timers run on the monotonic
clock (the line stamps its events with CLOCK_MONOTONIC, ``mono``, the same clock as this
process's ``time.monotonic()``); wall time is only written down (CDR and ledger times). A
wall clock stepped by an hour mid-call once billed 3,630 s for a 20 s call.

Trunks added or changed while the worker runs reach the line pool at the next refresh
(``LinePool.reconfigure``: lines are replaced as their calls end). A running campaign that
cannot dial says why: ``blocked_reason`` in its row (``campaign status``: ``blocked``) and
a ``campaign.blocked`` event, cleared at its next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import struct
import time
import uuid
import wave
from collections import Counter as Tally
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError
from sqlalchemy import Connection

from billing.ledger import BalanceSignal, Ledger, SignalKind
from billing.meter import CallMeter, Debit
from billing.period import utcnow
from billing.storage import Database, DatabaseUnavailable, first_line
from billing.tariff import Counter, TrunkKind
from dialer import store
from dialer.campaign_state import Action, CampaignState, transition
from dialer.campaigns import campaign_status, pause_for_balance, status_of
from dialer.contacts import transfer_after
from dialer.errors import DialerError
from dialer.events import Events
from dialer.inbound import InboundRecords, caller_of
from dialer.pacing import TokenBucket
from dialer.prompts import materialise
from dialer.retry import Disposition, RetryPolicy
from dialer.script import GREETING, Say, Script, script_of
from dialer.script_run import HangUp, LineAction, Play, ScriptRun, StartTransfer
from dialer.text import shorten
from dialer.tts import synthesise
from dialer.windows import CallingWindow, parse_zone
from sip.pool import DialOutcomeUnknown, DialRefused, LinePool, PoolError
from sip.protocol import TrunkConfig
from sip.recognizer import private_temp_dir

log = structlog.get_logger("dialer.worker")
EPOCH = datetime(1970, 1, 1)
T = TypeVar("T")

REFRESH_SECONDS = 0.5
STATUS_SECONDS = 5.0
RECOVER_SECONDS = 60.0  # look for dead workers' calls; renew our own leases
SCRIPT_RETRY_SECONDS = 60.0
LOOP_SECONDS = 0.05
LEASE_SECONDS = 900
PAUSE_AGAIN_SECONDS = 2.0
TICK_GRACE = 0.25  # s after an increment boundary before it is taken (see _run_session)
METERED = frozenset({"answered", "agent_answered", "agent_ended", "hangup", "failed",
                     "interrupted"})  # fmt: skip
#: an event without ``mono`` (an older line): its wall stamp says how old it is, trusted
#: only up to this (a clock step in between must not move the bill by more)
MAX_EVENT_AGE = 5.0
OUTAGE_FIRST_RETRY = 0.25  # database unavailable: retry writes, back off to ...
OUTAGE_MAX_RETRY = 5.0


def disposition_of_failure(event: dict[str, Any]) -> Disposition:
    """An unanswered call's disposition from the SIP facts the line reported."""
    status = int(event.get("status") or 0)
    if event.get("timeout"):
        return Disposition.NO_ANSWER
    if event.get("by") == "local":
        return Disposition.CANCELLED
    if status in (486, 600):
        return Disposition.BUSY
    if status == 603:
        return Disposition.REJECTED
    if status in (408, 480, 487):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


def session_audio(run: ScriptRun, block: str) -> str:
    return run.audio.get(block, "")


def wall(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).replace(tzinfo=None)


def wall_of(mono: float) -> datetime | None:
    """The wall time of a monotonic instant, on the wall clock as it is now."""
    return wall(time.time() - (time.monotonic() - mono))


def event_mono(event: dict[str, Any]) -> float:
    """When the line says the event happened, on the monotonic clock."""
    now = time.monotonic()
    mono = event.get("mono")
    if isinstance(mono, int | float) and not isinstance(mono, bool) and math.isfinite(mono):
        return min(float(mono), now)  # never in the future
    at = event.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool) and math.isfinite(at):
        age = time.time() - float(at)
        if 0.0 <= age <= MAX_EVENT_AGE:
            return now - age
    return now


_UNUSABLE_TRUNKS: set[tuple[str, str]] = set()  # (name, problem) already logged


def trunk_configs(rows: list[Any]) -> tuple[TrunkConfig, ...]:
    """The lines' view of the trunks in use. A row that no longer passes the checks (saved
    by an older version: a bare `sip:`, a CR/LF in a field) is left out and logged once,
    never allowed to stop the worker; its campaigns show the trunk as not carried."""
    found: list[TrunkConfig] = []
    for r in rows:
        try:
            found.append(
                TrunkConfig(
                    name=r.name,
                    kind=r.kind,
                    uri=r.uri,
                    outbound_proxy=r.outbound_proxy,
                    username=r.username,
                    password=r.password,
                    registers=r.registers,
                )
            )
        except ValidationError as exc:
            problem = shorten(exc.errors()[0].get("msg", "invalid"), 120)
            if (r.name, problem) not in _UNUSABLE_TRUNKS:
                _UNUSABLE_TRUNKS.add((r.name, problem))
                log.error("trunk unusable: fix it with `dialer trunk`", trunk=r.name,
                          problem=problem)  # fmt: skip
    return tuple(found)


def greeting_wav(folder: Path) -> Path:
    """The default script's short greeting: a two-tone chime (no speech engine needed)."""
    path = folder / "greeting.wav"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rate = 16000
    frames = bytearray()
    for freq, seconds in ((660.0, 0.35), (880.0, 0.5)):
        for n in range(int(rate * seconds)):
            fade = min(1.0, n / 400, (rate * seconds - n) / 400)
            frames += struct.pack("<h", int(9000 * fade * math.sin(2 * math.pi * freq * n / rate)))
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    tmp.replace(path)
    return path


@dataclass
class CampaignView:
    """What the dialing loop needs of a running campaign, refreshed from the database."""

    row: Any
    trunk_kind: TrunkKind
    trunk_name: str
    window: CallingWindow
    retry: RetryPolicy
    bucket: TokenBucket
    script: Script
    audio: dict[str, str]  # block -> WAV of its `say`


@dataclass
class Session:
    """One call this worker placed."""

    call_id: str
    campaign: Any
    contact: store.Claimed
    trunk_kind: TrunkKind
    meter: CallMeter
    invite_at: float  # wall (the CDR)
    invite_mono: float = 0.0
    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    cdr: dict[str, Any] = field(default_factory=dict)
    line: str | None = None
    task: asyncio.Task[None] | None = None
    run: ScriptRun | None = None
    answered_at: float | None = None  # monotonic
    answered_wall: float | None = None


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
        self.bridge: Any = None  # the MQTT bridge, when the runtime made one
        self.ops: Any = None  # the metrics/health endpoints, when configured
        self.liveness: Any = None  # dialer.liveness.Liveness, when the runtime made one
        self.ledger = ledger
        self.pool = pool
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        self.assets = assets or private_temp_dir("dialer-assets")
        self.greeting = str(greeting_wav(self.assets))
        self._scripts: dict[tuple[int, str | None], tuple[Script, dict[str, str]]] = {}
        self._preparing: dict[tuple[int, str | None], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[int, str | None], float] = {}
        self.ring_timeout = ring_timeout
        self.campaign_header = campaign_header  # X-Campaign tells the far end our customer
        self.inbound = InboundRecords()
        self.inbound_unrecorded = 0  # refused inbound calls left without a CDR (metrics)
        self._inbound_summary_at = time.monotonic()
        self.sessions: dict[str, Session] = {}
        # answered event -> first debit committed (s); bounded: a worker runs for months
        self.billing_lag: deque[float] = deque(maxlen=100_000)
        self.placed = 0  # INVITEs sent (metrics)
        self.recovered = 0  # calls of dead workers settled
        self.db_retries = 0  # writes retried while the database was unavailable
        self.last_round = time.monotonic()  # the dialling loop's last good round (health)
        # claimed contacts not dialled (yet), with the call id of a CDR written for them
        self._undialled: dict[int, str | None] = {}
        self._abandoning = False  # stopping: writes waiting for the database give up
        self._paused_at: dict[str, float] = {}  # account: when its campaigns were paused
        self._troubles: dict[str, str] = {}  # campaign: the problem last logged
        self._recovered = 0.0
        self.dispositions: Tally[str] = Tally()  # calls ended, by disposition (metrics)
        self.exhausted_with_calls_up: deque[int] = deque(maxlen=1000)
        self.exhausted_at: deque[float] = deque(maxlen=1000)
        self._exhaustions: dict[str, int] = {}  # per account: EXHAUSTED signals seen
        self.campaigns: dict[int, CampaignView] = {}
        self._stopping = False
        self._states: dict[str, tuple[str, str, str | None]] = {}  # name: account, state, why
        self._status_at = 0.0
        self._states_seen = False
        self._paused_accounts: set[str] = set()
        self._refreshed = 0.0
        pool_config = getattr(pool, "config", None)
        #: the trunks the pool's lines are configured with (or being replaced to carry)
        self._trunks: tuple[TrunkConfig, ...] = tuple(getattr(pool_config, "trunks", ()))
        self._trunk_problem: str | None = None  # why the trunks in use cannot be carried
        self._blocked: dict[int, str | None] = {}  # campaign id: the reason written
        ledger.subscribe(self._on_signal)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, drain_seconds: float = 30.0) -> None:
        """Dial until ``stop`` is set; then let calls finish up to ``drain_seconds``."""
        router = asyncio.create_task(self._route_events(), name="worker-events")
        leases = asyncio.create_task(self._keep_leases(), name="worker-leases")
        try:
            recovered_at_start = False
            pause = LOOP_SECONDS
            while not stop.is_set():
                try:
                    if not recovered_at_start:
                        await self._recover(own_previous=True)
                        recovered_at_start = True
                    await self._dial_round()
                    pause = LOOP_SECONDS
                    self.last_round = time.monotonic()
                except DatabaseUnavailable as exc:
                    # no claim, no call: calls up go on, their writes wait (_durably)
                    if pause == LOOP_SECONDS:
                        log.error("database unavailable: not dialling", error=str(exc))
                    pause = min(max(pause * 2, OUTAGE_FIRST_RETRY), OUTAGE_MAX_RETRY)
                except Exception:
                    # never a silent worker: whatever went wrong, log it and try again
                    # (calls up keep their sessions; /health reports the stale loop)
                    log.exception("dialling round failed: retrying")
                    pause = min(max(pause * 2, OUTAGE_FIRST_RETRY), OUTAGE_MAX_RETRY)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            self._stopping = True
            log.info("stopping: no new calls", calls_up=len(self.sessions))
            await self._drain(drain_seconds)
            if self.events is not None and not self._abandoning:  # states reached while
                with contextlib.suppress(Exception):  # draining (completed...)
                    await self._complete_finished()
                    await self._publish_states()
        finally:
            for task in list(self._preparing.values()):
                task.cancel()
            for task in (router, leases):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _drain(self, seconds: float) -> None:
        await self._sessions_gone(seconds)
        for call_id in list(self.sessions):
            with contextlib.suppress(PoolError):
                await self.pool.hangup(call_id, "worker stopping")
        await self._sessions_gone(10)
        if self.sessions:  # their writes wait for a database that is away: stop waiting;
            self._abandoning = True  # the next start (same id) settles them from the ledger
            log.error("stopping with calls unsettled (database unavailable)",
                      calls=sorted(self.sessions))  # fmt: skip
            await self._sessions_gone(2 * OUTAGE_MAX_RETRY)
        if self._undialled:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._give_back(), OUTAGE_MAX_RETRY)

    async def _sessions_gone(self, within: float) -> None:
        tasks = [s.task for s in self.sessions.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=within)

    # -- dialing --------------------------------------------------------------------------

    async def _refresh_trunks(self) -> None:
        """Trunks added or changed since the lines started: the pool takes the new set
        (LinePool.reconfigure: each line is replaced once it carries no call)."""
        try:
            rows = await self.db.run(store.trunks_in_use, write=False)
        except DialerError as exc:  # more trunks than a line carries: keep the current set
            self._trunk_problem = first_line(exc)
            return
        self._trunk_problem = None
        wanted = trunk_configs(list(rows))
        if wanted != self._trunks:
            log.info("trunks changed: lines take them as their calls end",
                     trunks=[t.name for t in wanted])  # fmt: skip
            self.pool.reconfigure(wanted)
            self._trunks = wanted

    async def _block(self, row: Any, reason: str | None) -> None:
        """Say (once per reason) why a running campaign cannot dial; None: it can again."""
        if self._blocked.get(row.id, row.blocked_reason) == reason:
            return
        self._blocked[row.id] = reason
        await self.db.run(functools.partial(store.set_blocked, campaign_id=row.id, reason=reason))
        if reason is not None:
            log.error("campaign blocked", campaign=row.name, reason=reason)
        self._emit("campaign.blocked", account=row.account, campaign=row.name, reason=reason)

    async def _refresh(self) -> None:
        await self._refresh_trunks()
        rows = await self.db.run(store.running_campaigns, write=False)
        fresh: dict[int, CampaignView] = {}
        for row in rows:
            old = self.campaigns.get(row.id)
            compiled = await self._script(row)
            if compiled is None:
                continue
            try:
                fresh[row.id] = CampaignView(
                    row=row,
                    trunk_kind=TrunkKind(row.trunk_kind),
                    trunk_name=row.trunk_name,
                    window=CallingWindow.parse(row.window, row.days),
                    retry=RetryPolicy.from_json(row.retry),
                    bucket=old.bucket if old and old.row.cps == row.cps else TokenBucket(row.cps),
                    script=compiled[0],
                    audio=compiled[1],
                )
            except Exception as exc:  # one unusable campaign must not stop the others
                self._unusable(row.name, exc)
                await self._block(row, f"unusable: {first_line(exc)}")
        self.campaigns = fresh
        self._refreshed = time.monotonic()
        if self.events is not None:
            await self._publish_states()

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
            if before != now or (periodic and row.state == "running"):
                status = await campaign_status(self.db, row.name)
                self.events.status(row.account, row.name, status)

    async def _script(self, row: Any) -> tuple[Script, dict[str, str]] | None:
        """The campaign's script with its prompts synthesised, once per script text. The
        synthesis runs beside the dialling (seconds per prompt; other campaigns go on);
        until it is done the campaign waits. A failure is logged and tried again later."""
        key = (row.id, row.script_text)
        ready = self._scripts.get(key)
        if ready is not None:
            return ready
        task = self._preparing.get(key)
        if task is None and time.monotonic() >= self._retry_at.get(key, 0.0):
            self._preparing[key] = asyncio.create_task(self._prepare(key, row))
        return None

    async def _prepare(self, key: tuple[int, str | None], row: Any) -> None:
        try:
            script = script_of(row.script, row.script_text)
            # pre-recorded prompts play from the copies stored at create (checked by hash),
            # never from the host path the script named
            stored = await self.db.run(
                functools.partial(store.campaign_prompts, campaign_id=row.id), write=False
            )
            audio: dict[str, str] = {}
            for block in script.blocks.values():
                action = block.action
                if isinstance(action, Say):
                    if action.wav == GREETING:
                        audio[block.name] = self.greeting
                    elif action.wav is not None:
                        wav = await asyncio.to_thread(materialise, self.assets, action.wav, stored)
                        audio[block.name] = str(wav)
                    elif action.text is not None:
                        wav = await asyncio.to_thread(
                            synthesise, action.text, action.voice or script.voice, self.assets
                        )
                        audio[block.name] = str(wav)
            self._scripts[key] = (script, audio)
        except Exception as exc:  # a script or prompt that cannot be used now: say so, retry
            log.error("campaign script unusable: not dialling it yet", campaign=row.name,
                      error=first_line(exc), retry_in=SCRIPT_RETRY_SECONDS)  # fmt: skip
            self._retry_at[key] = time.monotonic() + SCRIPT_RETRY_SECONDS
            with contextlib.suppress(Exception):
                await self._block(row, f"script unusable: {first_line(exc)}")
        finally:
            self._preparing.pop(key, None)

    def _forget_prompt(self, wav: str) -> None:
        """A prompt the line could not play (a temp cleaner took the cache?): the scripts
        using it are prepared again before their next calls."""
        for key, (_, audio) in list(self._scripts.items()):
            if wav in audio.values() and wav != self.greeting:
                del self._scripts[key]
        if wav == self.greeting:
            greeting_wav(self.assets)

    async def _recover(self, own_previous: bool = False) -> None:
        """Settle the calls a dead worker left (its leases ran out); at start also those
        this worker's id held in its previous run. Keep this worker's own leases alive."""
        self._recovered = time.monotonic()
        now = utcnow()
        worker = self.worker_id if own_previous else ""
        # later, never this worker's own contacts: after a long outage their leases may
        # have run out while the calls are still up here (_keep_leases renews them)
        exclude = None if own_previous else self.worker_id

        def work(conn: Connection) -> list[dict[str, Any]]:
            return store.reconcile_abandoned(conn, now, worker, exclude=exclude)

        for call in await self.db.run(work):
            self.recovered += 1
            log.warning("call left by a dead worker settled as interrupted", **call)

    async def _keep_leases(self) -> None:
        """Renew the leases of this worker's contacts (calls up, claims being dialled)
        every RECOVER_SECONDS, on its own: a stuck dialling round must not let them run
        out (another worker would then settle a live call and dial the contact again)."""
        while True:
            await asyncio.sleep(RECOVER_SECONDS)
            held = [s.contact.contact_id for s in list(self.sessions.values())]
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

    async def _dial_round(self) -> None:
        if self._undialled:
            await self._give_back()
        if time.monotonic() - self._recovered >= RECOVER_SECONDS:
            await self._recover()
        if time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            await self._refresh()
            await self._complete_finished()
        if self.liveness is not None and self.liveness.fenced:
            return  # others may be settling our calls (dialer.liveness): no new claim
        for view in list(self.campaigns.values()):
            if self._stopping:
                return
            try:
                await self._dial_campaign(view)
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # one campaign's trouble must not stop the others
                self._unusable(view.row.name, exc)
                await self._block(view.row, f"unusable: {first_line(exc)}")

    def _unusable(self, campaign: str, exc: Exception) -> None:
        """Log a campaign that cannot be dialled now, once per kind of trouble."""
        problem = f"{type(exc).__name__}: {first_line(exc)}"
        if self._troubles.get(campaign) != problem:
            self._troubles[campaign] = problem
            log.error("campaign not dialled", campaign=campaign, problem=problem)

    def _active(self, *, campaign_id: int | None = None, trunk: str | None = None) -> int:
        return sum(
            1
            for s in self.sessions.values()
            if (campaign_id is None or s.campaign.id == campaign_id)
            and (trunk is None or s.campaign.trunk_name == trunk)
        )

    async def _dial_campaign(self, view: CampaignView) -> None:
        row = view.row
        if view.trunk_name not in {t.name for t in self._trunks}:
            why = self._trunk_problem or "not loaded"
            await self._block(row, f"trunk {view.trunk_name!r} not carried: {why}")
            return
        # a local first look (saves claims that cannot succeed); the claim itself applies
        # the trunk's and campaign's limits all workers share, as the database has them
        room = min(row.max_concurrent - self._active(campaign_id=row.id), self.pool.free_slots)
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

        def claim(conn: Connection) -> store.ClaimResult:
            return store.claim_contacts(
                conn, row, view.trunk_kind, self.ledger.tariff, self.worker_id, now, want,
                LEASE_SECONDS, is_open, next_open,
            )  # fmt: skip

        seen = self._exhaustions.get(row.account, 0)
        result = await self.db.run(claim)
        for contact_id, phone, why in result.refused:
            log.warning("number refused by policy: not dialled", campaign=row.name,
                        contact=contact_id, reason=why)  # fmt: skip
            self._emit("contact.refused", account=row.account, campaign=row.name,
                       contact=contact_id, phone=phone, reason=why)  # fmt: skip
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

    async def _dial(self, view: CampaignView, contact: store.Claimed) -> bool:
        row = view.row
        call_id = f"{row.name}-{contact.contact_id}-{contact.attempt}-{uuid.uuid4().hex[:6]}"
        session = Session(
            call_id=call_id,
            campaign=row,
            contact=contact,
            trunk_kind=view.trunk_kind,
            meter=CallMeter(self.ledger.tariff, view.trunk_kind),
            invite_at=time.time(),
            invite_mono=time.monotonic(),
            run=ScriptRun(view.script, view.audio),
        )
        session.cdr = {
            "call_id": call_id, "campaign_id": row.id, "account": row.account,
            "contact_id": contact.contact_id, "phone": contact.phone,
            "attempt": contact.attempt, "direction": "outbound",
            "trunk_kind": view.trunk_kind.value, "invite_at": wall(session.invite_at),
        }  # fmt: skip
        # the CDR exists before the INVITE leaves: a crash after it can never make the
        # call look "claimed, never dialled" (that would give the attempt back and dial
        # a contact who may have answered)
        cdr = dict(session.cdr)
        self._undialled[contact.contact_id] = call_id  # given back: its CDR is forgotten
        await self.db.run(lambda c: store.write_call(c, cdr))
        self.sessions[call_id] = session
        try:
            session.line = await self.pool.dial(
                call_id,
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
            log.error("dial outcome unknown: settled as interrupted", call_id=call_id,
                      error=str(exc))  # fmt: skip
            self._undialled.pop(contact.contact_id, None)
            session.task = asyncio.create_task(self._run_session(session), name=call_id)
            session.events.put_nowait({"event": "interrupted", "call_id": call_id,
                                       "at": time.time(), "mono": time.monotonic()})  # fmt: skip
            return True
        except BaseException as exc:
            self.sessions.pop(call_id, None)
            if isinstance(exc, PoolError | ValueError):  # ValueError: refused by the pipe
                # no INVITE left: the attempt does not count; the contact is given back
                # (its CDR forgotten) with the rest of the batch
                log.warning("dial refused", call_id=call_id, error=str(exc))
                if isinstance(exc, DialRefused | ValueError):  # not a full pool: say why
                    await self._block(row, f"dial refused: {first_line(exc)}")
                return False
            raise
        self._undialled.pop(contact.contact_id, None)
        session.task = asyncio.create_task(self._run_session(session), name=call_id)
        session.cdr["line"] = session.line
        self.placed += 1
        await self._block(row, None)
        self._emit("call.dialing", session, phone=contact.phone, attempt=contact.attempt)
        return True

    async def _complete_finished(self) -> None:
        for view in list(self.campaigns.values()):
            if self._active(campaign_id=view.row.id):
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

    # -- money ----------------------------------------------------------------------------

    async def _on_signal(self, signal: BalanceSignal) -> None:
        if signal.kind is SignalKind.EXHAUSTED:
            self._exhaustions[signal.account] = self._exhaustions.get(signal.account, 0) + 1
            self.exhausted_with_calls_up.append(len(self.sessions))
            self.exhausted_at.append(time.time())  # after the exhausting debit committed
            self._emit(
                "billing.exhausted", account=signal.account, counter=signal.counter.value,
                balance_seconds=signal.balance_seconds,
            )  # fmt: skip
            # while the balance stays negative every debit signals again: one pause
            # write per account every few seconds is enough (the claim's gate, not this
            # pause, is what stops new calls)
            if time.monotonic() - self._paused_at.get(signal.account, -PAUSE_AGAIN_SECONDS) >= (
                PAUSE_AGAIN_SECONDS
            ):
                await self._pause_account(signal.account)
        else:
            self._paused_accounts.discard(signal.account)

    def calls_by_state(self) -> dict[str, int]:
        """Calls up: dialing (no answer yet), answered (with the bot), agent (bridged)."""
        counts = {"dialing": 0, "answered": 0, "agent": 0}
        for session in list(self.sessions.values()):
            if session.answered_at is None:
                counts["dialing"] += 1
            elif session.run is not None and session.run.with_agent:
                counts["agent"] += 1
            else:
                counts["answered"] += 1
        return counts

    def _emit(self, kind: str, session: Session | None = None, **fields: Any) -> None:
        if self.events is None:
            return
        if session is not None:
            fields = {"account": session.campaign.account, "campaign": session.campaign.name,
                      "call_id": session.call_id, **fields}  # fmt: skip
        self.events.emit(kind, **fields)

    async def _durably(
        self, what: str, attempt: Callable[[], Awaitable[T]], session: Session | None = None
    ) -> T:
        """An idempotent write (debits carry their idempotency key, CDRs are upserts,
        releases set values) retried until the database takes it: during an outage the
        calls up go on and their writes wait here with their own timestamps, so nothing
        is dropped or charged twice."""
        delay = OUTAGE_FIRST_RETRY
        while True:
            try:
                return await attempt()
            except DatabaseUnavailable as exc:
                if self._abandoning:
                    raise
                if delay == OUTAGE_FIRST_RETRY:
                    log.error("database unavailable: write kept, retrying", what=what,
                              call_id=session.call_id if session else None,
                              error=str(exc))  # fmt: skip
                self.db_retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTAGE_MAX_RETRY)

    async def _pause_account(self, account: str, *, durable: bool = True) -> None:
        """Pause the account's campaigns. From the dialling loop not ``durable``: an
        outage then ends the round (the next one finds the gate closed again) instead
        of holding the loop, and a stop, until the database is back."""
        self._paused_at[account] = time.monotonic()
        if durable:
            paused = await self._durably(
                "pause campaigns", lambda: pause_for_balance(self.db, account)
            )
        else:
            paused = await pause_for_balance(self.db, account)
        if paused:
            log.warning("balance exhausted: campaigns paused", account=account, campaigns=paused)
        self.campaigns = {k: v for k, v in self.campaigns.items() if v.row.account != account}

    @staticmethod
    def _meter_time(session: Session, at: float) -> float:
        """An event time the meter can take: never before its latest event (a hangup
        that reaches us after an increment was taken counts from that moment, so the
        CDR always bills what the ledger holds; TICK_GRACE makes this rare)."""
        last = session.meter.last_event_at
        return at if last is None else max(at, last)

    async def _debit(self, session: Session, debits: list[Debit], at: float) -> None:
        for debit in debits:
            result = await self._durably(
                "debit",
                functools.partial(
                    self.ledger.debit,
                    session.campaign.account,
                    debit.counter,
                    debit.seconds,
                    call_id=session.call_id,
                    increment=debit.increment,
                    campaign=session.campaign.name,
                    contact=session.contact.phone,
                    at=wall_of(at),  # when it fell due, even if written after an outage
                ),
                session,
            )
            if not result.replayed:
                self._emit("billing.debit", account=session.campaign.account,
                           counter=debit.counter.value, seconds=debit.seconds,
                           balance_seconds=result.balance_seconds, call_id=session.call_id,
                           increment=debit.increment, campaign=session.campaign.name)  # fmt: skip

    # -- one call -------------------------------------------------------------------------

    async def _route_events(self) -> None:
        async for event in self.pool.events():
            session = self.sessions.get(event.get("call_id", ""))
            if session is not None:
                session.events.put_nowait(event)
            elif event["event"] == "inbound_rejected":
                try:
                    await self._record_inbound(event)
                except Exception:  # never let one record stop the routing of all calls
                    log.exception("could not record an inbound call")
            elif event["event"] in ("line_died", "registration"):
                log.info(event["event"], **{k: v for k, v in event.items() if k != "event"})

    async def _record_inbound(self, event: dict[str, Any]) -> None:
        """Campaign bots take no calls: the line refused it; it is recorded (at a bounded
        rate: a flood of INVITEs is not a flood of rows), never billed."""
        if not self.inbound.admit(time.monotonic()):
            self.inbound_unrecorded += 1
            if time.monotonic() - self._inbound_summary_at >= 60:
                self._inbound_summary_at = time.monotonic()
                log.warning("inbound calls rejected without a record (rate limit)",
                            count=self.inbound.take_dropped())  # fmt: skip
            return
        at = wall(float(event.get("at") or time.time()))
        cdr = {
            "call_id": f"in-{uuid.uuid4().hex[:12]}", "account": "",
            "phone": caller_of(event.get("from")),
            "direction": "inbound", "trunk_kind": "", "invite_at": at, "ended_at": at,
            "sip_status": event.get("status"), "disposition": Disposition.INBOUND_REJECTED.value,
            "hangup_by": "local", "line": event.get("line"),
        }  # fmt: skip
        log.info("inbound call rejected", caller=cdr["phone"], status=cdr["sip_status"])
        await self.db.run(lambda conn: store.write_call(conn, cdr))

    async def _run_session(self, session: Session) -> None:
        log_ = log.bind(call_id=session.call_id, campaign=session.campaign.name,
                        account=session.campaign.account)  # fmt: skip
        run = session.run
        assert run is not None
        transfer_at: float | None = None
        hangup_at: float | None = None
        try:
            while True:
                due = session.meter.next_due_at()
                # an increment is taken TICK_GRACE after its boundary, so a hangup the
                # line stamped just before the boundary (still in the pipe) comes first
                deadlines = [
                    d for d in (due and due + TICK_GRACE, transfer_at, hangup_at, run.deadline)
                    if d
                ]  # fmt: skip
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                try:
                    # events already queued first (after a stall, a zero timeout would
                    # fire before them)
                    event = session.events.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        event = await asyncio.wait_for(session.events.get(), timeout)
                    except TimeoutError:
                        event = None
                if event is None:
                    now = self._meter_time(session, time.monotonic())
                    if due is not None and now >= due + TICK_GRACE:  # not on other timers
                        await self._debit(session, session.meter.tick(now), now)
                    await self._act(session, run.timer(now), log_)
                    if transfer_at is not None and now >= transfer_at:
                        transfer_at = None
                        with contextlib.suppress(PoolError):
                            await self.pool.transfer(session.call_id, session.campaign.agent_uri)
                    if hangup_at is not None and now >= hangup_at:
                        hangup_at = None
                        with contextlib.suppress(PoolError):
                            await self.pool.hangup(session.call_id, "max call seconds")
                    continue
                name = event["event"]
                at = event_mono(event)  # the meter's and the script's clock
                stamp = event.get("at")  # the line's wall clock: the CDR's times
                stamped = wall(float(stamp)) if isinstance(stamp, int | float) else None
                if name in METERED:
                    at = self._meter_time(session, at)
                if name == "speech":
                    await self._act(session, run.speech(event, at), log_)
                elif name == "ringing":
                    session.cdr["ringing_at"] = stamped or wall_of(at)
                    self._emit("call.ringing", session, status=event.get("status"))
                elif name == "answered":
                    session.answered_at = at
                    session.cdr["answered_at"] = stamped or wall_of(at)
                    session.answered_wall = (session.cdr["answered_at"] - EPOCH).total_seconds()
                    self._emit("call.answered", session)
                    await self._debit(session, session.meter.answered(at), at)
                    self.billing_lag.append(time.monotonic() - at)
                    await self._save_cdr(dict(session.cdr))  # live status: calls up count
                    log_.info("answered")
                    await self._act(session, run.answered(at), log_)
                    hangup_at = at + session.campaign.max_call_seconds
                    # kept from before call scripts: a contact column `transfer_after`
                    after = self._transfer_after(session, log_)
                    if session.campaign.agent_uri and after:
                        transfer_at = at + after
                elif name == "play_done":
                    await self._act(session, run.play_done(at), log_)
                elif name == "agent_answered":
                    run.agent_answered(str(event.get("mode")))
                    self._emit("call.transfer", session, segment="agent", mode=event.get("mode"))
                    if event.get("mode") == "bridge":
                        await self._debit(session, session.meter.agent_started(at), at)
                elif name == "agent_failed":
                    log_.info("transfer failed", status=event.get("status"))
                    await self._act(session, run.agent_failed(at), log_)
                elif name == "agent_ended":
                    await self._debit(session, session.meter.agent_ended(at), at)
                    self._emit("call.transfer", session, segment="bot", mode="bridge")
                    await self._act(session, run.agent_ended(at), log_)
                elif name == "error" and event.get("security"):  # e.g. RTP from a stranger
                    log_.warning("media security", kind=event["security"],
                                 message=event.get("message"))  # fmt: skip
                elif name == "error":
                    log_.warning("line could not do it", message=event.get("message"))
                    block = run.block
                    if block is not None and isinstance(block.action, Say):
                        self._forget_prompt(session_audio(run, block.name))
                    await self._act(session, run.line_error(at), log_)
                elif name in ("hangup", "failed", "interrupted"):
                    await self._finish(session, event, at, stamped)
                    log_.info("call ended", disposition=session.cdr["disposition"])
                    return
        except Exception:
            # never leave a call up that nobody bills, nor its CDR open and its contact
            # in progress: hang it up and settle it now from what the ledger holds
            log_.exception("call session failed: hanging up and settling it")
            with contextlib.suppress(Exception):
                await self.pool.hangup(session.call_id, "session failed")
            await self._settle_failed(session, log_)
        finally:
            self.sessions.pop(session.call_id, None)

    @staticmethod
    def _transfer_after(session: Session, log_: Any) -> float | None:
        """The contact's `transfer_after`, checked as at import: a bad value that got
        into the database anyway is ignored (logged), never a failed call."""
        try:
            return transfer_after(session.contact.attributes)
        except DialerError as exc:
            log_.warning("contact attribute ignored", error=str(exc))
            return None

    async def _settle_failed(self, session: Session, log_: Any) -> None:
        """A session that failed: its CDR closed (`interrupted`, billed what the ledger
        holds) and its contact released, as recovery would, but at once."""
        now = utcnow()
        retry = session.campaign.retry

        def settle(conn: Connection) -> dict[str, int]:
            return store.settle_call(conn, session.call_id, session.contact.contact_id,
                                     self.worker_id, now, retry)  # fmt: skip

        try:
            billed = await self._durably("failed call settlement", lambda: self.db.run(settle),
                                         session)  # fmt: skip
        except Exception:  # recovery settles it at the next start (same worker id)
            log_.exception("could not settle the failed call")
            return
        self.dispositions[Disposition.INTERRUPTED.value] += 1
        self._emit("call.ended", session, disposition=Disposition.INTERRUPTED.value,
                   sip_status=None, hangup_by="worker", billed_seconds=billed)  # fmt: skip

    async def _act(self, session: Session, actions: list[LineAction], log_: Any) -> None:
        """Carry out what the script asks of the line (a call already gone is no error)."""
        for action in actions:
            with contextlib.suppress(PoolError):
                if isinstance(action, Play):
                    await self.pool.play(session.call_id, action.wav)
                elif isinstance(action, StartTransfer):
                    log_.info("transfer", agent=action.agent, mode=action.mode)
                    await self.pool.transfer(
                        session.call_id, action.agent, action.mode, action.ring_timeout
                    )
                elif isinstance(action, HangUp):
                    if action.machine is not None:
                        decision = action.machine
                        after = time.monotonic() - (session.answered_at or time.monotonic())
                        session.cdr["amd_reason"] = (
                            f"{decision.signal}: {decision.reason}"
                            + (f" (score {decision.score:g})" if decision.score else "")
                            + f"; {after:.2f} s after the answer"
                        )[:255]
                        log_.info("answering machine: hanging up", signal=decision.signal,
                                  reason=decision.reason, score=decision.score,
                                  after_answer=round(after, 2))  # fmt: skip
                        self._emit("call.answering_machine", session, signal=decision.signal,
                                   reason=decision.reason, score=decision.score,
                                   after_answer_seconds=round(after, 3))  # fmt: skip
                    await self.pool.hangup(session.call_id, action.reason)
                else:
                    await self.pool.stop_play(session.call_id)

    async def _save_cdr(self, cdr: dict[str, Any]) -> None:
        def save(conn: Connection) -> None:
            store.write_call(conn, cdr)

        await self._durably("call record", lambda: self.db.run(save))

    async def _finish(
        self, session: Session, event: dict[str, Any], at: float, stamped: datetime | None = None
    ) -> None:
        name = event["event"]
        answered = session.meter.answered_at_ms is not None
        if answered:
            await self._debit(session, session.meter.hangup(at), at)
        else:
            session.meter.hangup(max(at, session.invite_mono))
        if name == "interrupted":
            disposition = Disposition.INTERRUPTED
        elif session.run is not None and session.run.amd.machine is not None and answered:
            disposition = Disposition.ANSWERING_MACHINE
        elif name == "hangup" or answered:
            disposition = Disposition.ANSWERED
        else:
            disposition = disposition_of_failure(event)
        # monotonic spans, written as wall times from the answer's wall stamp
        shift = (session.answered_wall or 0.0) - (session.answered_at or 0.0)
        segments = [
            {"kind": s.kind.value, "start": round(s.start_ms / 1000 + shift, 3),
             "end": round(s.end_ms / 1000 + shift, 3)}
            for s in session.meter.segments()
        ]  # fmt: skip
        session.cdr |= {
            "ended_at": stamped or wall_of(at),
            "sip_status": event.get("status"),
            "disposition": disposition.value,
            "hangup_by": event.get("by") if name != "interrupted" else "line",
            "agent_seconds": session.meter.agent_ms() / 1000,
            "billed_telephony_seconds": session.meter.billed_seconds(Counter.TELEPHONY),
            "billed_speech_seconds": session.meter.billed_seconds(Counter.SPEECH),
            "segments": segments,
        }
        policy = RetryPolicy.from_json(session.campaign.retry)
        retry_at = policy.next_attempt(disposition, session.contact.attempt, utcnow())
        if answered and disposition is Disposition.INTERRUPTED:
            retry_at = None  # someone was reached (a line died under the call): never again

        def settle(conn: Connection) -> bool:
            # the contact's row first, then the CDR: the order recovery locks them in
            held = store.release_contact(conn, session.contact.contact_id, disposition.value,
                                         retry_at, self.worker_id)  # fmt: skip
            store.write_call(conn, session.cdr)
            return held

        if not await self._durably("call settlement", lambda: self.db.run(settle), session):
            log.error("lease lost before the call was settled (recovered elsewhere as "
                      "interrupted); the CDR now has the final billing",
                      call_id=session.call_id, contact=session.contact.contact_id)  # fmt: skip
        self.dispositions[disposition.value] += 1
        self._emit(
            "call.ended", session, disposition=disposition.value,
            sip_status=session.cdr["sip_status"], hangup_by=session.cdr["hangup_by"],
            billed_seconds={"telephony": session.cdr["billed_telephony_seconds"],
                            "speech": session.cdr["billed_speech_seconds"]},
        )  # fmt: skip
