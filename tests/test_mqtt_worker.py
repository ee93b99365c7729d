"""The worker with its MQTT bridge, real Mosquitto, real SIP calls: the events of a
call in order, a flood of garbage while dialing, the broker gone and back mid-campaign."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mqttutil import PrivateBroker, client
from siputil import rtp_base
from sqlalchemy import select
from workerutil import make_campaign, setup_account, simulator, wait_for_state, wait_until

from billing.ledger import ENTRY, Ledger
from billing.storage import Database
from dialer import runtime, store
from dialer.campaign_state import Action
from dialer.campaigns import change_state
from dialer.config import MqttConfig

pytestmark = [pytest.mark.sip, pytest.mark.mqtt]


class Subscriber:
    """Everything under dialer/v1/#, in arrival order; reconnects while the broker is
    away (what a campaign manager's dashboard does)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[tuple[str, dict[str, Any] | str, bool]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with client(self.url) as c:
                    await c.subscribe("dialer/v1/#", qos=1)
                    self.ready.set()
                    async for message in c.messages:
                        raw = message.payload if isinstance(message.payload, bytes) else b""
                        try:
                            body: dict[str, Any] | str = json.loads(raw)
                        except json.JSONDecodeError:
                            body = raw.decode(errors="replace")
                        self.messages.append((str(message.topic), body, bool(message.retain)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def events(self) -> list[dict[str, Any]]:
        return [b for t, b, r in self.messages if isinstance(b, dict) and not r
                and t.endswith("/events")]  # fmt: skip


@contextlib.asynccontextmanager
async def subscribed(url: str) -> AsyncIterator[Subscriber]:
    sub = Subscriber(url)
    task = asyncio.create_task(sub.run())
    await asyncio.wait_for(sub.ready.wait(), 10)
    try:
        yield sub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def worker(database: Database, ledger: Ledger, url: str) -> Any:
    return runtime.running_worker(database, ledger, lines=1, rtp_port=rtp_base(),
                                  drain_seconds=5, mqtt=MqttConfig(url=url))  # fmt: skip


async def test_the_events_of_a_call_arrive_in_order_through_a_flood_of_garbage(
    sqlite_url: str, tmp_path: Path
) -> None:
    numbers = [f"+1415555{2000 + n}" for n in range(4)]
    plan = "".join(f'[numbers."{n}"]\nring = 0.2\ntalk = 2\n\n' for n in numbers)
    broker = PrivateBroker(tmp_path)
    with simulator(tmp_path, plan) as sim:
        async with Database(sqlite_url) as database, subscribed(broker.url) as sub:
            ledger = Ledger(database)
            await setup_account(database, ledger, sim, "platform", 10)
            await make_campaign(database, tmp_path, "spring", "main", [f"{n}," for n in numbers],
                                max_concurrent=2, cps=5)  # fmt: skip
            async with worker(database, ledger, broker.url) as w:
                await asyncio.wait_for(w.mqtt.connected.wait(), 10)
                await change_state(database, ledger.tariff, "spring", Action.START)
                async with client(broker.url) as flood:
                    for n in range(1000):  # garbage on every command topic while dialing
                        topic = ("dialer/v1/acme/campaigns/spring/cmd" if n % 2
                                 else "dialer/v1/acme/billing/cmd")  # fmt: skip
                        await flood.publish(topic, b"\x00{not json" * (n % 5), qos=0)
                await wait_for_state(database, "spring", {"completed"})
                await asyncio.sleep(1.0)  # the last events and the final status
                bridge = w.mqtt
            calls = await database.run(lambda c: store.calls_of(c, 1), write=False)
    broker.stop()
    assert bridge.commands >= 1000 and bridge.refused >= 1000
    assert len(calls) == 4 and all(c.disposition == "answered" for c in calls)
    events = sub.events()
    assert all(e["v"] == 1 and e["at"].endswith("Z") for e in events)
    for call in calls:
        mine = [e for e in events if e.get("call_id") == call.call_id]
        kinds = [e["type"] for e in mine]
        assert kinds[:3] == ["call.dialing", "call.ringing", "call.answered"], kinds
        assert kinds[-1] == "call.ended" and "billing.debit" in kinds[3:-1], kinds
        ended = mine[-1]
        assert ended["disposition"] == "answered"
        assert ended["billed_seconds"] == {"telephony": call.billed_telephony_seconds,
                                           "speech": call.billed_speech_seconds}  # fmt: skip
        debits = [e for e in mine if e["type"] == "billing.debit"]
        assert sum(e["seconds"] for e in debits) == 30  # 15 s telephony + 15 s speech
    states = [e["state"] for e in events if e["type"] == "campaign.state"]
    assert states[-2:] == ["running", "completed"]
    retained = [b for t, b, r in sub.messages if t.endswith("/campaigns/spring/status")]
    assert isinstance(retained[-1], dict) and retained[-1]["state"] == "completed"
    workers = [b for t, b, _ in sub.messages if t.startswith("dialer/v1/workers/")]
    assert workers[0] == "online" and workers[-1] == "offline"


async def test_the_broker_down_mid_campaign_loses_no_billing_and_no_events(
    sqlite_url: str, tmp_path: Path
) -> None:
    numbers = [f"+1415555{3000 + n}" for n in range(6)]
    plan = "".join(f'[numbers."{n}"]\nring = 0.2\ntalk = 3\n\n' for n in numbers)
    broker = PrivateBroker(tmp_path)
    try:
        with simulator(tmp_path, plan) as sim:
            async with Database(sqlite_url) as database, subscribed(broker.url) as sub:
                ledger = Ledger(database)
                await setup_account(database, ledger, sim, "platform", 10)
                rows = [f"{n}," for n in numbers]
                await make_campaign(database, tmp_path, "spring", "main", rows,
                                    max_concurrent=2, cps=5)  # fmt: skip
                async with worker(database, ledger, broker.url) as w:
                    await asyncio.wait_for(w.mqtt.connected.wait(), 10)
                    await change_state(database, ledger.tariff, "spring", Action.START)
                    await wait_until(lambda: any(e["type"] == "call.answered"
                                                 for e in sub.events()))  # fmt: skip
                    broker.stop()  # mid-campaign: calls up, more to dial
                    await asyncio.sleep(5)
                    assert len(w.events.buffer) > 0  # waiting for the broker
                    broker.start()
                    await wait_for_state(database, "spring", {"completed"}, within=120)
                    await asyncio.wait_for(w.mqtt.connected.wait(), 30)
                    for _ in range(100):
                        if len(w.events.buffer) == 0:
                            break
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(1.0)
                    bridge, buffer = w.mqtt, w.events.buffer
                calls = await database.run(lambda c: store.calls_of(c, 1), write=False)
                entries = await database.run(
                    lambda c: c.execute(select(ENTRY.c.seconds).where(ENTRY.c.seconds < 0)).all(),
                    write=False,
                )
    finally:
        broker.stop()
    assert bridge.connections >= 2 and buffer.dropped == 0 and len(buffer) == 0
    assert len(calls) == 6 and all(c.disposition == "answered" for c in calls)
    billed = sum(c.billed_telephony_seconds + c.billed_speech_seconds for c in calls)
    assert -sum(e.seconds for e in entries) == billed == 6 * 30  # dialing and billing went on
    ended = {e["call_id"] for e in sub.events() if e["type"] == "call.ended"}
    assert ended == {c.call_id for c in calls}  # the buffered ones came after the restart
    kinds = {e["type"] for e in sub.events()}
    assert {"call.dialing", "call.answered", "billing.debit", "campaign.state"} <= kinds
