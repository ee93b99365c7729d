"""The worker's event stream: schema-versioned JSON documents on per-account topics.

Topics (prefix ``dialer/v1``; INTERFACE.md "MQTT"):

    {account}/campaigns/{campaign}/events   campaign.state
    {account}/calls/{call_id}/events        call.dialing, call.ringing, call.answered,
                                            call.transfer, call.answering_machine,
                                            call.ended
    {account}/billing/events                billing.debit, billing.exhausted,
                                            billing.topped_up
    {account}/campaigns/{campaign}/status   retained: the campaign's status document
    workers/{worker_id}/status              retained: online / offline (the last will)

Every event is ``{"v": 1, "type": "...", "at": "2026-11-27T10:00:00.123Z", ...}``; the
fields per type are in EVENT_FIELDS. Emitting never waits: events go into a bounded
buffer that the MQTT adapter drains in order; when it is full the oldest are dropped
and counted (billing and dialing never wait on the broker).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PREFIX = "dialer/v1"
SCHEMA_VERSION = 1
DEFAULT_BUFFER = 10_000

#: type -> the fields it carries beyond v, type, at (documentation and tests)
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "campaign.state": ("account", "campaign", "state", "pause_reason", "previous"),
    "call.dialing": ("account", "campaign", "call_id", "phone", "attempt"),
    "call.ringing": ("account", "campaign", "call_id", "status"),
    "call.answered": ("account", "campaign", "call_id"),
    "call.transfer": ("account", "campaign", "call_id", "segment", "mode"),
    "call.answering_machine": (
        "account",
        "campaign",
        "call_id",
        "signal",
        "reason",
        "score",
        "after_answer_seconds",
    ),
    "call.ended": (
        "account",
        "campaign",
        "call_id",
        "disposition",
        "sip_status",
        "hangup_by",
        "billed_seconds",
    ),
    "billing.debit": (
        "account",
        "counter",
        "seconds",
        "balance_seconds",
        "call_id",
        "increment",
        "campaign",
    ),
    "billing.exhausted": ("account", "counter", "balance_seconds"),
    "billing.topped_up": ("account", "counter", "balance_seconds"),
}


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def topic_for(kind: str, fields: dict[str, Any]) -> str:
    account = fields["account"]
    if kind.startswith("campaign."):
        return f"{PREFIX}/{account}/campaigns/{fields['campaign']}/events"
    if kind.startswith("call."):
        return f"{PREFIX}/{account}/calls/{fields['call_id']}/events"
    return f"{PREFIX}/{account}/billing/events"


def status_topic(account: str, campaign: str) -> str:
    return f"{PREFIX}/{account}/campaigns/{campaign}/status"


def worker_topic(worker_id: str) -> str:
    return f"{PREFIX}/workers/{worker_id}/status"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    created: float = 0.0  # time.monotonic() when emitted (latency measurements)


class EventBuffer:
    """Bounded, ordered, never blocking. The oldest events go first when it is full."""

    def __init__(self, capacity: int = DEFAULT_BUFFER) -> None:
        self.capacity = capacity
        self._items: deque[Outgoing] = deque()
        self.dropped = 0
        self.emitted = 0
        self._waiters: list[Any] = []

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self.emitted += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def peek(self) -> Outgoing | None:
        return self._items[0] if self._items else None

    def first(self, n: int) -> list[Outgoing]:
        return [self._items[i] for i in range(min(n, len(self._items)))]

    def pop(self, item: Outgoing) -> None:
        """Remove ``item`` after it was delivered (unless it was dropped meanwhile: then
        it is no longer at the head, and nothing else is removed)."""
        if self._items and self._items[0] is item:
            self._items.popleft()

    def waiter(self) -> Any:
        import asyncio

        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(None)
        else:
            self._waiters.append(future)
        return future


class Events:
    """What the worker and the service layer call to say something happened."""

    def __init__(self, buffer: EventBuffer | None = None) -> None:
        self.buffer = buffer if buffer is not None else EventBuffer()  # (an empty one is falsy)

    def emit(self, kind: str, **fields: Any) -> None:
        assert kind in EVENT_FIELDS, kind
        import time

        document = {"v": SCHEMA_VERSION, "type": kind, "at": iso_now(), **fields}
        self.buffer.put(
            Outgoing(topic_for(kind, fields), _json(document), created=time.monotonic())
        )

    def status(self, account: str, campaign: str, document: dict[str, Any]) -> None:
        import time

        payload = {"v": SCHEMA_VERSION, "type": "campaign.status", "at": iso_now(), **document}
        self.buffer.put(
            Outgoing(status_topic(account, campaign), _json(payload), True, time.monotonic())
        )


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), default=str).encode()
