"""Calling windows in the callee's local time, pure (times are passed in).

A window is a local time range on chosen weekdays, e.g. 09:00-20:00 mon-fri. A range
whose end is not after its start runs across midnight (22:00-02:00): it opens on a
chosen day and closes the next morning. Local times come from zoneinfo, so DST days are
right: on a spring-forward day 02:30 does not exist, on a fall-back day 01:30 happens
twice; both are handled by converting every candidate instant, not by adding hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dialer.errors import DialerError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])$")


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DialerError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)"
        ) from None


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri', 'sat,sun', 'mon-wed,fri', 'all' -> weekday numbers (Monday = 0)."""
    text = text.strip().lower()
    if text in ("all", "*", "mon-sun"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise DialerError(f"bad days {text!r}: use mon..sun, ranges like mon-fri, commas")
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def format_days(days: frozenset[int]) -> str:
    return ",".join(DAYS[d] for d in sorted(days))


@dataclass(frozen=True)
class CallingWindow:
    start: time
    end: time
    days: frozenset[int]
    to_midnight: bool = False  # the end is 24:00

    @classmethod
    def parse(cls, window: str, days: str = "all") -> CallingWindow:
        match = _RANGE.match(window.strip())
        if not match:
            raise DialerError(f"bad window {window!r}: use HH:MM-HH:MM, e.g. 09:00-20:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise DialerError(f"bad window {window!r}: hours run 00-23 (24:00 as an end)")
        end = time(0, 0) if h2 == 24 else time(h2, m2)
        start = time(h1, m1)
        if start == end and h2 != 24:
            raise DialerError(f"bad window {window!r}: it is empty")
        return cls(start, end, parse_days(days), to_midnight=h2 == 24)

    @property
    def crosses_midnight(self) -> bool:
        return not self.to_midnight and self.end <= self.start

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{'24:00' if self.to_midnight else f'{self.end:%H:%M}'}"

    def is_open(self, at: datetime, zone: ZoneInfo) -> bool:
        """Is ``at`` (aware, any zone) inside the window in ``zone``'s local time?"""
        local = at.astimezone(zone)
        now = local.time().replace(tzinfo=None)
        today, yesterday = local.weekday(), (local.weekday() - 1) % 7
        if self.to_midnight:
            return today in self.days and self.start <= now
        if not self.crosses_midnight:
            return today in self.days and self.start <= now < self.end
        # opened today in the evening, or yesterday evening and not closed yet
        return (today in self.days and now >= self.start) or (
            yesterday in self.days and now < self.end
        )

    def next_open(self, at: datetime, zone: ZoneInfo) -> datetime:
        """The first instant >= ``at`` when the window is open (UTC)."""
        at = at.astimezone(UTC)
        if self.is_open(at, zone):
            return at
        local_day = at.astimezone(zone).date()
        for offset in range(0, 9):
            day = local_day + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opening = _local_instant(day, self.start, zone)
            if opening >= at:
                return opening
        raise DialerError("the calling window never opens (no days chosen)")


def _local_instant(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The UTC instant a local wall time first occurs. A repeated time (fall back) takes
    its first occurrence; a time skipped by spring-forward moves to the end of the gap."""
    candidate = datetime.combine(day, clock).replace(tzinfo=zone, fold=0).astimezone(UTC)
    back = candidate - timedelta(minutes=1)
    # in a gap, fold=0 lands past the gap by its length: walk back to where it opened
    for _ in range(180):
        local = back.astimezone(zone)
        if local.date() != day or local.time().replace(tzinfo=None) < clock:
            break
        candidate, back = back, back - timedelta(minutes=1)
    return candidate
