"""Operations endpoints of a running worker: Prometheus metrics and a health check.

    GET /metrics   Prometheus text format (prometheus_client): calls up by state, calls
                   placed and ended by disposition (rate() gives calls per second), free
                   line slots, lines up, billing lag, balance per account and counter,
                   MQTT events buffered and dropped
    GET /health    200 {"status": "ok", ...} or 503 {"status": "degraded", ...}: lines
                   up, the database answering, the MQTT broker connected (when configured)

A small asyncio HTTP server on the worker's loop: a scrape reads the worker's counters
and one balance query, never blocks dialing for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, text

from dialer.metrics import WorkerView

log = structlog.get_logger("dialer.ops")

MAX_REQUEST_BYTES = 8192


STALE_LOOP_SECONDS = 30.0  # no good dialling round for this long: degraded


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


class OpsServer:
    def __init__(self, worker: WorkerView, host: str = "127.0.0.1", port: int = 0) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> OpsServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("ops endpoints up", metrics=f"http://{self.host}:{self.port}/metrics")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method != "GET":
                status, body, kind = 405, b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = 200, await self.metrics(), "text/plain; version=0.0.4"
            elif path == "/health":
                healthy, document = await self.health()
                status, body, kind = (200 if healthy else 503), json.dumps(document).encode(), \
                    "application/json"  # fmt: skip
            else:
                status, body, kind = 404, b"not found: /metrics or /health\n", "text/plain"
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, body, kind = 400, b"bad request\n", "text/plain"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  503: "Service Unavailable"}[status]  # fmt: skip
        with contextlib.suppress(ConnectionError):
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    async def metrics(self) -> bytes:
        w = self.worker
        families: list[Metric] = []
        up = GaugeMetricFamily("dialer_calls_up", "Calls this worker has up, by state",
                               labels=["state"])  # fmt: skip
        for state, count in sorted(w.calls_by_state().items()):
            up.add_metric([state], count)
        families.append(up)
        placed = CounterMetricFamily("dialer_calls_placed", "INVITEs sent (rate() = calls/s)")
        placed.add_metric([], w.metrics.placed)
        families.append(placed)
        for name, doc, value in (
            ("dialer_line_deaths", "Line processes that died (restarted)", w.lines.line_deaths),
            ("dialer_calls_recovered", "Calls of dead workers settled", w.metrics.recovered),
            ("dialer_db_write_retries", "Writes retried while the database was away",
             w.metrics.db_retries),
            ("dialer_inbound_unrecorded", "Refused inbound calls over the CDR rate limit",
             w.metrics.inbound_unrecorded),
        ):  # fmt: skip
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            families.append(family)
        ended = CounterMetricFamily("dialer_calls_ended", "Calls ended, by disposition",
                                    labels=["disposition"])  # fmt: skip
        for disposition, count in sorted(w.metrics.dispositions.items()):
            ended.add_metric([disposition], count)
        families.append(ended)
        slots = GaugeMetricFamily("dialer_line_free_slots", "Free call slots on the lines")
        slots.add_metric([], w.lines.free_slots)
        families.append(slots)
        alive, _ = w.lines.lines_up
        lines = GaugeMetricFamily("dialer_lines_up", "Line processes alive")
        lines.add_metric([], alive)
        families.append(lines)
        lag = sorted(list(w.metrics.billing_lag)[-1000:])
        summary = GaugeMetricFamily("dialer_billing_lag_seconds",
                                    "Answer -> first debit committed, last 1,000 calls",
                                    labels=["quantile"])  # fmt: skip
        for q in (0.5, 0.99):
            if lag:
                summary.add_metric([str(q)], lag[min(len(lag) - 1, int(q * len(lag)))])
        families.append(summary)
        balance = GaugeMetricFamily("dialer_balance_seconds", "Balance per account and counter",
                                    labels=["account", "counter"])  # fmt: skip
        with contextlib.suppress(Exception):  # the database down: no balances this scrape
            for account, counter, seconds in await w.ledger.all_balances():
                balance.add_metric([account, counter.value], seconds)
        families.append(balance)
        if w.events is not None:
            buffered = GaugeMetricFamily("dialer_events_buffered", "Events waiting for MQTT")
            buffered.add_metric([], len(w.events.buffer))
            dropped = CounterMetricFamily("dialer_events_dropped", "Events dropped: buffer full")
            dropped.add_metric([], w.events.buffer.dropped)
            families += [buffered, dropped]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(families))
        return bytes(generate_latest(registry))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        w = self.worker
        alive, total = w.lines.lines_up
        try:
            await asyncio.wait_for(w.db.run(_ping, write=False), 5)
            database = "ok"
        except Exception as exc:  # any failure is the answer
            database = f"error: {type(exc).__name__}"
        mqtt = "off"
        connected = w.mqtt_connected()
        if connected is not None:
            mqtt = "connected" if connected else "disconnected"
        # the dialling loop completes a round every 50 ms when all is well
        since_round = time.monotonic() - w.metrics.last_round
        dialling = "ok" if since_round < STALE_LOOP_SECONDS else f"stalled {since_round:.0f} s"
        healthy = (alive == total and alive > 0 and database == "ok" and mqtt != "disconnected"
                   and dialling == "ok")  # fmt: skip
        return healthy, {
            "status": "ok" if healthy else "degraded", "worker": w.worker_id,
            "lines": {"up": alive, "total": total, "free_slots": w.lines.free_slots},
            "calls_up": w.calls_up(), "database": database, "mqtt": mqtt,
            "dialling": dialling,
        }  # fmt: skip
