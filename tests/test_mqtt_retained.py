"""A retained message on a cmd topic would be executed again at every (re)connect (a
retained top-up of 1 minute applied twice across a restart). So the worker never
executes one: not when its subscription starts, not when it is published live, from an
MQTT 5 or a 3.1.1 publisher; a live one is refused and cleared."""

from __future__ import annotations

import json
from pathlib import Path

import aiomqtt
import pytest
from mqttutil import PrivateBroker, bridge, client, make_account, request

from billing.ledger import Ledger
from billing.storage import Database
from dialer.campaigns import campaign_status
from dialer.mqtt import OPERATOR, MqttBridge

pytestmark = pytest.mark.mqtt

OP_TOPIC = f"dialer/v1/{OPERATOR}/billing/cmd"
TOPUP = {"action": "topup", "account": "acme", "counter": "speech", "minutes": 1}


async def served_since_start(mqtt: MqttBridge, c: aiomqtt.Client, tag: str) -> int:
    """Commands the bridge has seen once a live one, published after it connected, is
    answered: the broker sends retained messages right after the subscription, so any it
    sent came before this one."""
    reply = await request(c, OP_TOPIC, {"action": "balance", "account": "acme",
                                        "request_id": tag}, account=OPERATOR)  # fmt: skip
    assert reply["ok"]
    return mqtt.commands - 1


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_a_retained_command_is_never_executed(
    sqlite_url: str, tmp_path: Path, v5: bool
) -> None:
    broker = PrivateBroker(tmp_path)
    try:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await make_account(database, ledger, tmp_path, "acme", 10)
            before = await ledger.balances("acme")
            async with client(broker.url, v5=v5) as publisher:
                # left on the broker before the worker starts
                await publisher.publish(OP_TOPIC, json.dumps(TOPUP).encode(), qos=1,
                                        retain=True)  # fmt: skip
                await publisher.publish("dialer/v1/acme/campaigns/acme-c/cmd",
                                        b'{"action": "start"}', qos=1, retain=True)  # fmt: skip
            for restart in range(2):  # the worker's first start and a restart
                async with bridge(database, broker.url) as mqtt, client(broker.url) as c:
                    assert await served_since_start(mqtt, c, f"m{restart}") == 0
                    assert mqtt.retained == 0  # not even offered
            assert await ledger.balances("acme") == before
            assert (await campaign_status(database, "acme-c"))["state"] == "draft"

            # published retained while the worker is connected: refused, and cleared so
            # no later (re)connect is offered it
            async with bridge(database, broker.url) as mqtt, \
                    client(broker.url, v5=v5) as publisher:  # fmt: skip
                await publisher.subscribe(f"dialer/v1/{OPERATOR}/replies/live", qos=1)
                await publisher.publish(OP_TOPIC, json.dumps(
                    {**TOPUP, "request_id": "live"}).encode(), qos=1, retain=True)  # fmt: skip
                async for message in publisher.messages:
                    reply = json.loads(bytes(message.payload))
                    break
                assert not reply["ok"] and "retained" in reply["error"], reply
                assert mqtt.retained >= 1 and mqtt.refused == 1
            assert await ledger.balances("acme") == before
            async with client(broker.url) as fresh:
                # retained messages come in the order of the subscriptions: once the
                # marker's arrives, the cmd topic has none left
                await fresh.publish("dialer/v1/test/marker", b"m", qos=1, retain=True)
                await fresh.subscribe(OP_TOPIC, qos=1)
                await fresh.subscribe("dialer/v1/test/marker", qos=1)
                async for message in fresh.messages:
                    assert str(message.topic) == "dialer/v1/test/marker", message.payload
                    break
    finally:
        broker.stop()
