"""Retry policy per disposition, pure: given how a call ended and how many attempts a
contact has had, when (if ever) is the next attempt?"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from dialer.errors import DialerError


class Disposition(StrEnum):
    ANSWERED = "answered"
    ANSWERING_MACHINE = "answering_machine"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    INBOUND_REJECTED = "inbound_rejected"
    CANCELLED = "cancelled"
    # contacts finished without a call
    DNC = "dnc"  # on the account's do-not-call list
    NUMBER_POLICY = "number_policy"  # refused by the account's or trunk's number policy


#: A human conversation or an explicit refusal is final; the rest may be tried again.
FINAL = frozenset({Disposition.ANSWERED, Disposition.REJECTED, Disposition.INBOUND_REJECTED})


@dataclass(frozen=True)
class Rule:
    max_attempts: int
    delay_seconds: int


@dataclass(frozen=True)
class RetryPolicy:
    """Default rule for every retryable disposition, overridable per disposition."""

    max_attempts: int = 3
    delay_seconds: int = 300
    per_disposition: dict[Disposition, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise DialerError(f"max attempts must be >= 1, got {self.max_attempts}")
        if self.delay_seconds < 0:
            raise DialerError(f"retry delay must be >= 0 seconds, got {self.delay_seconds}")

    def rule(self, disposition: Disposition) -> Rule:
        return self.per_disposition.get(disposition, Rule(self.max_attempts, self.delay_seconds))

    def next_attempt(
        self, disposition: Disposition, attempts: int, now: datetime
    ) -> datetime | None:
        """None: the contact is done. Cancelled calls (we hung up before an answer, e.g.
        a pause) do not count against the contact: they are retried at once."""
        if disposition is Disposition.CANCELLED:
            return now
        if disposition in FINAL:
            return None
        rule = self.rule(disposition)
        if attempts >= rule.max_attempts:
            return None
        return now + timedelta(seconds=rule.delay_seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "delay_seconds": self.delay_seconds,
            "per_disposition": {
                d.value: {"max_attempts": r.max_attempts, "delay_seconds": r.delay_seconds}
                for d, r in self.per_disposition.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryPolicy:
        rules = {
            Disposition(name): Rule(int(r["max_attempts"]), int(r["delay_seconds"]))
            for name, r in data.get("per_disposition", {}).items()
        }
        return cls(int(data["max_attempts"]), int(data["delay_seconds"]), rules)
