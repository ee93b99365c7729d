"""Pure rules of the dialer: campaign states, pacing, calling windows, retries."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialer.campaign_state import (
    Action,
    CampaignState,
    CampaignStateError,
    PauseReason,
    Status,
    transition,
)
from dialer.contacts import ParsedFile, parse_contacts, transfer_after
from dialer.errors import DialerError
from dialer.pacing import TokenBucket, burst_of, shared_tokens
from dialer.retry import Disposition, RetryPolicy, Rule
from dialer.windows import CallingWindow, parse_days, parse_zone

S = CampaignState
RUNNING = Status(S.RUNNING)
DRAFT = Status(S.DRAFT)
USER_PAUSE = Status(S.PAUSED, PauseReason.USER)
BALANCE_PAUSE = Status(S.PAUSED, PauseReason.BALANCE)


def test_campaign_lifecycle() -> None:
    assert transition(DRAFT, Action.START) == RUNNING
    assert transition(RUNNING, Action.PAUSE) == USER_PAUSE
    assert transition(USER_PAUSE, Action.RESUME) == RUNNING
    assert transition(RUNNING, Action.PAUSE_BALANCE) == BALANCE_PAUSE
    assert transition(USER_PAUSE, Action.PAUSE_BALANCE) == BALANCE_PAUSE
    assert transition(BALANCE_PAUSE, Action.PAUSE) == BALANCE_PAUSE  # stays a balance pause
    assert transition(BALANCE_PAUSE, Action.RESUME) == RUNNING
    assert transition(RUNNING, Action.COMPLETE) == Status(S.COMPLETED)
    assert transition(USER_PAUSE, Action.STOP) == Status(S.STOPPED)


def test_start_and_resume_need_a_positive_balance() -> None:
    with pytest.raises(CampaignStateError, match="cannot start: speech balance is -15 s"):
        transition(DRAFT, Action.START, balance_ok=False, balance_reason="speech balance is -15 s")
    with pytest.raises(CampaignStateError, match="cannot resume"):
        transition(BALANCE_PAUSE, Action.RESUME, balance_ok=False)
    # pausing and stopping never need money
    assert transition(RUNNING, Action.PAUSE, balance_ok=False) == USER_PAUSE


@pytest.mark.parametrize(
    ("status", "action", "message"),
    [
        (Status(S.COMPLETED), Action.RESUME, "cannot resume a campaign that is completed"),
        (Status(S.STOPPED), Action.START, "cannot start a campaign that is stopped"),
        (RUNNING, Action.START, "cannot start a campaign that is running"),
        (RUNNING, Action.RESUME, "cannot resume a campaign that is running"),
        (DRAFT, Action.PAUSE, "cannot pause a campaign that is draft"),
        (DRAFT, Action.PAUSE_BALANCE, "cannot pause balance a campaign that is draft"),
        (BALANCE_PAUSE, Action.COMPLETE, "cannot complete a campaign that is paused (balance)"),
    ],
)
def test_illegal_transitions_name_the_state(status: Status, action: Action, message: str) -> None:
    with pytest.raises(CampaignStateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        transition(status, action)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0)
    assert bucket.take(0.0) and bucket.take(0.0)  # starts full: one second's worth
    assert not bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.6)
    slow = TokenBucket(rate=0.5)
    assert slow.take(10.0) and not slow.take(11.0) and slow.take(12.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


@given(rate=st.floats(0.1, 50), times=st.lists(st.floats(0, 100), min_size=1, max_size=200))
def test_token_bucket_never_exceeds_its_rate(rate: float, times: list[float]) -> None:
    bucket = TokenBucket(rate=rate)
    times.sort()
    taken = sum(bucket.take(t) for t in times)
    assert taken <= bucket.burst + rate * (times[-1] - times[0]) + 1e-9


NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


def test_window_in_the_contacts_local_time() -> None:
    window = CallingWindow.parse("09:00-20:00", "mon-fri")
    # Wednesday 2026-11-25 13:59 UTC = 08:59 in New York: closed; 14:00 UTC: open
    assert not window.is_open(utc(2026, 11, 25, 13, 59), NY)
    assert window.is_open(utc(2026, 11, 25, 14, 0), NY)
    assert window.is_open(utc(2026, 11, 25, 14, 0), ZoneInfo("Europe/Berlin"))  # 15:00
    assert not window.is_open(utc(2026, 11, 25, 19, 0), ZoneInfo("Europe/Berlin"))  # 20:00
    # Saturday: closed all day; the next opening is Monday 09:00 local
    assert window.next_open(utc(2026, 11, 28, 15, 0), NY) == utc(2026, 11, 30, 14, 0)


def test_window_on_dst_change_days() -> None:
    window = CallingWindow.parse("09:00-20:00", "all")
    # 2026-03-08: New York springs forward; 09:00 EDT = 13:00 UTC (the day before: 14:00)
    assert window.next_open(utc(2026, 3, 8, 5, 0), NY) == utc(2026, 3, 8, 13, 0)
    assert window.next_open(utc(2026, 3, 7, 5, 0), NY) == utc(2026, 3, 7, 14, 0)
    # 2026-11-01: falls back; 09:00 EST = 14:00 UTC
    assert window.next_open(utc(2026, 11, 1, 5, 0), NY) == utc(2026, 11, 1, 14, 0)
    # a window opening inside the spring-forward gap opens when the gap ends (03:00 EDT)
    early = CallingWindow.parse("02:30-05:00", "all")
    assert early.next_open(utc(2026, 3, 8, 5, 0), NY) == utc(2026, 3, 8, 7, 0)
    assert early.is_open(utc(2026, 3, 8, 7, 0), NY)


def test_window_across_midnight() -> None:
    night = CallingWindow.parse("22:00-02:00", "fri")
    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in November
    assert night.is_open(utc(2026, 11, 27, 21, 30), berlin)  # Friday 22:30
    assert night.is_open(utc(2026, 11, 28, 0, 30), berlin)  # Saturday 01:30, opened Friday
    assert not night.is_open(utc(2026, 11, 28, 1, 30), berlin)  # Saturday 02:30
    assert not night.is_open(utc(2026, 11, 28, 21, 30), berlin)  # Saturday 22:30
    assert night.next_open(utc(2026, 11, 28, 12, 0), berlin) == utc(2026, 12, 4, 21, 0)
    always = CallingWindow.parse("00:00-24:00")
    assert always.is_open(utc(2026, 11, 28, 23, 59), berlin)
    assert str(always) == "00:00-24:00" and CallingWindow.parse(str(always)) == always
    assert str(night) == "22:00-02:00" and CallingWindow.parse(str(night), "fri") == night


@pytest.mark.parametrize(
    ("window", "days", "message"),
    [
        ("25:00-26:00", "all", "bad window"),
        ("9-17", "all", "bad window"),
        ("09:00-09:00", "all", "empty"),
        ("09:00-17:60", "all", "bad window"),
        ("09:00-17:00", "mon-xyz", "bad days"),
    ],
)
def test_bad_windows(window: str, days: str, message: str) -> None:
    with pytest.raises(DialerError, match=message):
        CallingWindow.parse(window, days)


def test_days_and_zones() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("sat,sun") == frozenset({5, 6})
    with pytest.raises(DialerError, match="unknown time zone 'Mars/Olympus'"):
        parse_zone("Mars/Olympus")


def test_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=3, delay_seconds=60,
                         per_disposition={Disposition.BUSY: Rule(5, 10)})  # fmt: skip
    now = utc(2026, 11, 27, 10, 0)
    assert policy.next_attempt(Disposition.ANSWERED, 1, now) is None
    assert policy.next_attempt(Disposition.REJECTED, 1, now) is None
    assert policy.next_attempt(Disposition.NO_ANSWER, 1, now) == now + timedelta(seconds=60)
    assert policy.next_attempt(Disposition.NO_ANSWER, 3, now) is None
    assert policy.next_attempt(Disposition.BUSY, 4, now) == now + timedelta(seconds=10)
    assert policy.next_attempt(Disposition.BUSY, 5, now) is None
    assert policy.next_attempt(Disposition.CANCELLED, 9, now) == now
    assert RetryPolicy.from_json(policy.to_json()) == policy
    with pytest.raises(DialerError):
        RetryPolicy(max_attempts=0)


@given(
    rate=st.floats(min_value=0.1, max_value=200),
    steps=st.lists(
        st.tuples(st.floats(min_value=-5, max_value=5), st.integers(min_value=0, max_value=50)),
        max_size=60,
    ),
)
def test_a_shared_bucket_never_grants_more_than_its_rate(
    rate: float, steps: list[tuple[float, int]]
) -> None:
    """Claims as the database runs them (tokens and the time of the last write, clocks of
    several hosts that may go backwards): calls granted <= burst + rate x time covered."""
    tokens: float | None = None
    last = 0.0
    granted = 0
    for dt, want in steps:
        now = last + dt
        available = shared_tokens(tokens, now - last, rate)
        take = min(want, int(available + 1e-9))
        granted += take
        if take:
            tokens, last = available - take, max(now, last)
    covered = last
    assert granted <= burst_of(rate) + rate * covered + 1e-6


# -- contact columns (dialer.contacts) ----------------------------------------------------


def _import(tmp_path: Path, text: str) -> ParsedFile:
    path = tmp_path / "contacts.csv"
    path.write_text(text)
    return parse_contacts(path, "UTC")


def test_every_contact_column_is_checked_at_import(tmp_path: Path) -> None:
    parsed = _import(
        tmp_path,
        "phone,transfer_after,name\n"
        "+14155550101,abc,Ann\n"
        "+14155550102,0,Bob\n"
        "+14155550103,nan,Cid\n"
        "+14155550104,86401,Dan\n"
        "+14155550105,12.5,Eve\n"
        "+14155550106,30,Fay\n"
        f"+14155550107,,{'x' * 501}\n"
        '+14155550108,,"bell\x07"\n'
        f"{'1' * 65},,long\n"
        "+14155550109,,\n",
    )
    assert parsed.problems == [
        "line 2: transfer_after must be seconds in (0, 86400], got 'abc'",
        "line 3: transfer_after must be seconds in (0, 86400], got '0'",
        "line 4: transfer_after must be seconds in (0, 86400], got 'nan'",
        "line 5: transfer_after must be seconds in (0, 86400], got '86401'",
        "line 8: column 'name': longer than 500 characters",
        "line 9: column 'name': control characters in 'bell\\x07'",
        f"line 10: bad phone number '{'1' * 40}... (65 characters)': too long",
    ]
    assert [(c.phone, c.attributes) for c in parsed.contacts] == [
        ("+14155550105", {"transfer_after": 12.5, "name": "Eve"}),
        ("+14155550106", {"transfer_after": 30, "name": "Fay"}),
        ("+14155550109", {}),
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("phone," + ",".join(f"c{n}" for n in range(50)), "51 columns, at most 50"),
        ("phone,na\x1bme", "bad column name 'na\\x1bme'"),
        ("phone," + "n" * 65, "bad column name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn..."),
        ("phone,name,Name", "column 'name' appears twice"),
    ],
)
def test_bad_header_rows_import_nothing(tmp_path: Path, header: str, message: str) -> None:
    with pytest.raises(DialerError, match=re.escape(message)) as refused:
        _import(tmp_path, header + "\n+14155550101\n")
    assert str(refused.value).endswith("; nothing imported")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("15", 15.0), (15, 15.0), (0.5, 0.5), ("abc", "refused"),
     ("-1", "refused"), ("inf", "refused"), (True, "refused"), ([1], "refused")],
)  # fmt: skip
def test_transfer_after_read_back_from_the_database(value: object, expected: object) -> None:
    """The worker's reading of the column: whatever got into the database."""
    try:
        seconds: object = transfer_after({"transfer_after": value})
    except DialerError:
        seconds = "refused"
    assert seconds == expected
