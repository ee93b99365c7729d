"""The SIP engine of a line process: one pjsua2 Endpoint on its own thread.

This module is its core: the thread's loop, commands, dialing, call state, inbound
rejection and shutdown. The other parts are mixed into SipEngine: its state and shared
steps (sip.enginebase), start-up (sip.startup), media (sip.media) and transfers
(sip.transfers); the pjsua2 subclasses whose callbacks call it are in sip.callbacks.

Rules of the engine, all its parts (PJSUA2_NOTES.md, "Object lifetime"):

* Every pjsua2 object (Endpoint, Account, Call, player, tap) is created, used and
  dropped on the SIP thread. Other threads only put commands on ``self._inbox``.
* A Call is referenced from ``self._live`` from creation until its DISCONNECTED
  callback, then moved to ``self._retired`` and dropped on the next loop turn: exactly
  once, never inside its own callback, never while its slot could be reused.
* Python's cyclic garbage collector would run pjsua2 destructors on whatever thread
  happens to allocate (the asyncio thread: "Calling pjlib from unknown/external thread",
  an abort, measured under load). So the line disables automatic collection
  (``start``), the SIP thread collects in ``_turn``, and retired calls have their
  reference cycles cut before they are dropped.
* Media taps are a fixed pool created at start and reconnected per call (creating one
  per call crashed the media clock thread in measurements).
* Events leave through ``emit`` (thread-safe, supplied by the line process), in one
  batch per loop turn, written by this thread: no hop through the asyncio thread
  (measured: the cross-thread wake-up was the line's largest cost under load).
* The callee's audio frames go to an in-process FrameConsumer, never to ``emit``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pjsua2 as pj
import structlog

from sip.callbacks import FrameConsumer, _Account, _Call, _Record
from sip.endpoint import PJ_ETOOMANY, collect_like_python, destroy_endpoint
from sip.enginebase import Emit, EngineBase
from sip.errors import SipSetupError
from sip.media import MediaMixin
from sip.protocol import (
    Command,
    Dial,
    Hangup,
    LineConfig,
    Play,
    Shutdown,
    StopPlay,
    Transfer,
)
from sip.startup import StartupMixin
from sip.transfers import TransferMixin
from sip.uri import dial_uri, host_of, registrar_uri

POLL_MS = 10
SHUTDOWN_DRAIN_SECONDS = 2.0

log = structlog.get_logger("sip.engine")


class SipEngine(TransferMixin, MediaMixin, StartupMixin, EngineBase):
    def __init__(
        self, config: LineConfig, emit: Emit, consumer: FrameConsumer | None = None
    ) -> None:
        super().__init__(config, emit, consumer)
        self._thread = threading.Thread(target=self._run, name=f"sip-{config.name}", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopping = False

    # -- other threads --------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        gc.disable()  # collections happen on the SIP thread only: see the rules above
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipSetupError("SIP thread did not start in time")
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, command: Command) -> None:
        self._inbox.put(command)

    def stop(self, timeout: float = 10.0) -> None:
        self._inbox.put(Shutdown())
        self._thread.join(timeout)

    # -- the SIP thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # reported to start()
            self._startup_error = exc if isinstance(exc, SipSetupError) else SipSetupError(str(exc))
            if self._ep is not None:  # destroy on this thread, or pjlib aborts at exit
                accounts = self._release_everything()
                destroy_endpoint(self._ep, self._idle_taps, self._all_taps, accounts)
                self._ep = None
            self._ready.set()
            return
        gc.freeze()  # startup objects (imports, config) never need scanning again
        self._flush()
        self._ready.set()
        try:
            while not self._stopping:
                self._ep.libHandleEvents(POLL_MS)
                self._turn()
        except BaseException:
            # the line must not live on without its SIP thread
            log.critical("SIP thread failed; the line exits", line=self.config.name, exc_info=True)
            self._teardown()
            os._exit(70)  # the pool sees the exit, reports the calls, starts a new line
        self._teardown()

    def _take_inbox(self) -> Iterator[Any]:
        """What other threads queued since the last turn."""
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _turn(self) -> None:
        self._flush()  # what the callbacks of this poll reported
        self._drop_retired()
        collect_like_python()
        if self._to_reject:
            self._reject_inbound()
        for item in self._take_inbox():
            try:
                self._handle(item)
            except pj.Error as exc:
                call_id = getattr(item, "call_id", None)
                self._emit("error", call_id=call_id, message=f"{exc.title}: {exc.reason}")
            except Exception as exc:  # a bad command must not take the SIP thread down
                call_id = getattr(item, "call_id", None)
                self._emit("error", call_id=call_id, message=f"{type(exc).__name__}: {exc}")
        now = time.monotonic()
        for record in list(self._records.values()):
            if not record.answered and record.hangup_by is None and now >= record.deadline:
                record.timeout = True
                self._hangup(record, "local")
            if record.transfer_mode and not record.agent_answered and now >= record.agent_deadline:
                self._give_up_transfer(record)
        self._watch_media()
        self._drop_retired()  # before the poll can hand their slots to inbound calls
        self._flush()

    def _handle(self, item: Any) -> None:
        if isinstance(item, tuple) and item[0] == "play_done":
            self._play_done(item[1])
        elif isinstance(item, Shutdown):
            self._stopping = True
        elif isinstance(item, Dial):
            self._dial(item)
        elif isinstance(item, Hangup | Play | StopPlay | Transfer):
            record = self._records.get(item.call_id)
            if record is None:
                self._emit("error", call_id=item.call_id, message="no such call on this line")
            elif isinstance(item, Hangup):
                record.extra["reason"] = item.reason
                self._hangup(record, "local")
            elif isinstance(item, Play):
                self._play(record, item.wav)
            elif isinstance(item, StopPlay):
                self._stop_play(record)
            else:
                self._transfer(record, item)

    # -- dialing --------------------------------------------------------------------------

    def _dial(self, cmd: Dial) -> None:
        self._drop_retired()  # a call hung up this turn: gone before makeCall reuses its slot
        if cmd.call_id in self._records:
            self._emit("refused", call_id=cmd.call_id, reason="duplicate call id", retry=False)
            return
        account = self._accounts.get(cmd.trunk)
        if account is None or account.trunk is None:
            self._emit(
                "refused", call_id=cmd.call_id, reason=f"unknown trunk {cmd.trunk!r}", retry=False
            )
            return
        if self.free_slots <= 0:
            self._emit("refused", call_id=cmd.call_id, reason="line full", retry=True)
            return
        trunk = account.trunk
        call = _Call(self, account, "out")
        record = _Record(cmd.call_id, call, trunk, account, time.monotonic() + cmd.ring_timeout)
        record.listen = cmd.listen if self.consumer is not None else None
        call.record = record
        prm = pj.CallOpParam(True)
        caller = cmd.caller_id or trunk.caller_id
        if caller:
            prm.txOption.localUri = f"sip:{caller}@{host_of(trunk.uri)}"
        for name, value in {**trunk.headers, **cmd.headers}.items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            prm.txOption.headers.append(header)
        self._records[cmd.call_id] = record
        self._live.add(call)
        try:
            call.makeCall(dial_uri(trunk, cmd.to), prm)
        except pj.Error as exc:
            if record.finished:
                return  # DISCONNECTED came inside makeCall: `failed` is out already
            self._records.pop(cmd.call_id, None)
            self._live.discard(call)
            self._retired.append(call)
            retry = exc.status == PJ_ETOOMANY
            self._emit("refused", call_id=cmd.call_id, reason=exc.info(), retry=retry)
            return
        self._emit("accepted", call_id=cmd.call_id)

    # -- call state -----------------------------------------------------------------------

    def _on_call_state(self, call: _Call, wall: float, mono: float) -> None:
        ci = call.getInfo()
        state = ci.state
        if call.role == "inbound":
            if state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self._retire(call)
            return
        record = call.record
        if call.role == "agent":
            self._on_agent_state(call, record, ci)
            return
        if record is None or record.finished:
            if state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self._retire(call)
            return
        if state == pj.PJSIP_INV_STATE_EARLY and not record.ringing:
            record.ringing = True
            self._emit("ringing", call_id=record.call_id, status=ci.lastStatusCode)
        elif state in (pj.PJSIP_INV_STATE_CONNECTING, pj.PJSIP_INV_STATE_CONFIRMED):
            if not record.answered:
                record.answered = True
                self._emit("answered", call_id=record.call_id, at=wall, mono=mono)
                if record.audio is not None:
                    self._attach_tap(record)  # listening starts at the answer
                if record.pending_wav and record.audio is not None:
                    self._play(record, record.pending_wav)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._retire(call)
            self._finish(record, ci)

    def _finish(self, record: _Record, ci: Any) -> None:
        record.finished = True
        self._records.pop(record.call_id, None)
        self._release_media(record)
        if record.agent is not None:
            agent, record.agent = record.agent, None
            with contextlib.suppress(pj.Error):
                agent.hangup(pj.CallOpParam(True))
        status, reason = ci.lastStatusCode, ci.lastReason
        if record.answered:
            self._emit(
                "hangup",
                call_id=record.call_id,
                by=record.hangup_by or "remote",
                status=status,
                reason=reason,
                cause=record.extra.get("reason"),
                rx_frames=record.rx_frames if self._taps_wanted else None,
                rx_voiced=record.rx_voiced if self.config.measure_audio else None,
            )
        else:
            self._emit(
                "failed",
                call_id=record.call_id,
                status=status,
                reason=reason,
                by=record.hangup_by or "remote",
                timeout=record.timeout,
            )

    # -- inbound --------------------------------------------------------------------------

    def _on_incoming(self, account: _Account, pj_call_id: int) -> None:
        # Answering inside this callback aborts the process on an INVITE without SDP (pjsua
        # frees the cloned rdata of a late offer twice: `pjsip_rx_data_free_cloned:
        # Assertion 'rdata' failed`, measured). Keep the call; reject it on the next turn.
        call = _Call(self, account, "inbound", pj_call_id)
        self._live.add(call)  # keep it: a dropped local would make pjsua answer 603 anyway
        self._to_reject.append(call)

    def _reject_inbound(self) -> None:
        calls, self._to_reject = self._to_reject, []
        status = self.config.inbound_reject_status
        for call in calls:
            if call not in self._live:
                continue  # the caller gave up (CANCEL) before this turn
            try:
                ci = call.getInfo()
            except pj.Error:
                self._retire(call)  # ended without a callback: never leave it holding a slot
                continue
            prm = pj.CallOpParam(True)
            prm.statusCode = status
            try:
                call.answer(prm)
            except pj.Error:
                with contextlib.suppress(pj.Error):
                    call.hangup(prm)
            self._emit(
                "inbound_rejected", status=status, **{"from": ci.remoteUri, "to": ci.localUri}
            )

    # -- shutdown -------------------------------------------------------------------------

    def _teardown(self) -> None:
        ep = self._ep
        if ep is None:
            return
        # Separate frames: no loop variable may keep a pjsua2 object alive past libDestroy.
        self._hang_up_everything(ep)
        accounts = self._release_everything()
        self._flush()
        destroy_endpoint(ep, self._live, self._retired, self._idle_taps, self._all_taps, accounts)
        self._ep = None

    def _hang_up_everything(self, ep: Any) -> None:
        for record in list(self._records.values()):
            self._hangup(record, "local")
        for call in list(self._live):
            if call.role == "inbound":
                with contextlib.suppress(pj.Error):
                    call.hangup(pj.CallOpParam(True))
        deadline = time.monotonic() + SHUTDOWN_DRAIN_SECONDS
        while self._live and time.monotonic() < deadline:
            ep.libHandleEvents(POLL_MS)
            self._turn_events_only()
        # DISCONNECTED comes before the 487/ACK exchange ends: let it finish.
        settle = time.monotonic() + 0.3
        while time.monotonic() < settle:
            ep.libHandleEvents(POLL_MS)
        for record in list(self._records.values()):  # never heard back: report anyway
            record.finished = True
            self._release_media(record)
            self._emit(
                "hangup" if record.answered else "failed",
                call_id=record.call_id,
                by="local",
                status=0,
                reason="line shut down",
            )

    def _release_everything(self) -> list[_Account]:
        self._records.clear()
        self._players.clear()
        for tap in self._all_taps:
            tap.call_id = None
        accounts = [*self._accounts.values()]
        if self._local_account is not None:
            accounts.append(self._local_account)
        for account in accounts:
            with contextlib.suppress(pj.Error):
                account.shutdown()
        self._accounts.clear()
        self._local_account = None
        return accounts

    def _turn_events_only(self) -> None:
        self._drop_retired()
        for item in self._take_inbox():
            if isinstance(item, tuple) and item[0] == "play_done":
                self._play_done(item[1])


__all__ = ["Emit", "FrameConsumer", "SipEngine", "dial_uri", "registrar_uri"]
