"""Billing periods: calendar months in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from billing.errors import BillingError

_PERIOD = re.compile(r"^([0-9]{4})-([0-9]{2})$")


@dataclass(frozen=True, order=True)
class Period:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.match(text.strip())
        if (
            not match
            or not 1 <= int(match.group(2)) <= 12
            or not 1970 <= int(match.group(1)) <= 9998
        ):
            raise BillingError(f"malformed period {text!r}: expected YYYY-MM, e.g. 2026-11")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, at: datetime) -> Period:
        at = to_naive_utc(at)
        return cls(at.year, at.month)

    @property
    def start(self) -> datetime:
        """First instant of the period, naive UTC (as stored)."""
        return datetime(self.year, self.month, 1)

    @property
    def end(self) -> datetime:
        """First instant after the period, naive UTC."""
        if self.month == 12:
            return datetime(self.year + 1, 1, 1)
        return datetime(self.year, self.month + 1, 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def to_naive_utc(at: datetime) -> datetime:
    """Stored times are naive UTC; aware times are converted, naive ones taken as UTC."""
    if at.tzinfo is not None:
        return at.astimezone(UTC).replace(tzinfo=None)
    return at


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
