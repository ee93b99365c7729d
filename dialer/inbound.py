"""Inbound calls the lines refused: what is recorded of them, and how many.

Campaign bots take no calls; a refused INVITE is still worth a CDR (a callee calling
back, a carrier probing), but a flood of them must not become a flood of rows. A token
bucket keeps the record rate bounded; what it drops is counted and summarised in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dialer.retry import Disposition
from dialer.text import strip_controls
from sip.events import InboundRejected

RECORDS_PER_SECOND = 1.0
BURST = 20
CALLER_MAX = 64


def caller_of(raw: object) -> str:
    """The caller as we store and log it: no control characters (a From display name with
    ESC would reach an operator's terminal), at most CALLER_MAX characters."""
    return strip_controls(str(raw or ""))[:CALLER_MAX]


@dataclass
class InboundRecords:
    """Decides which refused inbound calls get a CDR (pure: the caller gives the time)."""

    rate: float = RECORDS_PER_SECOND
    burst: int = BURST
    tokens: float = BURST
    at: float | None = None
    dropped: int = 0  # refused calls not recorded since the last summary

    def admit(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


def inbound_cdr(call_id: str, at: datetime, event: InboundRejected) -> dict[str, Any]:
    """The record of an INVITE a line refused: never billed, no campaign."""
    return {
        "call_id": call_id, "account": "", "phone": caller_of(event.from_),
        "direction": "inbound", "trunk_kind": "", "invite_at": at, "ended_at": at,
        "sip_status": event.status, "disposition": Disposition.INBOUND_REJECTED.value,
        "hangup_by": "local", "line": event.line,
    }  # fmt: skip
