"""MQTT event stream: throughput and end-to-end latency (emitted -> received by a
subscriber), on the local Mosquitto, through the worker's own bridge (dialer.mqtt).

Paced: the event rate of a 150-concurrent-call campaign. A call of 60 s emits about 12
events (dialing, ringing, answered, a telephony and a speech debit at the answer and at
each of 3 increment boundaries, ended); 150 calls up means 2.5 calls start per second,
so ~30 events/s. Burst: as fast as the bridge publishes (QoS 1), to show the headroom.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from billing.ledger import Ledger
from billing.storage import Database
from dialer import db
from dialer.events import Events
from dialer.mqtt import MqttBridge, client_for

URL = "mqtt://127.0.0.1:1883"
CALLS_UP = 150
CALL_SECONDS = 60
EVENTS_PER_CALL = 12
PACED_RATE = CALLS_UP / CALL_SECONDS * EVENTS_PER_CALL  # events/s


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(name: str, events: Events, account: str, count: int, rate: float | None) -> Result:
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    done = asyncio.Event()
    async with client_for(URL) as sub:
        await sub.subscribe(f"dialer/v1/{account}/billing/events", qos=1)

        async def receive() -> None:
            async for message in sub.messages:
                body = json.loads(bytes(message.payload))
                got.setdefault(int(body["increment"]), time.perf_counter())
                if len(got) >= count:
                    done.set()
                    return

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        for n in range(count):
            if rate is not None:
                due = started + n / rate
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            sent[n] = time.perf_counter()
            events.emit("billing.debit", account=account, counter="telephony", seconds=15,
                        balance_seconds=1000 - n, call_id=f"c{n // 12}", increment=n,
                        campaign="bench")  # fmt: skip
            if rate is None and n % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        receiver.cancel()
    latencies = [(got[n] - sent[n]) * 1000 for n in sent if n in got]
    return Result(name, len(got), elapsed, latencies)


async def measure(paced_seconds: float = 20.0, burst: int = 5_000) -> list[Result]:
    folder = Path(tempfile.mkdtemp(prefix="dialer-mqtt-bench-"))
    database = Database(f"sqlite:///{folder / 'bench.db'}", create=True)
    await db.upgrade(database)
    try:
        events = Events()
        bridge = MqttBridge(URL, Ledger(database), events, f"bench-{uuid.uuid4().hex[:6]}")
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop))
        await asyncio.wait_for(bridge.connected.wait(), 10)
        account = f"bench{uuid.uuid4().hex[:6]}"
        paced = await _run(f"paced, {PACED_RATE:.0f} events/s ({CALLS_UP} calls up)", events,
                           account, int(PACED_RATE * paced_seconds), PACED_RATE)  # fmt: skip
        flat_out = await _run("burst, as fast as published", events, account + "b", burst, None)
        stop.set()
        await task
        return [paced, flat_out]
    finally:
        await database.dispose()


def main() -> list[Result]:
    results = asyncio.run(measure())
    for r in results:
        print(
            f"{r.name}: {r.events} events in {r.seconds:.1f} s = {r.rate:,.0f}/s; latency "
            f"p50 {statistics.median(r.latencies_ms):.1f} ms, p99 {r.pct(0.99):.1f} ms"
        )
    return results


if __name__ == "__main__":
    main()
