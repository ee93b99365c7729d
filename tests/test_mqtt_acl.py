"""Money is the operator's act. A private Mosquitto runs with exactly the ACL
that docs/mqtt.md recommends; real clients play each role, the customer as an attacker
(MQTT 5 and 3.1.1): its own top-up is refused by the worker, its publish on the
operator's topic is dropped by the broker, the operator's top-up works, the viewer reads
but cannot command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import aiomqtt
import pytest
from mqttutil import PrivateBroker, bridge, client, make_account, request
from workerutil import wait_until

from billing.errors import BillingError
from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer.campaigns import campaign_status
from dialer.mqtt import OPERATOR, MqttBridge

pytestmark = pytest.mark.mqtt

DOCS = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
USERS = {"_worker": "w-pw", "_operator": "op-pw", "_viewer": "v-pw", "acme": "a-pw",
         "other": "o-pw"}  # fmt: skip
OP_TOPIC = f"dialer/v1/{OPERATOR}/billing/cmd"


def documented_acl() -> str:
    match = re.search(r"<!-- acl:[^>]*-->\n```[a-z]*\n(.*?)```", DOCS.read_text(), re.S)
    assert match, "docs/mqtt.md has no marked ACL block"
    return match.group(1)


class Collector:
    """What one client receives on dialer/v1/# (the broker filters by its read ACL)."""

    def __init__(self) -> None:
        self.topics: list[str] = []

    async def run(self, c: aiomqtt.Client) -> None:
        async for message in c.messages:
            self.topics.append(str(message.topic))


async def marker(op: aiomqtt.Client, mqtt: MqttBridge, tag: str) -> int:
    """How many commands the worker has seen once an operator command published after
    everything before it is answered: the broker forwards in order, so a command it let
    through earlier would be counted here."""
    reply = await request(op, OP_TOPIC, {"action": "balance", "account": "acme",
                                         "request_id": tag}, account=OPERATOR)  # fmt: skip
    assert reply["ok"], reply
    return mqtt.commands


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_each_role_against_the_documented_acl(
    sqlite_url: str, tmp_path: Path, v5: bool
) -> None:
    broker = PrivateBroker(tmp_path, users=USERS, acl=documented_acl())
    try:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await make_account(database, ledger, tmp_path, "acme", 10)
            await make_account(database, ledger, tmp_path, "other", 10)
            before = await ledger.balances("acme")
            async with (
                bridge(database, broker.url, username="_worker", password="w-pw") as mqtt,
                client(broker.url, username="_operator", password="op-pw") as op,
                client(broker.url, v5=v5, username="acme", password="a-pw") as acme,
                client(broker.url, v5=v5, username="acme", password="a-pw",
                       identifier="acme-watch") as watch,
                client(broker.url, username="_viewer", password="v-pw") as viewer,
            ):  # fmt: skip
                seen_by_acme, seen_by_viewer = Collector(), Collector()
                await watch.subscribe("dialer/v1/#", qos=1)
                await viewer.subscribe("dialer/v1/#", qos=1)
                listeners = [asyncio.create_task(seen_by_acme.run(watch)),
                             asyncio.create_task(seen_by_viewer.run(viewer))]  # fmt: skip
                try:
                    # the customer: its balance yes, its own top-up no (worker refuses)
                    balance = await request(acme, "dialer/v1/acme/billing/cmd",
                                            {"action": "balance", "request_id": "b1"},
                                            account="acme")  # fmt: skip
                    assert balance["ok"]
                    own = await request(acme, "dialer/v1/acme/billing/cmd",
                                        {"action": "topup", "counter": "telephony",
                                         "minutes": 10_000_000, "request_id": "t1"},
                                        account="acme")  # fmt: skip
                    assert not own["ok"] and "only the operator" in own["error"]
                    # the operator's topic: the broker drops the customer's publish
                    count = await marker(op, mqtt, "m0")
                    for body in ({"action": "topup", "account": "acme", "counter": "telephony",
                                  "minutes": 10_000_000, "request_id": "steal"},
                                 {"action": "topup", "account": "other", "counter": "speech",
                                  "minutes": 5, "request_id": "steal2"}):  # fmt: skip
                        await acme.publish(OP_TOPIC, json.dumps(body).encode(), qos=1)
                    # nor may it command another account's campaign
                    await acme.publish(
                        "dialer/v1/other/campaigns/other-c/cmd",
                        b'{"action": "start", "request_id": "s1"}',
                        qos=1,
                    )
                    assert await marker(op, mqtt, "m1") == count + 1  # the marker only
                    assert await ledger.balances("acme") == before

                    # the operator tops up, naming the account
                    topup = await request(op, OP_TOPIC, {
                        "action": "topup", "account": "acme", "counter": "speech",
                        "minutes": 2, "request_id": "op1"}, account=OPERATOR)  # fmt: skip
                    assert topup["ok"] and topup["result"]["balance_seconds"] == 600 + 120
                    # ... and may command any account's campaign on its topic
                    started = await request(op, "dialer/v1/other/campaigns/other-c/cmd",
                                            {"action": "status", "request_id": "op2"},
                                            account="other")  # fmt: skip
                    assert started["ok"] and started["result"]["state"] == "draft"

                    # the viewer reads, but commands nothing
                    count = await marker(op, mqtt, "m2")
                    await viewer.publish(
                        "dialer/v1/acme/campaigns/acme-c/cmd",
                        b'{"action": "start", "request_id": "v1"}',
                        qos=1,
                    )
                    await viewer.publish(OP_TOPIC, json.dumps(
                        {"action": "topup", "account": "acme", "counter": "speech",
                         "minutes": 9, "request_id": "v2"}).encode(), qos=1)  # fmt: skip
                    assert await marker(op, mqtt, "m3") == count + 1
                    # the topped_up event reaches the watchers; wait for it to be sure
                    # whatever the broker forwards before it has arrived too
                    await wait_until(
                        lambda: (
                            "dialer/v1/acme/billing/events" in seen_by_acme.topics
                            and "dialer/v1/acme/billing/events" in seen_by_viewer.topics
                        )
                    )
                finally:
                    for task in listeners:
                        task.cancel()
                    for task in listeners:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
            after = await ledger.balances("acme")
            status = await campaign_status(database, "acme-c")
    finally:
        broker.stop()
    assert after[Counter.TELEPHONY] == before[Counter.TELEPHONY]
    assert after[Counter.SPEECH] == before[Counter.SPEECH] + 120  # the operator's only
    assert status["state"] == "draft"  # the viewer's start never arrived
    # the customer saw only its own account: no operator replies, nothing of other
    assert seen_by_acme.topics and all(t.startswith("dialer/v1/acme/")
                                       for t in seen_by_acme.topics)  # fmt: skip
    assert "dialer/v1/acme/replies/b1" in seen_by_acme.topics
    # the viewer reads everything, the operator's replies too
    assert f"dialer/v1/{OPERATOR}/replies/op1" in seen_by_viewer.topics
    assert "dialer/v1/other/replies/op2" in seen_by_viewer.topics


async def test_no_account_can_take_the_operators_name(sqlite_url: str) -> None:
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        for name in (OPERATOR, "_x", "acme/x", "+", "#"):
            with pytest.raises(BillingError, match="invalid account name"):
                await ledger.create_account(name)
