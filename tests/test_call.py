"""The call session (dialer/call.py), pure: examples and properties over event sequences."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.tariff import Counter, Segment, Tariff, TrunkKind
from dialer.call import (
    TICK_GRACE,
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
    disposition_of,
    next_attempt,
)
from dialer.retry import Disposition, RetryPolicy, Rule
from dialer.script import default_script
from sip import events as ev

EPOCH_AT_ZERO = 1_800_000_000.0  # the wall clock when the monotonic clock reads 0


def clock(mono: float) -> Clock:
    return Clock(mono, EPOCH_AT_ZERO + mono)


def plan(**overrides: Any) -> CallPlan:
    values: dict[str, Any] = {
        "call_id": "c-1", "account": "acme", "campaign": "spring", "campaign_id": 1,
        "contact_id": 7, "phone": "+15550001", "attempt": 1, "trunk_kind": TrunkKind.PLATFORM,
        "retry": RetryPolicy(3, 300), "max_call_seconds": 3600.0,
    }  # fmt: skip
    return CallPlan(**(values | overrides))


def session(
    tariff: Tariff | None = None, at: float = 100.0, audio: dict[str, str] | None = None,
    **overrides: Any,
) -> CallSession:  # fmt: skip
    audio = {"greeting": "/tmp/greeting.wav"} if audio is None else audio
    return CallSession(plan(**overrides), tariff or Tariff(), default_script(), audio, clock(at))


def charges(actions: list[Action]) -> list[Charge]:
    return [a for a in actions if isinstance(a, Charge)]


def settles(actions: list[Action]) -> list[Settle]:
    return [a for a in actions if isinstance(a, Settle)]


# -- examples -----------------------------------------------------------------------------


def test_answer_takes_the_first_increment_at_once_and_records_the_call() -> None:
    s = session(Tariff(increment_seconds=15))
    actions = s.on_event(ev.Answered(call_id="c-1", mono=101.0, at=EPOCH_AT_ZERO + 101), clock(101))
    first = charges(actions)
    assert [(c.debit.counter, c.debit.increment, c.debit.seconds) for c in first] == [
        (Counter.TELEPHONY, 1, 15), (Counter.SPEECH, 1, 15)]  # fmt: skip
    assert first[0].due == datetime(2027, 1, 15, 8, 1, 41)
    assert any(isinstance(a, Record) and a.cdr["answered_at"] for a in actions)
    assert any(isinstance(a, Publish) and a.kind == "call.answered" for a in actions)
    assert Play("/tmp/greeting.wav") in actions
    assert s.next_deadline() == pytest.approx(101.0 + 15.001 + TICK_GRACE)


def test_an_increment_is_taken_only_after_its_grace() -> None:
    s = session(Tariff(increment_seconds=10))
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    assert charges(s.on_timer(clock(110.1))) == []  # boundary passed, grace not yet
    later = charges(s.on_timer(clock(110.3)))
    assert [c.debit.increment for c in later] == [2, 2]
    # a hangup stamped before the boundary, delivered after the tick: billed from the tick
    end = s.on_event(ev.Hangup(call_id="c-1", mono=109.0, by="remote", status=200), clock(110.4))
    assert charges(end) == []
    assert settles(end)[0].cdr["billed_telephony_seconds"] == 20


@pytest.mark.parametrize(
    ("failed", "disposition"),
    [
        (ev.Failed(call_id="c", status=486), Disposition.BUSY),
        (ev.Failed(call_id="c", status=600), Disposition.BUSY),
        (ev.Failed(call_id="c", status=603), Disposition.REJECTED),
        (ev.Failed(call_id="c", status=480), Disposition.NO_ANSWER),
        (ev.Failed(call_id="c", status=487, by="local", timeout=True), Disposition.NO_ANSWER),
        (ev.Failed(call_id="c", status=487, by="local"), Disposition.CANCELLED),
        (ev.Failed(call_id="c", status=503), Disposition.FAILED),
        (ev.Failed(call_id="c", status=0), Disposition.FAILED),
    ],
)
def test_unanswered_dispositions(failed: ev.Failed, disposition: Disposition) -> None:
    assert disposition_of(failed) is disposition
    s = session()
    settle = settles(s.on_event(failed.model_copy(update={"mono": 120.0}), clock(120)))[0]
    assert settle.disposition is disposition
    assert settle.cdr["billed_telephony_seconds"] == 0 and settle.cdr["disposition"] == disposition


def test_retry_times_follow_the_policy_and_an_answered_interrupted_call_is_never_redialled() -> (
    None
):
    policy = RetryPolicy(2, 60, {Disposition.BUSY: Rule(5, 10)})
    now = datetime(2027, 1, 1)
    assert next_attempt(policy, Disposition.BUSY, 4, False, now) == now + timedelta(seconds=10)
    assert next_attempt(policy, Disposition.BUSY, 5, False, now) is None
    assert next_attempt(policy, Disposition.NO_ANSWER, 1, False, now) == now + timedelta(seconds=60)
    assert next_attempt(policy, Disposition.INTERRUPTED, 1, False, now) is not None
    assert next_attempt(policy, Disposition.INTERRUPTED, 1, True, now) is None
    assert next_attempt(policy, Disposition.ANSWERED, 1, True, now) is None
    assert next_attempt(policy, Disposition.CANCELLED, 9, False, now) == now

    s = session(retry=policy)
    s.on_event(ev.Answered(call_id="c-1", mono=101.0), clock(101))
    end = settles(s.on_event(ev.Interrupted(call_id="c-1", mono=130.0), clock(130)))[0]
    assert end.disposition is Disposition.INTERRUPTED and end.retry_at is None
    assert end.cdr["hangup_by"] == "line"


def test_max_call_seconds_hangs_up() -> None:
    s = session(max_call_seconds=60.0)
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    for t in range(101, 160):
        assert HangUp("max call seconds") not in s.on_timer(clock(t))
    assert HangUp("max call seconds") in s.on_timer(clock(160.0))


def test_transfer_after_from_the_contact_and_a_bad_value_ignored() -> None:
    s = session(agent_uri="sip:agent@127.0.0.1", attributes={"transfer_after": "5"})
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    assert s.next_deadline() == pytest.approx(105.0)
    assert StartTransfer("sip:agent@127.0.0.1", "bridge", 30.0) in s.on_timer(clock(105.0))

    bad = session(agent_uri="sip:agent@127.0.0.1", attributes={"transfer_after": "soon"})
    actions = bad.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    assert any(isinstance(a, Note) and a.message == "contact attribute ignored" for a in actions)
    assert not any(isinstance(a, StartTransfer) for a in actions + bad.on_timer(clock(200)))


def test_line_errors_media_security_is_only_noted_a_failed_prompt_is_forgotten() -> None:
    s = session()
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    security = s.on_event(
        ev.Error(call_id="c-1", message="RTP from a stranger", security="rtp"), clock(101)
    )
    assert [type(a) for a in security] == [Note]
    failed = s.on_event(ev.Error(call_id="c-1", message="cannot play"), clock(102))
    assert ForgetPrompt("/tmp/greeting.wav") in failed


def test_agent_segments_follow_the_tariff() -> None:
    # platform trunk: speech charged only with the bot, telephony throughout (by default)
    tariff = Tariff(increment_seconds=1)
    s = session(tariff)
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    s.on_event(ev.AgentAnswered(call_id="c-1", mono=110.0, mode="bridge"), clock(110))
    assert s.with_agent
    s.on_event(ev.AgentEnded(call_id="c-1", mono=150.0), clock(150))
    end = settles(s.on_event(ev.Hangup(call_id="c-1", mono=160.0), clock(160)))[0]
    charged = tariff.charges_during
    talk = {c: 10 * charged(TrunkKind.PLATFORM, c, Segment.BOT)
            + 40 * charged(TrunkKind.PLATFORM, c, Segment.AGENT)
            + 10 * charged(TrunkKind.PLATFORM, c, Segment.BOT) for c in Counter}  # fmt: skip
    assert end.cdr["billed_telephony_seconds"] == talk[Counter.TELEPHONY]
    assert end.cdr["billed_speech_seconds"] == talk[Counter.SPEECH]
    assert end.cdr["agent_seconds"] == 40.0
    assert [seg["kind"] for seg in end.cdr["segments"]] == ["bot", "agent", "bot"]


def test_event_time_prefers_the_monotonic_stamp_and_trusts_a_wall_stamp_only_briefly() -> None:
    now = clock(500.0)
    assert now.event_time(ev.Answered(call_id="c", mono=499.0)) == 499.0
    assert now.event_time(ev.Answered(call_id="c", mono=900.0)) == 500.0  # never in the future
    assert now.event_time(ev.Answered(call_id="c", at=now.epoch - 2)) == pytest.approx(498.0)
    assert now.event_time(ev.Answered(call_id="c", at=now.epoch - 3600)) == 500.0
    assert now.event_time(ev.Answered(call_id="c", at=now.epoch + 60)) == 500.0


# -- properties ---------------------------------------------------------------------------


@dataclass
class Scenario:
    tariff: Tariff
    trunk: TrunkKind
    # (delay after the previous event, event); the last one ends the call
    steps: list[tuple[float, ev.LineEvent]] = field(default_factory=list)
    late: float = 0.0  # events reach the worker this long after the line stamped them


SEGMENTS = st.sampled_from(
    [frozenset(), frozenset({Segment.BOT}), frozenset({Segment.AGENT}),
     frozenset({Segment.BOT, Segment.AGENT})]
)  # fmt: skip


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    charges_ = {(k, c): draw(SEGMENTS) for k in TrunkKind for c in Counter}
    tariff = Tariff(increment_seconds=draw(st.sampled_from([1, 6, 15, 30, 60])), charges=charges_)
    gap = st.one_of(st.floats(0.0, 3.0), st.floats(0.0, 90.0), st.sampled_from([14.999, 15.0]))
    steps: list[tuple[float, ev.LineEvent]] = []
    if draw(st.booleans()):
        steps.append((draw(gap), ev.Ringing(call_id="c-1", status=180)))
    if not draw(st.integers(0, 4)):  # never answered
        ends: list[ev.LineEvent] = [
            ev.Failed(call_id="c-1", status=486),
            ev.Failed(call_id="c-1", status=487, by="local"),
            ev.Failed(call_id="c-1", status=408, timeout=True),
            ev.Interrupted(call_id="c-1"),
        ]
        steps.append((draw(gap), draw(st.sampled_from(ends))))
    else:
        steps.append((draw(gap), ev.Answered(call_id="c-1")))
        bridged = False
        for _ in range(draw(st.integers(0, 8))):
            middle: list[ev.LineEvent] = [
                ev.PlayDone(call_id="c-1", wav="/tmp/greeting.wav"),
                ev.Speech(call_id="c-1", kind="voice_start", audio_s=1.0),
                ev.Speech(call_id="c-1", kind="final", audio_s=2.0, text="hello there"),
                ev.Error(call_id="c-1", message="cannot play"),
                ev.AgentFailed(call_id="c-1", status=486),
            ]
            middle.append(ev.AgentEnded(call_id="c-1") if bridged
                          else ev.AgentAnswered(call_id="c-1", mode="bridge"))  # fmt: skip
            event = draw(st.sampled_from(middle))
            if isinstance(event, ev.AgentAnswered | ev.AgentEnded):
                bridged = not bridged
            steps.append((draw(gap), event))
        last: list[ev.LineEvent] = [ev.Hangup(call_id="c-1", by="remote", status=200),
                                    ev.Hangup(call_id="c-1", by="local", status=200),
                                    ev.Interrupted(call_id="c-1")]  # fmt: skip
        steps.append((draw(gap), draw(st.sampled_from(last))))
    late = draw(st.sampled_from([0.0, 0.0, 0.1, 0.2, 0.3, 2.0]))
    return Scenario(tariff, draw(st.sampled_from(list(TrunkKind))), steps, late)


def play(scenario: Scenario) -> Iterator[tuple[float, list[Action]]]:
    """Drive a session as the worker does: timers at their deadlines, each event when it
    reaches the worker (stamped ``late`` seconds earlier). Yields (when, actions)."""
    s = CallSession(
        plan(trunk_kind=scenario.trunk, max_call_seconds=86_400.0), scenario.tariff,
        default_script(), {"greeting": "/tmp/greeting.wav"}, clock(0.0),
    )  # fmt: skip
    stamped = 0.0
    for delay, event in scenario.steps:
        stamped += delay
        arrives = stamped + scenario.late
        while (deadline := s.next_deadline()) is not None and deadline <= arrives:
            yield deadline, s.on_timer(clock(deadline))
        yield arrives, s.on_event(event.model_copy(update={"mono": stamped}), clock(arrives))
    # after the settlement: nothing more, whatever comes
    yield stamped, s.on_timer(clock(stamped + 10_000))
    yield stamped, s.on_event(ev.Hangup(call_id="c-1", mono=stamped + 1), clock(stamped + 1))
    assert s.next_deadline() is None


def talk_seconds(scenario: Scenario) -> tuple[dict[Counter, float], set[Counter]]:
    """Charged talk per counter from the line's stamps alone (no meter), and the counters
    that ran at all (they are billed at least one increment, taken in advance)."""
    total = dict.fromkeys(Counter, 0.0)
    ran: set[Counter] = set()
    segment: tuple[Segment, float] | None = None
    t = 0.0
    for delay, event in scenario.steps:
        t += delay
        if segment is not None and isinstance(
            event, ev.AgentAnswered | ev.AgentEnded | ev.Hangup | ev.Interrupted
        ):
            for counter in Counter:
                if scenario.tariff.charges_during(scenario.trunk, counter, segment[0]):
                    # times are billed to the millisecond: each stamp rounded, as a
                    # line's CLOCK_MONOTONIC reading is taken to the ms
                    total[counter] += (round(t * 1000) - round(segment[1] * 1000)) / 1000
            segment = None
        if isinstance(event, ev.Answered | ev.AgentEnded):
            segment = (Segment.BOT, t)
        elif isinstance(event, ev.AgentAnswered):
            segment = (Segment.AGENT, t)
        if segment is not None:
            ran |= {c for c in Counter
                    if scenario.tariff.charges_during(scenario.trunk, c, segment[0])}  # fmt: skip
    return total, ran


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_billing_is_exact_and_there_is_exactly_one_settlement(scenario: Scenario) -> None:
    rounds = list(play(scenario))
    actions = [a for _, batch in rounds for a in batch]
    settled = settles(actions)
    assert len(settled) == 1
    assert rounds[-1][1] == [] and rounds[-2][1] == []  # nothing after the settlement
    last = max(i for i, a in enumerate(actions) if isinstance(a, Settle))
    assert not any(isinstance(a, Charge | Play | HangUp | StartTransfer | Record)
                   for a in actions[last:])  # fmt: skip
    cdr = settled[0].cdr
    inc = scenario.tariff.increment_seconds
    talk, ran = talk_seconds(scenario)
    for counter in Counter:
        taken = [c.debit for c in charges(actions) if c.debit.counter is counter]
        assert [d.increment for d in taken] == list(range(1, len(taken) + 1))  # idempotency keys
        billed = sum(d.seconds for d in taken)
        assert billed == cdr[f"billed_{counter.value}_seconds"]  # CDR = ledger
        exact = math.ceil(round(talk[counter] * 1000) / (inc * 1000)) * inc
        if counter in ran:
            exact = max(exact, inc)
        if scenario.late < TICK_GRACE:  # the grace covers the pipe: billed from the stamps
            assert billed == exact, (counter, talk[counter])
        # later than the grace (a stalled worker), an event counts from the latest tick:
        # billed then moves from the stamps, and the CDR still says what the ledger took
    answered = any(isinstance(e, ev.Answered) for _, e in scenario.steps)
    end = scenario.steps[-1][1]
    if isinstance(end, ev.Interrupted):
        assert settled[0].disposition is Disposition.INTERRUPTED
        if answered:  # someone was reached: never dialled again
            assert settled[0].retry_at is None
    elif answered:
        assert settled[0].disposition in (Disposition.ANSWERED, Disposition.ANSWERING_MACHINE)
        assert settled[0].retry_at is None or (
            settled[0].disposition is Disposition.ANSWERING_MACHINE
        )
    else:
        assert isinstance(end, ev.Failed)
        assert settled[0].disposition is disposition_of(end)
    if not answered:
        assert not charges(actions)


def test_a_failing_script_keeps_what_was_decided_before_it() -> None:
    """A script bug at the answer or at a timer: the increment due and the answer's record
    still reach the worker (CallFailed carries them), so the ledger holds what was talked."""

    def broken(*_: object) -> list[Any]:
        raise RuntimeError("script bug")

    s = session(Tariff(increment_seconds=10))
    s.run.answered = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(CallFailed) as failed:
        s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    kept = failed.value.actions
    assert [c.debit.increment for c in charges(kept)] == [1, 1]
    assert any(isinstance(a, Record) for a in kept)

    s = session(Tariff(increment_seconds=10))
    s.on_event(ev.Answered(call_id="c-1", mono=100.0), clock(100))
    s.run.timer = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(CallFailed) as failed:
        s.on_timer(clock(110.3))
    assert [c.debit.increment for c in charges(failed.value.actions)] == [2, 2]
