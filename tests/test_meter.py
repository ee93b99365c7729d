"""Call meter: the billing rules on worked examples."""

from __future__ import annotations

import pytest

from billing.errors import BillingError, MeterError
from billing.meter import CallMeter, Debit, MeterState, round_up
from billing.tariff import Counter, Segment, Tariff, TrunkKind

T = Counter.TELEPHONY
S = Counter.SPEECH


def billed(meter: CallMeter) -> dict[Counter, int]:
    return {c: meter.billed_seconds(c) for c in Counter}


@pytest.mark.parametrize(
    ("talk", "expected"),
    [(0.001, 15), (1, 15), (14.999, 15), (15, 15), (15.001, 30), (16, 30), (30, 30), (31, 45)],
)
def test_rounding_up_to_the_increment(talk: float, expected: int) -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    meter.answered(10.0)
    meter.hangup(10.0 + talk)
    assert billed(meter) == {T: expected, S: expected}


def test_zero_length_answered_call_bills_its_first_second() -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    assert meter.answered(5.0) == [Debit(T, 1, 15), Debit(S, 1, 15)]
    assert meter.hangup(5.0) == []
    assert billed(meter) == {T: 15, S: 15}
    assert meter.billable_ms(T) == 1000


def test_unanswered_call_costs_nothing() -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    assert meter.tick(3.0) == []
    assert meter.hangup(30.0) == []
    assert billed(meter) == {T: 0, S: 0}
    assert meter.state is MeterState.ENDED


def test_debits_are_taken_in_advance_at_each_boundary() -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    assert meter.answered(0) == [Debit(T, 1, 15), Debit(S, 1, 15)]
    assert meter.tick(15.0) == []  # exactly 15 s is still covered by the first increment
    assert meter.next_due_at() == pytest.approx(15.001)
    assert meter.tick(15.001) == [Debit(T, 2, 15), Debit(S, 2, 15)]
    assert meter.tick(29.0) == []
    assert meter.hangup(31.0) == [Debit(T, 3, 15), Debit(S, 3, 15)]
    assert billed(meter) == {T: 45, S: 45}


def test_platform_trunk_agent_segment_charges_telephony_not_speech() -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    meter.answered(0)
    meter.agent_started(10)
    meter.agent_ended(100)  # 90 s with the agent
    meter.hangup(105)
    assert meter.billable_ms(T) == 105_000
    assert meter.billable_ms(S) == 15_000
    assert billed(meter) == {T: 105, S: 15}
    assert meter.agent_ms() == 90_000


def test_customer_trunk_suspends_billing_during_agent_segment() -> None:
    meter = CallMeter(Tariff(), TrunkKind.CUSTOMER)
    assert meter.answered(0) == [Debit(S, 1, 15)]
    meter.agent_started(10)
    assert meter.next_due_at() is None  # nothing runs while the agent talks
    assert meter.tick(500) == []
    meter.agent_ended(600)
    assert meter.next_due_at() == pytest.approx(605.001)  # 5 s of bot time left in increment 1
    assert meter.hangup(606) == [Debit(S, 2, 15)]
    assert billed(meter) == {T: 0, S: 30}


def test_configurable_increment_and_tariff() -> None:
    tariff = Tariff.from_table({"customer": {"telephony": ["bot", "agent"]}}, increment_seconds=6)
    meter = CallMeter(tariff, TrunkKind.CUSTOMER)
    meter.answered(0)
    meter.agent_started(4)
    meter.hangup(13)
    assert billed(meter) == {T: 18, S: 6}
    assert tariff.charged_counters(TrunkKind.CUSTOMER) == (T, S)
    assert Tariff().charged_counters(TrunkKind.CUSTOMER) == (S,)
    assert Tariff().charges_during(TrunkKind.PLATFORM, S, Segment.AGENT) is False


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([("agent_started", 1)], "agent_started is not allowed while dialing"),
        ([("answered", 1), ("answered", 2)], "answered is not allowed while bot"),
        ([("answered", 1), ("agent_ended", 2)], "agent_ended is not allowed while bot"),
        (
            [("answered", 1), ("agent_started", 2), ("agent_started", 3)],
            "agent_started is not allowed while agent",
        ),
        ([("answered", 1), ("hangup", 2), ("tick", 3)], "tick is not allowed while ended"),
        ([("answered", 1), ("hangup", 2), ("hangup", 3)], "hangup is not allowed while ended"),
        ([("answered", 5), ("hangup", 4)], "earlier than the previous event"),
        ([("answered", 5), ("tick", 9), ("agent_started", 8)], "earlier than the previous event"),
    ],
)
def test_illegal_events_are_rejected_and_change_nothing(
    steps: list[tuple[str, float]], message: str
) -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    *legal, (method, at) = steps
    for name, when in legal:
        getattr(meter, name)(when)
    before = (meter.state, billed(meter), meter.segments())
    with pytest.raises(MeterError, match=message):
        getattr(meter, method)(at)
    assert (meter.state, billed(meter), meter.segments()) == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "12", None])
def test_event_time_must_be_a_finite_number(bad: object) -> None:
    meter = CallMeter(Tariff(), TrunkKind.PLATFORM)
    with pytest.raises(MeterError, match="finite number"):
        meter.answered(bad)  # type: ignore[arg-type]


def test_tariff_rejects_bad_configuration() -> None:
    with pytest.raises(BillingError, match="unknown segment 'lunch'"):
        Tariff.from_table({"platform": {"speech": ["lunch"]}})
    with pytest.raises(BillingError, match="unknown trunk kind 'carrier'"):
        Tariff.from_table({"carrier": {}})
    with pytest.raises(BillingError, match="unknown counter 'sms'"):
        Tariff.from_table({"platform": {"sms": []}})
    with pytest.raises(BillingError, match="increment_seconds"):
        Tariff(increment_seconds=0)


def test_round_up() -> None:
    assert [round_up(ms, 15) for ms in (0, 1, 15_000, 15_001, 16_000)] == [0, 15, 15, 30, 30]
