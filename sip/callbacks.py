"""The pjsua2 objects of a line, subclassed for their callbacks, and the record of a call.

Callbacks run on the SIP thread (the ``_Tap`` frame and ``_Player`` end callbacks on
pjmedia's clock thread) and hand everything to the engine: object lifetimes are the
engine's (rules in sip.engine).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pjsua2 as pj

from sip.audio import is_voiced, vector_bytes
from sip.protocol import TrunkConfig

if TYPE_CHECKING:
    from sip.enginebase import EngineBase


class FrameConsumer(Protocol):
    """Receives the callee's audio inside the line process (speech recognition later).

    ``frame`` runs on pjmedia's clock thread every 20 ms per call: it must be quick and
    must not call pjsua2.
    """

    def call_started(self, call_id: str, clock_rate: int, phrases: Sequence[str]) -> None: ...
    def frame(self, call_id: str, pcm: bytes) -> None: ...
    def call_ended(self, call_id: str) -> None: ...


class _Tap(pj.AudioMediaPort):  # type: ignore[misc]
    """A pooled audio sink: counts frames and hands them to the consumer."""

    def __init__(self, consumer: FrameConsumer | None, measure: bool) -> None:
        super().__init__()
        self.consumer = consumer
        self.measure = measure
        self.call_id: str | None = None
        self.frames = 0
        self.voiced = 0
        # RTP from a stranger reached the call (set by the SIP thread, read here): its
        # audio must not reach speech analysis or AMD
        self.blocked = False

    def onFrameReceived(self, frame: Any) -> None:
        call_id = self.call_id
        if call_id is None:
            return
        self.frames += 1
        if self.blocked or (self.consumer is None and not self.measure):
            return  # only when someone wants the frame
        pcm = vector_bytes(frame.buf)
        if self.measure and is_voiced(pcm):
            self.voiced += 1
        if self.consumer is not None:
            with contextlib.suppress(Exception):  # an exception here would reach pjmedia
                self.consumer.frame(call_id, pcm)


class _Player(pj.AudioMediaPlayer):  # type: ignore[misc]
    def __init__(self, engine: EngineBase, call_id: str, wav: str) -> None:
        super().__init__()
        self.engine = engine
        self.call_id = call_id
        self.wav = wav

    def onEof2(self) -> None:
        self.engine._inbox.put(("play_done", self))


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, engine: EngineBase, account: Any, role: str, pj_id: int = -1) -> None:
        if pj_id == -1:
            super().__init__(account)
        else:
            super().__init__(account, pj_id)
        self.engine = engine
        self.role = role  # "out" | "agent" | "inbound"
        self.record: _Record | None = None
        # RTP pinning (sip.rtpguard): "open" -> "closed" (first SDP) -> "pinned" | "watched"
        self.rtp_state = "open"
        self.rtp_remote: str | None = None  # the negotiated "ip:port"
        self.rtp_media = 0
        self.rtp_foreign = False

    def onCallState(self, prm: Any) -> None:
        self.engine._on_call_state(self, time.time(), time.monotonic())

    def onCallSdpCreated(self, prm: Any) -> None:
        self.engine._on_sdp_created(self, prm.sdp.wholeSdp)

    def onStreamPreCreate(self, prm: Any) -> None:
        self.engine._pin_media(self, prm.streamIdx, prm.streamInfo)

    def onCallMediaState(self, prm: Any) -> None:
        self.engine._on_media_state(self)

    def onCallTransferRequest(self, prm: Any) -> None:
        # A REFER from the far end must never make us dial (toll fraud): decline it.
        prm.statusCode = 603
        self.engine._emit(
            "error",
            call_id=self.record.call_id if self.record else None,
            message=f"declined a REFER from the far end to {prm.dstUri}",
        )

    def onCallReplaceRequest(self, prm: Any) -> None:
        # An INVITE with Replaces naming this call's dialog would take it over (pjsua's
        # default answers 200 and BYEs our callee): whoever learnt the dialog ids could
        # hijack a billed call. Nobody may replace our calls.
        prm.statusCode = 603
        prm.reason = "Decline"
        self.engine._emit(
            "inbound_rejected",
            status=603,
            call_id=self.record.call_id if self.record else None,
            reason="INVITE with Replaces",
            **{"from": "", "to": ""},
        )

    def onCallTransferStatus(self, prm: Any) -> None:
        prm.cont = True
        self.engine._on_transfer_status(self, prm.statusCode, prm.reason, prm.finalNotify)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, engine: EngineBase, trunk: TrunkConfig | None) -> None:
        super().__init__()
        self.engine = engine
        self.trunk = trunk

    def onIncomingCall(self, prm: Any) -> None:
        self.engine._on_incoming(self, prm.callId)

    def onIncomingSubscribe(self, prm: Any) -> None:
        # pjsua's presence server would accept anyone's SUBSCRIBE and send NOTIFYs to any
        # Contact (reflection). A campaign line publishes no presence.
        prm.code = 403
        prm.reason = "Forbidden"

    def onRegState(self, prm: Any) -> None:
        if self.trunk is not None:
            self.engine._emit(
                "registration",
                trunk=self.trunk.name,
                status=prm.code,
                reason=prm.reason,
                expires=prm.expiration,
                ok=200 <= prm.code < 300 and prm.expiration > 0,
            )


class _Endpoint(pj.Endpoint):  # type: ignore[misc]
    def __init__(self, engine: EngineBase) -> None:
        super().__init__()
        self.engine = engine

    def onRejectedIncomingCall(self, prm: Any) -> None:
        self.engine._emit(
            "inbound_rejected",
            status=prm.statusCode,
            **{"from": prm.remoteInfo, "to": prm.localInfo},
        )


@dataclass
class _Record:
    """One outbound call we own, with its agent leg and media."""

    call_id: str
    call: _Call
    trunk: TrunkConfig
    account: _Account
    deadline: float
    answered: bool = False
    ringing: bool = False
    hangup_by: str | None = None
    timeout: bool = False
    audio: Any = None
    tap: _Tap | None = None
    player: _Player | None = None
    pending_wav: str | None = None
    agent: _Call | None = None
    agent_audio: Any = None
    agent_answered: bool = False
    agent_ringing: bool = False
    transfer_mode: str | None = None
    agent_deadline: float = 0.0
    bridged: bool = False
    rx_frames: int = 0
    rx_voiced: int = 0
    finished: bool = False
    listen: list[str] | None = None  # phrases: analyse the callee's audio (FrameConsumer)
    extra: dict[str, Any] = field(default_factory=dict)
