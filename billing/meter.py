"""The call meter: the billing rules of one call as a pure state machine.

Rules of this file (ARCHITECTURE.md "Billing rules"):

* No clock, no I/O. The caller feeds timestamped events (monotonic seconds) and gets
  back the increments to debit now. Timestamps are kept as whole milliseconds so that
  sums are exact.
* Billing starts at the answer. An unanswered call costs nothing.
* A call is a run of segments: it starts with the bot, an agent transfer opens an
  agent segment, the caller coming back opens a bot segment again. The tariff says,
  per trunk kind and counter, which segment kinds run the counter.
* Billing starts from the first second: a counter that ran at all bills at least 1 s.
* Per call and per counter the billable time is rounded UP to the increment
  (15 s: 1 s -> 15, 15 s -> 15, 16 s -> 30).
* Debits are taken in advance: increment k of a counter is due as soon as the
  counter's billable time exceeds (k - 1) increments. So increment 1 is due the moment
  the counter starts running (at the answer for the bot segment), increment 2 right
  after 15 s of billable time, and so on. At hangup the debits issued add up to
  exactly the rounded total.
* The first illegal event (out of order, time going backwards, anything after the
  hangup) raises MeterError and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from billing.errors import MeterError
from billing.tariff import Counter, Segment, Tariff, TrunkKind

FIRST_SECOND_MS = 1000


class MeterState(Enum):
    DIALING = "dialing"  # not answered yet
    BOT = "bot"
    AGENT = "agent"
    ENDED = "ended"


class MeterEvent(Enum):
    ANSWERED = "answered"
    AGENT_STARTED = "agent_started"
    AGENT_ENDED = "agent_ended"  # the caller is back with the bot
    HANGUP = "hangup"
    TICK = "tick"  # time passes; no state change


_TRANSITIONS: dict[tuple[MeterState, MeterEvent], MeterState] = {
    (MeterState.DIALING, MeterEvent.ANSWERED): MeterState.BOT,
    (MeterState.DIALING, MeterEvent.HANGUP): MeterState.ENDED,
    (MeterState.DIALING, MeterEvent.TICK): MeterState.DIALING,
    (MeterState.BOT, MeterEvent.AGENT_STARTED): MeterState.AGENT,
    (MeterState.BOT, MeterEvent.HANGUP): MeterState.ENDED,
    (MeterState.BOT, MeterEvent.TICK): MeterState.BOT,
    (MeterState.AGENT, MeterEvent.AGENT_ENDED): MeterState.BOT,
    (MeterState.AGENT, MeterEvent.HANGUP): MeterState.ENDED,
    (MeterState.AGENT, MeterEvent.TICK): MeterState.AGENT,
}

_SEGMENT_OF: dict[MeterState, Segment] = {
    MeterState.BOT: Segment.BOT,
    MeterState.AGENT: Segment.AGENT,
}


@dataclass(frozen=True)
class Debit:
    """One increment to take from the ledger, in advance."""

    counter: Counter
    increment: int  # 1-based number within this call and counter: part of the idempotency key
    seconds: int


@dataclass(frozen=True)
class SegmentSpan:
    kind: Segment
    start_ms: int
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


def to_ms(at: float) -> int:
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise MeterError(f"event time must be a finite number of seconds, got {at!r}")
    return round(at * 1000)


def round_up(billable_ms: int, increment_seconds: int) -> int:
    """Billable milliseconds -> billed seconds, rounded up to the increment."""
    increments = -(-billable_ms // (increment_seconds * 1000))
    return increments * increment_seconds


class CallMeter:
    def __init__(self, tariff: Tariff, trunk: TrunkKind) -> None:
        self.tariff = tariff
        self.trunk = trunk
        self.state = MeterState.DIALING
        self._last_ms: int | None = None
        self._segment_start_ms: int | None = None
        self._closed: list[SegmentSpan] = []
        self._charged_ms: dict[Counter, int] = dict.fromkeys(Counter, 0)  # closed segments only
        self._ran: dict[Counter, bool] = dict.fromkeys(Counter, False)
        self._issued: dict[Counter, int] = dict.fromkeys(Counter, 0)

    # -- events ---------------------------------------------------------------------------

    def answered(self, at: float) -> list[Debit]:
        return self._handle(MeterEvent.ANSWERED, at)

    def agent_started(self, at: float) -> list[Debit]:
        return self._handle(MeterEvent.AGENT_STARTED, at)

    def agent_ended(self, at: float) -> list[Debit]:
        return self._handle(MeterEvent.AGENT_ENDED, at)

    @property
    def last_event_at(self) -> float | None:
        """The time (s) of the latest event: later events may not be earlier than it."""
        return None if self._last_ms is None else self._last_ms / 1000

    def hangup(self, at: float) -> list[Debit]:
        return self._handle(MeterEvent.HANGUP, at)

    def tick(self, at: float) -> list[Debit]:
        return self._handle(MeterEvent.TICK, at)

    def _handle(self, event: MeterEvent, at: float) -> list[Debit]:
        now = to_ms(at)
        new_state = _TRANSITIONS.get((self.state, event))
        if new_state is None:
            raise MeterError(f"call meter: {event.value} is not allowed while {self.state.value}")
        if self._last_ms is not None and now < self._last_ms:
            raise MeterError(
                f"call meter: {event.value} at {now / 1000:.3f}s is earlier than the previous"
                f" event at {self._last_ms / 1000:.3f}s"
            )
        self._last_ms = now
        if new_state is not self.state:
            self._close_segment(now)
            self.state = new_state
            if new_state in _SEGMENT_OF:
                self._segment_start_ms = now
                for counter in self._running_counters():
                    self._ran[counter] = True
        return self._due_debits(now)

    # -- queries --------------------------------------------------------------------------

    @property
    def answered_at_ms(self) -> int | None:
        if self._closed:
            return self._closed[0].start_ms
        return self._segment_start_ms

    def segments(self) -> list[SegmentSpan]:
        """Closed segments, plus the open one up to the last event."""
        spans = list(self._closed)
        if self._segment_start_ms is not None and self.state in _SEGMENT_OF:
            assert self._last_ms is not None
            spans.append(
                SegmentSpan(_SEGMENT_OF[self.state], self._segment_start_ms, self._last_ms)
            )
        return spans

    def billable_ms(self, counter: Counter, at: float | None = None) -> int:
        """Billable time of the counter so far (at the last event, or at ``at``)."""
        now = self._last_ms if at is None else to_ms(at)
        return self._billable_at(counter, 0 if now is None else now)

    def _billable_at(self, counter: Counter, now: int) -> int:
        total = self._charged_ms[counter]
        if self._segment_start_ms is not None and counter in self._running_counters():
            total += max(0, now - self._segment_start_ms)
        if self._ran[counter]:
            total = max(total, FIRST_SECOND_MS)
        return total

    def billed_seconds(self, counter: Counter) -> int:
        """Seconds debited so far; after the hangup, the call's final billed total."""
        return self._issued[counter] * self.tariff.increment_seconds

    def agent_ms(self) -> int:
        return sum(s.duration_ms for s in self.segments() if s.kind is Segment.AGENT)

    def next_due_at(self) -> float | None:
        """Monotonic time (s) at which the next debit falls due if nothing else happens."""
        if self._segment_start_ms is None or self.state not in _SEGMENT_OF:
            return None
        inc_ms = self.tariff.increment_seconds * 1000
        due: list[int] = []
        for counter in self._running_counters():
            # increment k is due once charged time > (k - 1) * inc, i.e. at the next ms.
            threshold = self._issued[counter] * inc_ms
            due.append(self._segment_start_ms + threshold - self._charged_ms[counter] + 1)
        return min(due) / 1000 if due else None

    # -- internals ------------------------------------------------------------------------

    def _running_counters(self) -> list[Counter]:
        segment = _SEGMENT_OF.get(self.state)
        if segment is None:
            return []
        return [c for c in Counter if self.tariff.charges_during(self.trunk, c, segment)]

    def _close_segment(self, now: int) -> None:
        if self._segment_start_ms is None or self.state not in _SEGMENT_OF:
            return
        span = SegmentSpan(_SEGMENT_OF[self.state], self._segment_start_ms, now)
        for counter in self._running_counters():
            self._charged_ms[counter] += span.duration_ms
        self._closed.append(span)
        self._segment_start_ms = None

    def _due_debits(self, now: int) -> list[Debit]:
        inc = self.tariff.increment_seconds
        debits: list[Debit] = []
        for counter in Counter:
            due = -(-self._billable_at(counter, now) // (inc * 1000))
            while self._issued[counter] < due:
                self._issued[counter] += 1
                debits.append(Debit(counter, self._issued[counter], inc))
        return debits
