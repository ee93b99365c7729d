"""Simulated SIP endpoints for QA: a callee farm and agents on pjsua2 (``dialer sim``).

The plan is a TOML file; every number (the user part of the request URI) behaves as
its entry says. Example::

    # plan.toml
    [defaults]              # numbers not listed below; without it they get 404
    ring = 1.0              # seconds of 180 Ringing first
    talk = 20.0             # then answer; hang up this long after answering

    [numbers."+15550001"]   # a human: rings 2 s, says "hello?", hangs up after 8 s
    ring = 2
    play = "audio/hello.wav"
    talk = 8

    [numbers."+15550002"]   # an answering machine: greeting, then waits for the caller
    ring = 0.5
    play = "audio/voicemail.wav"

    [numbers."+15550003"]
    reject = 486            # busy; 603 declined; 480, 404, 503 unavailable

    [numbers."+15550004"]
    answer = false          # rings until the caller gives up (no answer)

    [agents.agent1]         # answers transfers: sip:agent1@127.0.0.1:PORT
    ring = 1
    hangup_after = 15

Keys: ``ring`` (s, default 0), ``answer`` (default true), ``reject`` (a final status
instead of answering), ``talk`` / ``hangup_after`` (s after answering; omitted: never,
the caller hangs up), ``play`` (a WAV file played once after answering; relative paths
are relative to the plan), ``silent`` (no audio at all, the default without ``play``).
A callee that receives a REFER follows it (calls the target), as phones do.

One process carries 4 calls at a time (PJSUA_MAX_CALLS); the farm prints one JSON line
per call event on stdout: ``incoming``, ``rejected``, ``answered``, ``transferred``,
``playing`` (the ``play`` WAV started: its clock for QA), ``ended`` (with ``by``,
``rx_frames`` and ``voiced_frames``, the frames of the far end's
audio louder than silence: proof that audio flowed).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import json
import queue
import re
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pjsua2 as pj
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sip.audio import is_voiced, vector_bytes
from sip.endpoint import (
    MAX_CALLS,
    add_transports,
    collect_like_python,
    create_endpoint,
    destroy_endpoint,
    media_transport,
    set_codec_priorities,
)
from sip.errors import PlanError, SipSetupError

POLL_MS = 10
REQUEST_USER = re.compile(rb"^INVITE\s+sips?:([^@;>\s]+)@", re.M)


class Behaviour(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ring: float = Field(default=0.0, ge=0, le=600)
    answer: bool = True
    reject: int | None = Field(default=None, ge=400, le=699)
    talk: float | None = Field(default=None, gt=0, le=86_400)
    hangup_after: float | None = Field(default=None, gt=0, le=86_400)
    play: str | None = None
    silent: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Behaviour:
        if self.reject is not None and not self.answer:
            raise ValueError("reject and answer = false exclude each other")
        if self.talk is not None and self.hangup_after is not None:
            raise ValueError("give talk or hangup_after, not both")
        if self.silent and self.play:
            raise ValueError("silent and play exclude each other")
        return self

    @property
    def talk_seconds(self) -> float | None:
        return self.talk if self.talk is not None else self.hangup_after


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Behaviour | None = None
    numbers: dict[str, Behaviour] = Field(default_factory=dict)
    agents: dict[str, Behaviour] = Field(default_factory=dict)

    def behaviour(self, user: str) -> Behaviour | None:
        return self.numbers.get(user) or self.agents.get(user) or self.defaults


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan file {path}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan file {path}: not valid TOML: {exc}") from None
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise PlanError(f"plan file {path}: {where}: {error['msg']}") from None
    resolved: dict[str, dict[str, Behaviour]] = {"numbers": {}, "agents": {}}
    for section in ("numbers", "agents"):
        for name, behaviour in getattr(plan, section).items():
            if behaviour.play:
                wav = Path(behaviour.play)
                wav = wav if wav.is_absolute() else path.parent / wav
                if not wav.is_file():
                    raise PlanError(f"plan file {path}: {section}.{name}.play: no file {wav}")
                behaviour = behaviour.model_copy(update={"play": str(wav)})
            resolved[section][name] = behaviour
    defaults = plan.defaults
    if defaults is not None and defaults.play:
        wav = Path(defaults.play)
        wav = wav if wav.is_absolute() else path.parent / wav
        if not wav.is_file():
            raise PlanError(f"plan file {path}: defaults.play: no file {wav}")
        defaults = defaults.model_copy(update={"play": str(wav)})
    return Plan(defaults=defaults, **resolved)


class _Meter(pj.AudioMediaPort):  # type: ignore[misc]
    """Pooled tap measuring the far end's audio (media thread: no pjsua2 calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.frames = 0
        self.voiced = 0

    def onFrameReceived(self, frame: Any) -> None:
        if not self.active:
            return
        self.frames += 1
        data = vector_bytes(frame.buf)
        if is_voiced(data):
            self.voiced += 1


class _SimCall(pj.Call):  # type: ignore[misc]
    def __init__(self, sim: SimFarm, account: Any, pj_id: int, user: str, role: str) -> None:
        if pj_id == -1:
            super().__init__(account)
        else:
            super().__init__(account, pj_id)
        self.sim = sim
        self.user = user
        self.role = role  # "callee" | "transferred"
        self.behaviour: Behaviour | None = None
        self.serial = next(sim._serials)
        self.answered_at: float | None = None
        self.ended = False
        self.local_hangup = False
        self.meter: _Meter | None = None
        self.player: Any = None
        self.audio: Any = None

    def onCallState(self, prm: Any) -> None:
        self.sim._on_state(self)

    def onCallMediaState(self, prm: Any) -> None:
        self.sim._on_media(self)

    def onCallTransferRequest(self, prm: Any) -> None:
        new = _SimCall(self.sim, self.sim._account, -1, self.user, "transferred")
        self.sim._live.add(new)
        self.sim._by_serial[new.serial] = new
        prm.newCall = new
        self.sim._report("transferred", self, target=prm.dstUri)


class _Account(pj.Account):  # type: ignore[misc]
    def __init__(self, sim: SimFarm) -> None:
        super().__init__()
        self.sim = sim

    def onIncomingCall(self, prm: Any) -> None:
        self.sim._on_incoming(prm.callId, prm.rdata.wholeMsg)


class SimFarm:
    """The callee farm on its own SIP thread; ``run_forever`` or ``start``/``stop``."""

    def __init__(
        self,
        plan: Plan,
        *,
        port: int = 5070,
        bind_address: str = "127.0.0.1",
        rtp_port: int = 40000,
        report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.plan = plan
        self.port = port
        self.bind_address = bind_address
        self.rtp_port = rtp_port
        self._report_to = report or _print_json
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sim-sip", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._serials = itertools.count(1)
        self._timers: list[tuple[float, int, str, int]] = []  # (due, tie, action, serial)
        self._by_serial: dict[int, _SimCall] = {}
        self._tie = itertools.count()
        self._live: set[_SimCall] = set()
        self._retired: list[_SimCall] = []
        self._meters: list[_Meter] = []
        self._idle_meters: list[_Meter] = []
        self._account: Any = None
        self._stopping = False

    def start(self, timeout: float = 15.0) -> None:
        gc.disable()  # pjsua2 destructors must run on the SIP thread (see sip.engine)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator did not start in time")
        if self._error is not None:
            if isinstance(self._error, SipSetupError):
                raise self._error
            raise SipSetupError(f"simulator could not start: {self._error}")

    def stop(self) -> None:
        self._inbox.put("stop")
        self._thread.join(15)

    def _report(self, name: str, call: _SimCall | None = None, **fields: Any) -> None:
        message: dict[str, Any] = {"event": name, "at": time.time()}
        if call is not None:
            message |= {"call": call.serial, "number": call.user}
        self._report_to(message | fields)

    # -- SIP thread -----------------------------------------------------------------------

    def _run(self) -> None:
        ep = None
        try:
            ep = create_endpoint(None, 0, 16000)
            transports = add_transports(ep, self.bind_address, self.port)
            self.port = transports.udp_port
            ep.libStart()
            ep.audDevManager().setNullDev()
            set_codec_priorities(ep, ["PCMU/8000", "PCMA/8000", "G722/16000"])
            acfg = pj.AccountConfig()
            acfg.idUri = f"sip:sim@{self.bind_address}:{self.port}"
            acfg.mediaConfig.transportConfig = media_transport(
                self.rtp_port, 100, self.bind_address
            )
            acfg.mediaConfig.lockCodecEnabled = False
            self._account = _Account(self)
            self._account.create(acfg, True)
            self._create_meters()
        except BaseException as exc:
            self._error = exc
            if ep is not None:  # on this thread, or pjlib aborts the process at exit
                self._account = None
                destroy_endpoint(ep, self._meters, self._idle_meters)
            self._ready.set()
            return
        self._ready.set()
        self._report("ready", port=self.port)
        try:
            while not self._stopping:
                ep.libHandleEvents(POLL_MS)
                self._turn()
        finally:
            self._shutdown(ep)

    def _create_meters(self) -> None:
        """In its own frame: a loop variable must not keep a port alive past libDestroy."""
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.init(pj.PJMEDIA_FORMAT_PCM, 16000, 1, 20_000, 16)
        for n in range(MAX_CALLS):
            meter = _Meter()
            meter.createPort(f"meter{n}", fmt)
            self._meters.append(meter)
        self._idle_meters = list(self._meters)

    def _turn(self) -> None:
        self._retired.clear()
        collect_like_python()
        with contextlib.suppress(queue.Empty):
            while True:
                if self._inbox.get_nowait() == "stop":
                    self._stopping = True
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, action, serial = heapq.heappop(self._timers)
            call = self._by_serial.get(serial)
            if call is None or call.ended:
                continue  # gone: never touch a Call object whose slot may be reused
            with contextlib.suppress(pj.Error):
                if action == "answer":
                    call.answer(_op(200))
                elif action == "hangup":
                    call.local_hangup = True
                    call.hangup(_op(0))

    def _later(self, seconds: float, action: str, call: _SimCall) -> None:
        heapq.heappush(
            self._timers, (time.monotonic() + seconds, next(self._tie), action, call.serial)
        )

    def _on_incoming(self, pj_call_id: int, invite: str) -> None:
        match = REQUEST_USER.search(invite.encode(errors="replace"))
        user = match.group(1).decode() if match else ""
        call = _SimCall(self, self._account, pj_call_id, user, "callee")
        self._live.add(call)  # keep it until DISCONNECTED (a dropped local answers 603)
        self._by_serial[call.serial] = call
        behaviour = self.plan.behaviour(user)
        call.behaviour = behaviour
        headers = _headers(invite)
        self._report("incoming", call, **{"from": headers.get("from", ""), "headers": headers})
        if behaviour is None:
            call.answer(_op(404))
            self._report("rejected", call, status=404)
            return
        if behaviour.reject is not None:
            call.answer(_op(behaviour.reject))
            self._report("rejected", call, status=behaviour.reject)
            return
        call.answer(_op(180))
        if behaviour.answer:
            self._later(behaviour.ring, "answer", call)

    def _on_state(self, call: _SimCall) -> None:
        ci = call.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and call.answered_at is None:
            call.answered_at = time.monotonic()
            self._report("answered", call, role=call.role)
            talk = call.behaviour.talk_seconds if call.behaviour else None
            if talk is not None:
                self._later(talk, "hangup", call)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and not call.ended:
            call.ended = True
            meter = call.meter
            frames, voiced = (meter.frames, meter.voiced) if meter else (0, 0)
            self._release(call)
            if call.answered_at is not None or call.role == "transferred":
                self._report(
                    "ended",
                    call,
                    by="local" if call.local_hangup else "remote",
                    status=ci.lastStatusCode,
                    talked=round(time.monotonic() - call.answered_at, 3) if call.answered_at else 0,
                    rx_frames=frames,
                    voiced_frames=voiced,
                    role=call.role,
                )
            elif call.behaviour is not None and call.behaviour.reject is None:
                self._report("ended", call, by="remote", status=ci.lastStatusCode, talked=0,
                             rx_frames=0, voiced_frames=0, role=call.role)  # fmt: skip
            self._by_serial.pop(call.serial, None)
            if call in self._live:
                self._live.discard(call)
                self._retired.append(call)

    def _on_media(self, call: _SimCall) -> None:
        ci = call.getInfo()
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                if call.audio is not None:
                    return
                call.audio = call.getAudioMedia(mi.index)
                if self._idle_meters:
                    meter = self._idle_meters.pop()
                    meter.frames = meter.voiced = 0
                    meter.active = True
                    call.meter = meter
                    call.audio.startTransmit(meter)
                behaviour = call.behaviour
                if behaviour is not None and behaviour.play and call.role == "callee":
                    player = pj.AudioMediaPlayer()
                    player.createPlayer(behaviour.play, pj.PJMEDIA_FILE_NO_LOOP)
                    player.startTransmit(call.audio)
                    call.player = player
                    self._report("playing", call, wav=behaviour.play)
                return

    def _release(self, call: _SimCall) -> None:
        if call.player is not None and call.audio is not None:
            with contextlib.suppress(pj.Error):
                call.player.stopTransmit(call.audio)
        call.player = None
        meter, call.meter = call.meter, None
        if meter is not None:
            meter.active = False
            if call.audio is not None:
                with contextlib.suppress(pj.Error):
                    call.audio.stopTransmit(meter)
            self._idle_meters.append(meter)
        call.audio = None

    def _shutdown(self, ep: Any) -> None:
        self._hang_up_all(ep)
        self._timers.clear()
        account = self._account
        self._account = None
        with contextlib.suppress(pj.Error):
            account.shutdown()
        self._by_serial.clear()
        destroy_endpoint(ep, self._live, self._retired, self._meters, self._idle_meters, [account])

    def _hang_up_all(self, ep: Any) -> None:
        for call in list(self._live):
            with contextlib.suppress(pj.Error):
                call.hangup(_op(0))
        deadline = time.monotonic() + 2
        while self._live and time.monotonic() < deadline:
            ep.libHandleEvents(POLL_MS)
            self._retired.clear()
        for call in list(self._live):
            self._release(call)


def _op(status: int) -> Any:
    prm = pj.CallOpParam(True)
    if status:
        prm.statusCode = status
    return prm


def _headers(invite: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in invite.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _print_json(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
