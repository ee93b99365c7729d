"""Call meter: properties over any valid event sequence (hypothesis)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.errors import MeterError
from billing.meter import CallMeter, Debit
from billing.tariff import Counter, Segment, Tariff, TrunkKind

SEGMENT_SETS = [
    frozenset(),
    frozenset({Segment.BOT}),
    frozenset({Segment.AGENT}),
    frozenset({Segment.BOT, Segment.AGENT}),
]


@dataclass
class Call:
    """A generated call: events as (method, ms), in order."""

    answered: bool
    events: list[tuple[str, int]]

    def segments(self) -> list[tuple[Segment, int, int]]:
        spans: list[tuple[Segment, int, int]] = []
        current: tuple[Segment, int] | None = None
        for method, at in self.events:
            opens = {
                "answered": Segment.BOT,
                "agent_started": Segment.AGENT,
                "agent_ended": Segment.BOT,
            }.get(method)
            if method in ("agent_started", "agent_ended", "hangup") and current is not None:
                spans.append((current[0], current[1], at))
                current = None
            if opens is not None:
                current = (opens, at)
        return spans


@st.composite
def calls(draw: st.DrawFn) -> Call:
    t = draw(st.integers(0, 10**9))
    events: list[tuple[str, int]] = []

    def gap() -> int:
        return draw(
            st.one_of(
                st.integers(0, 2_000),
                st.integers(0, 200_000),
                st.sampled_from([14_999, 15_000, 15_001, 30_000]),
            )
        )

    def ticks() -> None:
        nonlocal t
        for _ in range(draw(st.integers(0, 3))):
            t += gap()
            events.append(("tick", t))

    ticks()
    answered = draw(st.booleans()) or draw(st.booleans())
    if answered:
        t += gap()
        events.append(("answered", t))
        ticks()
        for method in itertools.islice(
            itertools.cycle(["agent_started", "agent_ended"]), draw(st.integers(0, 6))
        ):
            t += gap()
            events.append((method, t))
            ticks()
    t += gap()
    events.append(("hangup", t))
    return Call(answered, events)


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    if draw(st.booleans()):
        return Tariff(increment_seconds=draw(st.sampled_from([1, 6, 15, 30, 60])))
    charges = {(k, c): draw(st.sampled_from(SEGMENT_SETS)) for k in TrunkKind for c in Counter}
    return Tariff(increment_seconds=draw(st.sampled_from([1, 6, 15, 60])), charges=charges)


def expected_billable_ms(call: Call, tariff: Tariff, trunk: TrunkKind, counter: Counter) -> int:
    charged = [
        e - s for kind, s, e in call.segments() if tariff.charges_during(trunk, counter, kind)
    ]
    if not charged:
        return 0
    return max(sum(charged), 1000)  # billing starts from the first second


def run(call: Call, tariff: Tariff, trunk: TrunkKind) -> tuple[CallMeter, list[tuple[int, Debit]]]:
    meter = CallMeter(tariff, trunk)
    debits: list[tuple[int, Debit]] = []
    for method, at in call.events:
        for debit in getattr(meter, method)(at / 1000):
            debits.append((at, debit))
        # In advance: what has been debited always covers the billable time used so far.
        for c in Counter:
            assert meter.billed_seconds(c) * 1000 >= meter.billable_ms(c)
    return meter, debits


@settings(max_examples=400, deadline=None)
@given(call=calls(), tariff=tariffs(), trunk=st.sampled_from(list(TrunkKind)))
def test_billed_total_is_billable_rounded_up_and_debits_add_up(
    call: Call, tariff: Tariff, trunk: TrunkKind
) -> None:
    meter, debits = run(call, tariff, trunk)
    inc = tariff.increment_seconds
    for counter in Counter:
        billable = expected_billable_ms(call, tariff, trunk, counter)
        expected = -(-billable // (inc * 1000)) * inc
        assert meter.billable_ms(counter) == billable
        assert meter.billed_seconds(counter) == expected
        mine = [d for _, d in debits if d.counter is counter]
        assert sum(d.seconds for d in mine) == expected
        assert [d.increment for d in mine] == list(range(1, len(mine) + 1))
        if not call.answered:
            assert expected == 0


@settings(max_examples=300, deadline=None)
@given(call=calls())
def test_customer_trunk_never_charges_agent_time(call: Call) -> None:
    """Stretching every agent segment of a customer-trunk call changes no bill."""
    stretched: list[tuple[str, int]] = []
    shift = 0
    in_agent = False
    for method, at in call.events:
        if in_agent:
            shift += 600_000  # ten more minutes with the agent
        stretched.append((method, at + shift))
        in_agent = method == "agent_started" or (in_agent and method == "tick")
    base, _ = run(call, Tariff(), TrunkKind.CUSTOMER)
    longer, _ = run(Call(call.answered, stretched), Tariff(), TrunkKind.CUSTOMER)
    for counter in Counter:
        assert longer.billed_seconds(counter) == base.billed_seconds(counter)
    assert base.billed_seconds(Counter.TELEPHONY) == 0


@settings(max_examples=300, deadline=None)
@given(call=calls(), trunk=st.sampled_from(list(TrunkKind)))
def test_speech_is_not_charged_during_agent_segments(call: Call, trunk: TrunkKind) -> None:
    meter, _ = run(call, Tariff(), trunk)
    bot_ms = sum(e - s for kind, s, e in call.segments() if kind is Segment.BOT)
    expected = max(bot_ms, 1000) if call.answered else 0
    assert meter.billable_ms(Counter.SPEECH) == expected


@settings(max_examples=300, deadline=None)
@given(call=calls(), tariff=tariffs(), trunk=st.sampled_from(list(TrunkKind)), data=st.data())
def test_out_of_order_events_are_rejected(
    call: Call, tariff: Tariff, trunk: TrunkKind, data: st.DataObject
) -> None:
    """An event earlier than the last one is refused, whatever it is, and changes nothing."""
    cut = data.draw(st.integers(1, len(call.events)))
    meter, _ = run(Call(call.answered, call.events[:cut]), tariff, trunk)
    last = call.events[cut - 1][1]
    if last == 0:
        return
    before = ({c: meter.billed_seconds(c) for c in Counter}, meter.state, meter.segments())
    method = data.draw(
        st.sampled_from(["answered", "agent_started", "agent_ended", "hangup", "tick"])
    )
    earlier = data.draw(st.integers(0, last - 1))
    with pytest.raises(MeterError):
        getattr(meter, method)(earlier / 1000)
    assert ({c: meter.billed_seconds(c) for c in Counter}, meter.state, meter.segments()) == before


@settings(max_examples=300, deadline=None)
@given(call=calls(), tariff=tariffs(), trunk=st.sampled_from(list(TrunkKind)), data=st.data())
def test_next_due_at_is_exactly_when_the_next_debit_falls_due(
    call: Call, tariff: Tariff, trunk: TrunkKind, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(1, len(call.events) - 1)) if len(call.events) > 1 else 1
    prefix = [e for e in call.events[:cut] if e[0] != "hangup"]
    meter, _ = run(Call(call.answered, prefix), tariff, trunk)
    due = meter.next_due_at()
    if due is None:
        assert meter.tick(((prefix[-1][1] if prefix else 0) + 10**7) / 1000) == []
        return
    due_ms = round(due * 1000)
    assert meter.tick((due_ms - 1) / 1000) == []
    assert meter.tick(due_ms / 1000) != []
