"""One outbound call's rules, pure: typed line events and times in, actions out.

The worker feeds a ``CallSession`` what the line reports (``sip.events``) and the timers
it asked for (``next_deadline``), each with a ``Clock`` reading; the session answers with
actions the worker carries out in order: debits to take (``Charge``), commands for the
line (``Play``, ``StopPlay``, ``StartTransfer``, ``HangUp``), records and events to write
(``Record``, ``Publish``, ``Note``), and exactly one ``Settle`` (the disposition, when to
try the contact again, the final CDR). After the settlement it answers nothing.

What it decides, and nothing else in the worker does:

* billing: the ``CallMeter`` from the answer (first increment at once, one per increment
  boundary, agent segments per the tariff, the rest at the hangup); an increment is taken
  ``TICK_GRACE`` after its boundary so a hangup the line stamped just before it (still in
  the pipe) comes first, and an event stamped before the meter's latest event counts from
  that event (the CDR then always bills exactly what the ledger holds);
* the call's script (``ScriptRun``: prompts, listening, answering-machine hang-ups,
  transfers), the contact's ``transfer_after`` and the campaign's ``max_call_seconds``;
* the disposition (``disposition_of``: the SIP facts of an unanswered call) and the
  contact's next attempt (``next_attempt``: the retry policy, and an answered call the
  line lost is never dialled again), the rule recovery of dead workers' calls uses too.

Clocks: billing and timers run on the monotonic clock the line stamps its events with;
wall times are only written down (CDR, ledger) and come from the ``Clock`` reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing.meter import CallMeter, Debit
from billing.tariff import Counter, Tariff, TrunkKind
from dialer.contacts import transfer_after
from dialer.errors import DialerError
from dialer.retry import Disposition, RetryPolicy
from dialer.script import Say, Script
from dialer.script_run import HangUp, LineAction, Play, ScriptRun, StartTransfer, StopPlay
from sip.events import (
    AgentAnswered,
    AgentEnded,
    AgentFailed,
    Answered,
    Error,
    Failed,
    Hangup,
    Interrupted,
    LineEvent,
    PlayDone,
    Ringing,
    Speech,
)

TICK_GRACE = 0.25  # s after an increment boundary before it is taken
#: an event without ``mono``: its wall stamp says how old it is, trusted only up to this
#: (a wall clock step in between must not move the bill by more)
MAX_EVENT_AGE = 5.0
AGENT_RING_TIMEOUT = 30.0  # a `transfer_after` transfer: s the agent may ring
EPOCH = datetime(1970, 1, 1)

__all__ = [
    "Action",
    "CallFailed",
    "CallPlan",
    "CallSession",
    "Charge",
    "Clock",
    "ForgetPrompt",
    "HangUp",
    "LineAction",
    "Note",
    "Play",
    "Publish",
    "Record",
    "Settle",
    "StartTransfer",
    "StopPlay",
    "disposition_of",
    "next_attempt",
]


def wall(epoch: float) -> datetime:
    """Epoch seconds as the naive UTC datetime the database stores."""
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Clock:
    """One reading of both clocks, taken together by the worker."""

    mono: float  # time.monotonic()
    epoch: float  # time.time()

    def wall_of(self, mono: float) -> datetime:
        """The wall time of a monotonic instant, on the wall clock as it reads now."""
        return wall(self.epoch - (self.mono - mono))

    @property
    def now(self) -> datetime:
        return wall(self.epoch)

    def event_time(self, event: LineEvent) -> float:
        """When the line says the event happened, on the monotonic clock (never later
        than now; from the wall stamp only if the line sent no monotonic one)."""
        if event.mono is not None and math.isfinite(event.mono):
            return min(event.mono, self.mono)
        if event.at is not None and math.isfinite(event.at):
            age = self.epoch - event.at
            if 0.0 <= age <= MAX_EVENT_AGE:
                return self.mono - age
        return self.mono


# -- what the session asks of the worker ---------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """Take one increment from the ledger (idempotent: call id, counter, increment)."""

    debit: Debit
    due: datetime  # when it fell due (wall), even if written after an outage


@dataclass(frozen=True)
class Publish:
    """An event for the outside (MQTT, the event stream): ``call.*``."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Note:
    """A log line about the call (the worker's log context carries the call's ids)."""

    level: str  # info | warning
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """Write the CDR as it stands (the call is up: live status counts it)."""

    cdr: dict[str, Any]


@dataclass(frozen=True)
class ForgetPrompt:
    """A prompt the line could not play (a temp cleaner took the cache?): prepare the
    scripts using it again before their next calls."""

    wav: str


@dataclass(frozen=True)
class Settle:
    """The call is over: release the contact (done, or pending again at ``retry_at``) and
    write the final CDR, in one transaction."""

    disposition: Disposition
    retry_at: datetime | None
    cdr: dict[str, Any]


Action = (
    Charge | Play | StopPlay | StartTransfer | HangUp | Publish | Note | Record | ForgetPrompt
    | Settle
)  # fmt: skip


class CallFailed(DialerError):
    """The call's script failed; ``actions``: what was decided before, still to carry out."""

    def __init__(self, actions: list[Action]) -> None:
        super().__init__("the call's script failed")
        self.actions = actions


# -- the rules of one call ------------------------------------------------------------------


def disposition_of(event: Failed) -> Disposition:
    """An unanswered call's disposition from the SIP facts the line reported."""
    if event.timeout:
        return Disposition.NO_ANSWER
    if event.by == "local":
        return Disposition.CANCELLED
    if event.status in (486, 600):
        return Disposition.BUSY
    if event.status == 603:
        return Disposition.REJECTED
    if event.status in (408, 480, 487):
        return Disposition.NO_ANSWER
    return Disposition.FAILED


def next_attempt(
    policy: RetryPolicy, disposition: Disposition, attempts: int, answered: bool, now: datetime
) -> datetime | None:
    """When to dial the contact again (None: it is done). Someone who answered is never
    called again because a line died under the call."""
    if answered and disposition is Disposition.INTERRUPTED:
        return None
    return policy.next_attempt(disposition, attempts, now)


@dataclass(frozen=True)
class CallPlan:
    """What one call needs to know of its campaign and contact."""

    call_id: str
    account: str
    campaign: str
    campaign_id: int
    contact_id: int
    phone: str
    attempt: int
    trunk_kind: TrunkKind
    retry: RetryPolicy
    max_call_seconds: float
    agent_uri: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


class CallSession:
    def __init__(
        self,
        plan: CallPlan,
        tariff: Tariff,
        script: Script,
        audio: Mapping[str, str],
        invited: Clock,
    ) -> None:
        """``audio``: block name -> the WAV its ``say`` plays; ``invited``: the clocks
        as the INVITE left."""
        self.plan = plan
        self.meter = CallMeter(tariff, plan.trunk_kind)
        self.run = ScriptRun(script, audio)
        self.invite_mono = invited.mono
        self.answered_at: float | None = None  # monotonic
        self.settled = False
        self._answered_wall: datetime | None = None
        self._transfer_at: float | None = None
        self._hangup_at: float | None = None
        self.cdr: dict[str, Any] = {
            "call_id": plan.call_id, "campaign_id": plan.campaign_id,
            "account": plan.account, "contact_id": plan.contact_id, "phone": plan.phone,
            "attempt": plan.attempt, "direction": "outbound",
            "trunk_kind": plan.trunk_kind.value, "invite_at": invited.now,
        }  # fmt: skip

    # -- what the worker asks --------------------------------------------------------------

    @property
    def with_agent(self) -> bool:
        return self.run.with_agent

    def dialled(self, line: str | None) -> None:
        """The line took the call."""
        self.cdr["line"] = line

    def next_deadline(self) -> float | None:
        """The monotonic time ``on_timer`` is due next; None: only events move the call."""
        if self.settled:
            return None
        due = self.meter.next_due_at()
        deadlines = [
            d
            for d in (
                due and due + TICK_GRACE,
                self._transfer_at,
                self._hangup_at,
                self.run.deadline,
            )
            if d
        ]
        return min(deadlines) if deadlines else None

    def on_timer(self, clock: Clock) -> list[Action]:
        if self.settled:
            return []
        now = self._meter_time(clock.mono)
        actions: list[Action] = []
        due = self.meter.next_due_at()
        if due is not None and now >= due + TICK_GRACE:
            actions += self._charges(self.meter.tick(now), now, clock)
        actions = self._script(actions, lambda: self.run.timer(now), now)
        if self._transfer_at is not None and now >= self._transfer_at:
            self._transfer_at = None
            if self.plan.agent_uri:
                actions += self._line(
                    [StartTransfer(self.plan.agent_uri, "bridge", AGENT_RING_TIMEOUT)], now
                )
        if self._hangup_at is not None and now >= self._hangup_at:
            self._hangup_at = None
            actions.append(HangUp("max call seconds"))
        return actions

    def on_event(self, event: LineEvent, clock: Clock) -> list[Action]:
        if self.settled:
            return []
        at = clock.event_time(event)
        stamped = wall(event.at) if event.at is not None and math.isfinite(event.at) else None
        when = stamped or clock.wall_of(at)  # the CDR's times: the line's wall clock
        match event:
            case Speech():
                return self._script([], lambda: self.run.speech(event, at), at)
            case Ringing():
                self.cdr["ringing_at"] = when
                return [self._publish("call.ringing", status=event.status)]
            case Answered():
                return self._answered(self._meter_time(at), when, clock)
            case PlayDone():
                return self._script([], lambda: self.run.play_done(at), at)
            case AgentAnswered():
                at = self._meter_time(at)
                actions: list[Action] = [
                    self._publish("call.transfer", segment="agent", mode=event.mode)
                ]
                if event.mode == "bridge":
                    actions += self._charges(self.meter.agent_started(at), at, clock)
                mode = event.mode

                def with_agent() -> list[LineAction]:
                    self.run.agent_answered(mode)
                    return []

                return self._script(actions, with_agent, at)
            case AgentFailed():
                note = Note("info", "transfer failed", {"status": event.status})
                return self._script([note], lambda: self.run.agent_failed(at), at)
            case AgentEnded():
                at = self._meter_time(at)
                actions = [
                    *self._charges(self.meter.agent_ended(at), at, clock),
                    self._publish("call.transfer", segment="bot", mode="bridge"),
                ]
                return self._script(actions, lambda: self.run.agent_ended(at), at)
            case Error() if event.security:
                return [Note("warning", "media security", {"kind": event.security,
                                                           "message": event.message})]  # fmt: skip
            case Error():
                actions = [Note("warning", "line could not do it", {"message": event.message})]
                block = self.run.block
                if block is not None and isinstance(block.action, Say):
                    actions.append(ForgetPrompt(self.run.audio.get(block.name, "")))
                return self._script(actions, lambda: self.run.line_error(at), at)
            case Hangup() | Failed() | Interrupted():
                return self._end(event, self._meter_time(at), when, clock)
        return []

    # -- steps -----------------------------------------------------------------------------

    def _answered(self, at: float, when: datetime, clock: Clock) -> list[Action]:
        self.answered_at = at
        self._answered_wall = when
        self.cdr["answered_at"] = when
        actions: list[Action] = [self._publish("call.answered")]
        actions += self._charges(self.meter.answered(at), at, clock)
        actions += [Record(dict(self.cdr)), Note("info", "answered")]
        actions = self._script(actions, lambda: self.run.answered(at), at)
        self._hangup_at = at + self.plan.max_call_seconds
        try:
            after = transfer_after(self.plan.attributes)
        except DialerError as exc:  # checked at import: a bad value is ignored, not fatal
            actions.append(Note("warning", "contact attribute ignored", {"error": str(exc)}))
            after = None
        if self.plan.agent_uri and after:
            self._transfer_at = at + after
        return actions

    def _end(
        self, event: Hangup | Failed | Interrupted, at: float, when: datetime, clock: Clock
    ) -> list[Action]:
        answered = self.answered_at is not None
        actions: list[Action] = []
        if answered:
            actions += self._charges(self.meter.hangup(at), at, clock)
        else:
            self.meter.hangup(max(at, self.invite_mono))
        match event:
            case Interrupted():
                disposition, status, by = Disposition.INTERRUPTED, None, "line"
            case Hangup():
                machine = self.run.amd.machine is not None
                disposition = Disposition.ANSWERING_MACHINE if machine else Disposition.ANSWERED
                status, by = event.status, event.by
            case Failed():
                disposition = Disposition.ANSWERED if answered else disposition_of(event)
                status, by = event.status, event.by
        if disposition is Disposition.ANSWERED and self.run.amd.machine is not None:
            disposition = Disposition.ANSWERING_MACHINE
        self.cdr |= {
            "ended_at": when,
            "sip_status": status,
            "disposition": disposition.value,
            "hangup_by": by,
            "agent_seconds": self.meter.agent_ms() / 1000,
            "billed_telephony_seconds": self.meter.billed_seconds(Counter.TELEPHONY),
            "billed_speech_seconds": self.meter.billed_seconds(Counter.SPEECH),
            "segments": self._segments(),
        }
        retry_at = next_attempt(self.plan.retry, disposition, self.plan.attempt, answered,
                                clock.now)  # fmt: skip
        self.settled = True
        billed = {"telephony": self.cdr["billed_telephony_seconds"],
                  "speech": self.cdr["billed_speech_seconds"]}  # fmt: skip
        return [
            *actions,
            Settle(disposition, retry_at, dict(self.cdr)),
            self._publish(
                "call.ended",
                disposition=disposition.value,
                sip_status=status,
                hangup_by=by,
                billed_seconds=billed,
            ),
            Note("info", "call ended", {"disposition": disposition.value}),
        ]

    def _segments(self) -> list[dict[str, Any]]:
        """The meter's monotonic spans as wall times, from the answer's wall stamp."""
        if self._answered_wall is None or self.answered_at is None:
            return []
        shift = (self._answered_wall - EPOCH).total_seconds() - self.answered_at
        return [
            {"kind": s.kind.value, "start": round(s.start_ms / 1000 + shift, 3),
             "end": round(s.end_ms / 1000 + shift, 3)}
            for s in self.meter.segments()
        ]  # fmt: skip

    def _script(
        self, done: list[Action], step: Callable[[], list[LineAction]], at: float
    ) -> list[Action]:
        """``done`` and then what the script's ``step`` asks of the line. A script that
        fails raises CallFailed carrying ``done``: what was decided before it (an
        increment due, the answer's record) is still carried out before the call is
        hung up and settled."""
        try:
            commands = step()
        except Exception as exc:
            raise CallFailed(done) from exc
        return done + self._line(commands, at)

    def _line(self, commands: list[LineAction], at: float) -> list[Action]:
        """The script's commands for the line, with what they mean for the records."""
        actions: list[Action] = []
        for command in commands:
            if isinstance(command, StartTransfer):
                actions.append(Note("info", "transfer", {"agent": command.agent,
                                                         "mode": command.mode}))  # fmt: skip
            elif isinstance(command, HangUp) and command.machine is not None:
                decision = command.machine
                after = at - (self.answered_at if self.answered_at is not None else at)
                self.cdr["amd_reason"] = (
                    f"{decision.signal}: {decision.reason}"
                    + (f" (score {decision.score:g})" if decision.score else "")
                    + f"; {after:.2f} s after the answer"
                )[:255]
                actions.append(Note("info", "answering machine: hanging up", {
                    "signal": decision.signal, "reason": decision.reason,
                    "score": decision.score, "after_answer": round(after, 2)}))  # fmt: skip
                actions.append(self._publish(
                    "call.answering_machine", signal=decision.signal, reason=decision.reason,
                    score=decision.score, after_answer_seconds=round(after, 3)))  # fmt: skip
            actions.append(command)
        return actions

    @staticmethod
    def _charges(debits: list[Debit], at: float, clock: Clock) -> list[Action]:
        return [Charge(d, clock.wall_of(at)) for d in debits]

    def _meter_time(self, at: float) -> float:
        """An event time the meter can take: never before its latest event."""
        last = self.meter.last_event_at
        return at if last is None else max(at, last)

    def _publish(self, kind: str, **fields: Any) -> Publish:
        ids = {"account": self.plan.account, "campaign": self.plan.campaign,
               "call_id": self.plan.call_id}  # fmt: skip
        return Publish(kind, ids | fields)
