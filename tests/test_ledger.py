"""Minute ledger on real SQLite and real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy import Table, func, select

from billing.errors import BillingError, DuplicateAccount, IdempotencyConflict, UnknownAccount
from billing.ledger import ENTRY, PACKAGE, BalanceSignal, Ledger, SignalKind
from billing.meter import CallMeter
from billing.period import Period
from billing.storage import Database
from billing.tariff import Counter, Tariff, TrunkKind

T = Counter.TELEPHONY
S = Counter.SPEECH


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    async with Database(db_url) as database:
        yield Ledger(database, Tariff())


async def assert_consistent(ledger: Ledger, account: str) -> None:
    for line in await ledger.audit(account):
        assert line.consistent, line


async def row_count(ledger: Ledger, table: Table) -> int:
    return await ledger.database.run(
        lambda conn: int(conn.execute(select(func.count()).select_from(table)).scalar_one()),
        write=False,
    )


async def test_accounts_start_at_zero_and_names_are_unique(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    assert await ledger.balances("acme") == {T: 0, S: 0}
    with pytest.raises(DuplicateAccount, match="account 'acme' already exists"):
        await ledger.create_account("acme")
    with pytest.raises(BillingError, match="invalid account name"):
        await ledger.create_account("a/b")
    with pytest.raises(UnknownAccount, match="unknown account 'nope'"):
        await ledger.balances("nope")
    assert [a.name for a in await ledger.list_accounts()] == ["acme"]


async def test_packages_accumulate_on_a_positive_balance(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    await ledger.buy_package("acme", T, 10)
    result = await ledger.buy_package("acme", T, 5)
    assert result.balance_seconds == 900
    assert result.signal is None  # it was already positive
    assert await ledger.balances("acme") == {T: 900, S: 0}
    assert await row_count(ledger, PACKAGE) == 2
    await assert_consistent(ledger, "acme")


async def test_debits_may_go_negative_and_a_package_pays_off_the_debt_first(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    await ledger.buy_package("acme", S, 1)
    for n in range(1, 7):  # six increments of 15 s = 90 s against 60 s bought
        await ledger.debit("acme", S, 15, call_id="c1", increment=n)
    assert await ledger.balances("acme") == {T: 0, S: -30}
    result = await ledger.buy_package("acme", S, 1)
    assert result.balance_seconds == 30  # 60 s bought, 30 s of it paid the debt
    await assert_consistent(ledger, "acme")


async def test_every_entry_replayed_is_a_no_op(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    first_package = await ledger.buy_package("acme", T, 2, reference="invoice-1")
    requests = [
        {"counter": c, "call_id": f"call-{i}", "increment": n, "contact": f"+1415555010{i}"}
        for i in range(3)
        for c in Counter
        for n in (1, 2)
    ]
    originals = [
        await ledger.debit("acme", r.pop("counter"), 15, campaign="spring", **r)  # type: ignore[arg-type]
        for r in [dict(r) for r in requests]
    ]
    balances = await ledger.balances("acme")
    entries = await row_count(ledger, ENTRY)

    replay = await ledger.buy_package("acme", T, 2, reference="invoice-1")
    assert replay.replayed and replay.entry_id == first_package.entry_id
    for request, original in zip(requests, originals, strict=True):
        args = dict(request)
        again = await ledger.debit("acme", args.pop("counter"), 15, campaign="spring", **args)  # type: ignore[arg-type]
        assert again.replayed and again.entry_id == original.entry_id
        assert again.seconds == -15
        # a replay re-sends "exhausted" while the counter is still not positive
        assert (again.signal is not None) == (original.counter is S)
    assert await ledger.balances("acme") == balances == {T: 120 - 90, S: -90}
    assert await row_count(ledger, ENTRY) == entries
    assert await row_count(ledger, PACKAGE) == 1
    await assert_consistent(ledger, "acme")


async def test_a_replayed_key_with_other_content_is_refused(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    await ledger.create_account("other")
    await ledger.debit("acme", S, 15, call_id="c1", increment=1)
    with pytest.raises(IdempotencyConflict, match="different seconds"):
        await ledger.debit("acme", S, 30, call_id="c1", increment=1)
    with pytest.raises(IdempotencyConflict, match=r"exists for another account$"):
        await ledger.debit("other", S, 15, call_id="c1", increment=1)
    assert await ledger.balances("acme") == {T: 0, S: -15}
    assert await ledger.balances("other") == {T: 0, S: 0}


async def test_top_up_references_are_each_accounts_own(ledger: Ledger) -> None:
    """Another account's reference neither blocks a purchase nor reveals anything of it;
    a reference reused by the same account for another purchase is refused in its
    own terms (no internal id)."""
    for name in ("filler", "acme", "other"):  # ids 1, 2, 3: distinct from the counts
        await ledger.create_account(name)
    acme = await ledger.buy_package("acme", T, 2, reference="pay-1")
    other = await ledger.buy_package("other", S, 5, reference="pay-1")
    assert not other.replayed and other.seconds == 300
    assert await ledger.balances("other") == {T: 0, S: 300}
    # each account's replay finds its own purchase
    assert (await ledger.buy_package("acme", T, 2, reference="pay-1")).entry_id == acme.entry_id
    assert (await ledger.buy_package("other", S, 5, reference="pay-1")).entry_id == other.entry_id
    with pytest.raises(IdempotencyConflict) as refused:
        await ledger.buy_package("acme", T, 3, reference="pay-1")
    message = str(refused.value)
    assert message == (
        "reference 'pay-1' was already used by account 'acme' for another purchase"
        " (a different counter or number of minutes)"
    )
    assert await ledger.balances("acme") == {T: 120, S: 0}
    await assert_consistent(ledger, "acme")
    await assert_consistent(ledger, "other")


@pytest.mark.parametrize("minutes", [0, -5, "1.5", "abc", "", True, 10_000_001], ids=repr)
async def test_bad_packages_write_nothing(ledger: Ledger, minutes: object) -> None:
    await ledger.create_account("acme")
    with pytest.raises(BillingError, match="minutes must be"):
        await ledger.buy_package("acme", T, minutes)  # type: ignore[arg-type]
    with pytest.raises(UnknownAccount):
        await ledger.buy_package("ghost", T, 5)
    assert await row_count(ledger, ENTRY) == 0
    assert await row_count(ledger, PACKAGE) == 0


async def test_bad_debits_write_nothing(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    for kwargs in ({"seconds": 0}, {"seconds": -15}, {"increment": 0}, {"call_id": ""}):
        args = {"seconds": 15, "call_id": "c", "increment": 1} | kwargs
        seconds = args.pop("seconds")
        with pytest.raises(BillingError):
            await ledger.debit("acme", S, seconds, **args)  # type: ignore[arg-type]
    assert await row_count(ledger, ENTRY) == 0


async def test_exhausted_and_restored_signals(ledger: Ledger) -> None:
    seen: list[BalanceSignal] = []

    async def listen(signal: BalanceSignal) -> None:
        seen.append(signal)

    ledger.subscribe(listen)
    await ledger.create_account("acme")
    first = await ledger.buy_package("acme", S, 1)
    assert first.signal == BalanceSignal(SignalKind.RESTORED, "acme", S, 60)
    seen.clear()
    results = [await ledger.debit("acme", S, 15, call_id="c", increment=n) for n in (1, 2, 3)]
    assert [r.signal for r in results] == [None, None, None]
    at_zero = await ledger.debit("acme", S, 15, call_id="c", increment=4)
    below = await ledger.debit("acme", S, 15, call_id="c", increment=5)
    assert at_zero.signal == BalanceSignal(SignalKind.EXHAUSTED, "acme", S, 0)
    assert below.signal == BalanceSignal(SignalKind.EXHAUSTED, "acme", S, -15)
    replay = await ledger.debit("acme", S, 15, call_id="c", increment=5)
    assert replay.replayed and replay.signal == below.signal  # re-sent: still exhausted
    still_owing = await ledger.buy_package("acme", T, 1)
    assert still_owing.signal is not None and still_owing.signal.counter is T
    topup = await ledger.buy_package("acme", S, 1)
    assert topup.signal == BalanceSignal(SignalKind.RESTORED, "acme", S, 45)
    assert [s.kind for s in seen] == [
        SignalKind.EXHAUSTED,
        SignalKind.EXHAUSTED,
        SignalKind.EXHAUSTED,  # the replay
        SignalKind.RESTORED,
        SignalKind.RESTORED,
    ]


async def test_balance_gate_checks_only_the_counters_the_trunk_charges(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    decision = await ledger.may_dial("acme", TrunkKind.PLATFORM)
    assert not decision.allowed and decision.blocking == (T, S)
    await ledger.buy_package("acme", S, 1)
    assert (await ledger.may_dial("acme", TrunkKind.CUSTOMER)).allowed
    decision = await ledger.may_dial("acme", TrunkKind.PLATFORM)
    assert not decision.allowed and decision.blocking == (T,)
    assert "telephony balance is 0 s" in decision.reason()
    await ledger.buy_package("acme", T, 1)
    assert (await ledger.may_dial("acme", TrunkKind.PLATFORM)).allowed
    for n in range(1, 5):
        await ledger.debit("acme", S, 15, call_id="c", increment=n)
    assert not (await ledger.may_dial("acme", TrunkKind.CUSTOMER)).allowed  # exactly 0


async def bill_call(
    ledger: Ledger,
    call_id: str,
    trunk: TrunkKind,
    events: list[tuple[str, datetime]],
    campaign: str | None,
    contact: str,
) -> None:
    """Meter a call from wall-clock events and debit each increment at its own time."""
    meter = CallMeter(ledger.tariff, trunk)
    start = events[0][1]
    for method, at in events:
        for debit in getattr(meter, method)((at - start).total_seconds()):
            await ledger.debit(
                "acme",
                debit.counter,
                debit.seconds,
                call_id=call_id,
                increment=debit.increment,
                campaign=campaign,
                contact=contact,
                at=at,
            )


async def test_usage_per_period_and_per_campaign_across_a_month_boundary(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    await ledger.buy_package("acme", T, 100)
    await ledger.buy_package("acme", S, 100)
    d = datetime
    # Spans midnight of Oct 31 -> Nov 1 (UTC): 40 s, increments at answer, +15.001 s, +30.001 s
    await bill_call(
        ledger,
        "c1",
        TrunkKind.PLATFORM,
        [
            ("answered", d(2026, 10, 31, 23, 59, 40)),
            ("tick", d(2026, 10, 31, 23, 59, 56)),
            ("hangup", d(2026, 11, 1, 0, 0, 20)),
        ],
        "spring",
        "+14155550101",
    )
    await bill_call(
        ledger,
        "c2",
        TrunkKind.CUSTOMER,
        [
            ("answered", d(2026, 11, 3, 10, 0, 0)),
            ("agent_started", d(2026, 11, 3, 10, 0, 5)),
            ("agent_ended", d(2026, 11, 3, 10, 5, 0)),
            ("hangup", d(2026, 11, 3, 10, 5, 12)),
        ],
        "summer",
        "+14155550102",
    )
    await bill_call(
        ledger,
        "c3",
        TrunkKind.PLATFORM,
        [("answered", d(2026, 11, 4, 9, 0, 0)), ("hangup", d(2026, 11, 4, 9, 0, 5))],
        "summer",
        "+14155550102",
    )  # same contact again: still one unique contact
    await bill_call(
        ledger,
        "c4",
        TrunkKind.PLATFORM,
        [("answered", d(2026, 11, 5, 9, 0, 0)), ("hangup", d(2026, 11, 5, 9, 0, 1))],
        None,
        "+14155550103",
    )  # not from a campaign

    october = await ledger.usage("acme", Period(2026, 10))
    assert october.billed_seconds == {T: 30, S: 30}
    assert october.unique_contacts == 1
    assert [(c.campaign, c.billed_seconds) for c in october.campaigns] == [
        ("spring", {T: 30, S: 30})
    ]

    november = await ledger.usage("acme", Period(2026, 11))
    assert november.billed_seconds == {T: 15 + 15 + 15, S: 15 + 30 + 15 + 15}
    assert november.unique_contacts == 3
    assert {c.campaign: (c.unique_contacts, c.billed_seconds) for c in november.campaigns} == {
        "spring": (1, {T: 15, S: 15}),
        "summer": (1, {T: 15, S: 45}),
    }

    summer = await ledger.usage("acme", Period(2026, 11), campaign="summer")
    assert summer.billed_seconds == {T: 15, S: 45}
    assert summer.unique_contacts == 1
    assert [c.campaign for c in summer.campaigns] == ["summer"]

    empty = await ledger.usage("acme", Period(2026, 12))
    assert empty.billed_seconds == {T: 0, S: 0} and empty.campaigns == []
    await assert_consistent(ledger, "acme")


def test_period_parsing() -> None:
    assert Period.parse("2026-02") == Period(2026, 2)
    assert Period(2026, 12).end == datetime(2027, 1, 1)
    for bad in ("2026-13", "2026-00", "26-01", "2026/01", "2026-1", "", "abcd-ef", "9999-12"):
        with pytest.raises(BillingError, match="malformed period"):
            Period.parse(bad)


async def test_replay_guards_campaign_and_contact_and_resignals_exhaustion(ledger: Ledger) -> None:
    await ledger.create_account("acme")
    first = await ledger.debit("acme", S, 15, call_id="c", increment=1, campaign="a", contact="+1")
    assert first.signal is not None and first.signal.kind is SignalKind.EXHAUSTED
    with pytest.raises(IdempotencyConflict, match="different campaign"):
        await ledger.debit("acme", S, 15, call_id="c", increment=1, campaign="b", contact="+1")
    with pytest.raises(IdempotencyConflict, match="different contact"):
        await ledger.debit("acme", S, 15, call_id="c", increment=1, campaign="a", contact="+2")
    # A replay after a crash between commit and signal sends the signal again.
    again = await ledger.debit("acme", S, 15, call_id="c", increment=1, campaign="a", contact="+1")
    assert again.replayed and again.signal == first.signal
    with pytest.raises(BillingError, match="call id must be 1-128 characters"):
        await ledger.debit("acme", S, 15, call_id="x" * 129, increment=1)
    assert await ledger.balances("acme") == {T: 0, S: -15}
