"""What a worker counts, and what the ops endpoints may read of it (dialer.ops)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from billing.ledger import Ledger
from billing.storage import Database
from dialer.events import Events


@dataclass
class WorkerMetrics:
    placed: int = 0  # INVITEs sent
    recovered: int = 0  # calls of dead workers settled
    db_retries: int = 0  # writes retried while the database was unavailable
    inbound_unrecorded: int = 0  # refused inbound calls left without a CDR (rate limit)
    dispositions: Tally[str] = field(default_factory=Tally)  # calls ended, by disposition
    # answered event -> first debit committed (s); bounded: a worker runs for months
    billing_lag: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    exhausted_with_calls_up: deque[int] = field(default_factory=lambda: deque(maxlen=1000))
    exhausted_at: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    last_round: float = field(default_factory=time.monotonic)  # the dialling loop's last


class LinesView(Protocol):
    @property
    def line_deaths(self) -> int: ...

    @property
    def free_slots(self) -> int: ...

    @property
    def lines_up(self) -> tuple[int, int]: ...


class WorkerView(Protocol):
    """A running worker as the ops endpoints see it."""

    worker_id: str
    metrics: WorkerMetrics
    db: Database
    ledger: Ledger
    events: Events | None

    @property
    def lines(self) -> LinesView: ...

    def calls_by_state(self) -> dict[str, int]: ...

    def calls_up(self) -> int: ...

    def mqtt_connected(self) -> bool | None:
        """None: no MQTT configured; else whether the bridge is connected now."""
        ...
