"""Writes that must land: retried while the database is unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from billing.storage import DatabaseUnavailable
from dialer.metrics import WorkerMetrics

log = structlog.get_logger("dialer.worker")
T = TypeVar("T")

FIRST_RETRY = 0.25  # s; doubled up to MAX_RETRY
MAX_RETRY = 5.0


class DurableWrites:
    """An idempotent write (debits carry their idempotency key, CDRs are upserts,
    releases set values) retried until the database takes it: during an outage the calls
    up go on and their writes wait here with their own timestamps, so nothing is dropped
    or charged twice. ``abandon()`` (a worker stopping for good) makes waiting writes give
    up: the next start under the same id settles their calls from the ledger."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True

    async def write(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        delay = FIRST_RETRY
        while True:
            try:
                return await attempt()
            except DatabaseUnavailable as exc:
                if self.abandoned:
                    raise
                if delay == FIRST_RETRY:
                    log.error("database unavailable: write kept, retrying", what=what,
                              error=str(exc))  # fmt: skip
                self.metrics.db_retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
