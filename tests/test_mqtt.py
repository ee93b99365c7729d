"""The MQTT control plane against real Mosquitto: every command and its refusals over
MQTT 5 and 3.1.1, the same rules as the CLI, confinement by the broker's ACL (the roles
of docs/mqtt.md: test_mqtt_acl.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import aiomqtt
import pytest
from mqttutil import (
    SYSTEM_URL,
    PrivateBroker,
    bridge,
    client,
    ensure_system_broker,
    make_account,
    request,
)
from workerutil import wait_until

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer.errors import DialerError
from dialer.events import EventBuffer, Events
from dialer.mqtt import MAX_PAYLOAD, OPERATOR, MqttBridge, client_for, reply_topic_allowed

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="session", autouse=True)
def system_broker() -> None:
    ensure_system_broker()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_every_command_and_its_refusals(sqlite_url: str, tmp_path: Path, v5: bool) -> None:
    acme, broke = f"acme{uuid.uuid4().hex[:6]}", f"broke{uuid.uuid4().hex[:6]}"
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        await make_account(database, ledger, tmp_path, acme, 10)
        await make_account(database, ledger, tmp_path, broke, 0)
        async with bridge(database, SYSTEM_URL) as mqtt, client(SYSTEM_URL, v5=v5) as c:
            n = iter(range(1000))

            async def ask(topic: str, body: dict[str, Any] | bytes, account: str = acme,
                          **kw: Any) -> dict[str, Any]:  # fmt: skip
                if isinstance(body, dict):
                    body = {"request_id": f"r{next(n)}", **body}
                return await request(c, f"dialer/v1/{account}/{topic}", body, account=account,
                                     **kw)  # fmt: skip

            camp = f"campaigns/{acme}-c/cmd"
            status = await ask(camp, {"action": "status"})
            assert status["ok"] and status["result"]["state"] == "draft"
            assert status["request_id"] == "r0"
            for action, state in (("start", "running"), ("pause", "paused"),
                                  ("resume", "running"), ("stop", "stopped")):  # fmt: skip
                reply = await ask(camp, {"action": action})
                assert reply["ok"] and reply["result"]["state"] == state, reply
            again = await ask(camp, {"action": "start"})
            assert not again["ok"] and "stopped" in again["error"]
            # the CLI's rule: no start while a charged counter is not positive
            refused = await ask(f"campaigns/{broke}-c/cmd", {"action": "start"}, account=broke)
            assert not refused["ok"] and "balance" in refused["error"]

            balance = await ask("billing/cmd", {"action": "balance"})
            assert balance["result"]["counters"]["speech"]["balance_seconds"] == 600
            # top-ups: the operator's topic only, naming the account
            topup = await ask("billing/cmd", {"action": "topup", "account": acme,
                                              "counter": "speech", "minutes": 5},
                              account=OPERATOR)  # fmt: skip
            assert topup["ok"] and topup["result"]["balance_seconds"] == 900
            own = await ask("billing/cmd", {"action": "topup", "counter": "speech",
                                            "minutes": 5})  # fmt: skip
            assert not own["ok"] and "only the operator" in own["error"]
            seen = await ask("billing/cmd", {"action": "balance", "account": acme},
                             account=OPERATOR)  # fmt: skip
            assert seen["result"]["counters"]["speech"]["balance_seconds"] == 900
            if v5:  # MQTT 5: the reply also goes to the response topic, correlated
                reply = await ask("billing/cmd", {"action": "balance"},
                                  response_topic=f"dialer/v1/{acme}/inbox/me")  # fmt: skip
                assert reply["ok"] and reply["_correlation"].startswith(b"corr-")

            bad: list[tuple[str, dict[str, Any], str]] = [
                (camp, {"action": "explode"}, "unknown action 'explode'"),
                (camp, {"action": 5}, "action must be a string"),
                ("billing/cmd", {"action": "refund"}, "unknown action 'refund'"),
                ("campaigns/nope/cmd", {"action": "status"}, "unknown campaign 'nope'"),
                # a campaign of another account is unknown here, not "forbidden"
                (f"campaigns/{broke}-c/cmd", {"action": "status"}, "unknown campaign"),
            ]  # fmt: skip
            for topic, body, message in bad:
                reply = await ask(topic, body)
                assert not reply["ok"] and message in reply["error"], (body, reply)
            unknown = await ask("billing/cmd", {"action": "balance"}, account="ghost")
            assert not unknown["ok"] and "ghost" in unknown["error"]
            if v5:  # malformed payloads: no request id to read, the response topic answers
                inbox = f"dialer/v1/{acme}/inbox/x"
                for raw, message in ((b"not json", "not JSON"), (b"[1]", "JSON object"),
                                     (b"{" + b" " * MAX_PAYLOAD + b"}", "at most")):  # fmt: skip
                    reply = await ask("billing/cmd", raw, response_topic=inbox)
                    assert not reply["ok"] and message in reply["error"]
                bad_id = await ask("billing/cmd", {"action": "balance", "request_id": "a/b#"},
                                   response_topic=inbox)  # fmt: skip
                assert not bad_id["ok"] and "request_id" in bad_id["error"]
            assert mqtt.refused >= len(bad) + 2
        balances = await ledger.balances(acme)
        assert balances[Counter.SPEECH] == 900  # the refused top-ups added nothing


async def test_an_acl_confined_client_cannot_command_another_account(
    sqlite_url: str, tmp_path: Path
) -> None:
    acl = """\
user worker
topic readwrite dialer/v1/#

user acme
topic write dialer/v1/acme/campaigns/+/cmd
topic write dialer/v1/acme/billing/cmd
topic read dialer/v1/acme/#

user other
topic write dialer/v1/other/campaigns/+/cmd
topic write dialer/v1/other/billing/cmd
topic read dialer/v1/other/#
"""
    broker = PrivateBroker(tmp_path, users={"worker": "w-secret", "acme": "a-secret",
                                            "other": "o-secret"}, acl=acl)  # fmt: skip
    try:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await make_account(database, ledger, tmp_path, "acme", 10)
            await make_account(database, ledger, tmp_path, "other", 10)
            async with bridge(database, broker.url, username="worker", password="w-secret"), \
                    client(broker.url, username="acme", password="a-secret") as c:  # fmt: skip
                own = await request(c, "dialer/v1/acme/billing/cmd",
                                    {"action": "balance", "request_id": "mine"},
                                    account="acme")  # fmt: skip
                assert own["ok"]
                # the broker drops acme's publish to other's topic: no reply ever comes
                with pytest.raises(TimeoutError):
                    await request(c, "dialer/v1/other/billing/cmd",
                                  {"action": "topup", "counter": "speech", "minutes": 50,
                                   "request_id": "theirs"}, account="other", within=2)  # fmt: skip
                # nor can acme make the worker answer into other's topics (MQTT 5 response
                # topic outside acme's prefix): the worker ignores it
                with pytest.raises(TimeoutError):
                    await request(c, "dialer/v1/acme/billing/cmd",
                                  {"action": "balance", "request_id": "x1"}, account="acme",
                                  response_topic="dialer/v1/other/inbox", within=2)  # fmt: skip
            with pytest.raises(aiomqtt.MqttError):  # a wrong password is refused
                async with client(broker.url, username="acme", password="wrong"):
                    pass
            balances = await ledger.balances("other")
            assert balances[Counter.SPEECH] == 600  # untouched
    finally:
        broker.stop()


async def test_oversized_and_garbage_floods_leave_the_bridge_serving(
    sqlite_url: str, tmp_path: Path
) -> None:
    account = f"flood{uuid.uuid4().hex[:6]}"
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        await make_account(database, ledger, tmp_path, account, 10)
        async with bridge(database, SYSTEM_URL) as mqtt, client(SYSTEM_URL) as c:
            junk = [b"", b"\xff\xfe", b"{", b'{"action": null}', b"[]", b"1e999",
                    json.dumps({"action": "start", "request_id": "x" * 500}).encode()]  # fmt: skip
            for n in range(1000):
                await c.publish(f"dialer/v1/{account}/campaigns/{account}-c/cmd", junk[n % 7],
                                qos=0)  # fmt: skip
            reply = await request(c, f"dialer/v1/{account}/billing/cmd",
                                  {"action": "balance", "request_id": "after"},
                                  account=account, within=30)  # fmt: skip
            assert reply["ok"]
            assert mqtt.commands >= 1000


async def test_dialer_events_prints_the_stream(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = f"ev{uuid.uuid4().hex[:6]}"
    events = Events()
    events.emit("billing.topped_up", account=account, counter="speech", balance_seconds=60)
    events.status(account, "spring", {"campaign": "spring", "state": "running"})
    async with Database(sqlite_url) as database:
        await Ledger(database).create_account(account)
        ledger = Ledger(database)
        mqtt = MqttBridge(SYSTEM_URL, ledger, events, "cli-test")
        stop = asyncio.Event()
        task = asyncio.create_task(mqtt.run(stop))
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        await wait_until(lambda: len(events.buffer) == 0)
        monkeypatch.setenv("DIALER_MQTT__URL", SYSTEM_URL)
        monkeypatch.chdir(tmp_path)
        # without --follow: what is retained (the campaign status), then it returns
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("dialer")), "events", "--account", account,
            "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        [line] = out.decode().splitlines()
        document = json.loads(line)
        assert document["topic"] == f"dialer/v1/{account}/campaigns/spring/status"
        assert document["retained"] and document["payload"]["state"] == "running"
        # --follow prints events as they come, readably
        follow = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("dialer")), "events", "--follow", "--account",
            account, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert follow.stdout is not None
        # the retained status comes first: once it is printed, the follower is subscribed
        # (a fixed sleep was too short for the CLI's start on a loaded machine)
        retained = await asyncio.wait_for(follow.stdout.readline(), 30)
        assert b"retained" in retained and b"spring" in retained
        events.emit("billing.exhausted", account=account, counter="speech", balance_seconds=-15)
        first = await asyncio.wait_for(follow.stdout.readline(), 10)
        assert b"billing.exhausted" in first and b"balance_seconds=-15" in first
        follow.terminate()
        await follow.wait()
        stop.set()
        await task
    unconfigured = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("dialer")), "events", cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIALER_")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await unconfigured.communicate()
    assert unconfigured.returncode == 1 and b"no MQTT broker configured" in err


async def test_tls_with_the_brokers_ca(sqlite_url: str, tmp_path: Path) -> None:
    broker = PrivateBroker(tmp_path, tls=True)
    try:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await make_account(database, ledger, tmp_path, "acme", 1)
            ca = str(broker.ca_file)
            async with bridge(database, broker.url, ca_file=ca), \
                    client_for(broker.url, ca_file=ca) as c:  # fmt: skip
                reply = await request(c, "dialer/v1/acme/billing/cmd",
                                      {"action": "balance", "request_id": "tls"},
                                      account="acme")  # fmt: skip
                assert reply["ok"]
            # without the CA the certificate is not trusted: refused, never silently plain
            with pytest.raises(aiomqtt.MqttError):
                async with client_for(broker.url):
                    pass
    finally:
        broker.stop()


async def test_two_workers_serve_each_command_once(sqlite_url: str, tmp_path: Path) -> None:
    account = f"two{uuid.uuid4().hex[:6]}"
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        await make_account(database, ledger, tmp_path, account, 1)
        async with bridge(database, SYSTEM_URL) as first, bridge(database, SYSTEM_URL) as second:
            async with client(SYSTEM_URL) as c:
                await c.subscribe(f"dialer/v1/{OPERATOR}/replies/#", qos=1)
                for n in range(6):  # no reference: a second worker would add them twice
                    await c.publish(f"dialer/v1/{OPERATOR}/billing/cmd", json.dumps(
                        {"action": "topup", "account": account, "counter": "speech",
                         "minutes": 1, "request_id": f"t{n}"}).encode(), qos=1)  # fmt: skip
                replies: list[str] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        async for message in c.messages:
                            replies.append(str(message.topic))
                # a replayed top-up (same reference) emits no second topped_up event
                for n in range(2):
                    body = {
                        "action": "topup",
                        "account": account,
                        "counter": "speech",
                        "minutes": 1,
                        "reference": "inv-1",
                        "request_id": f"ref{n}",
                    }
                    reply = await request(c, f"dialer/v1/{OPERATOR}/billing/cmd", body,
                                          account=OPERATOR)  # fmt: skip
                    assert reply["ok"] and reply["result"]["replayed"] == (n == 1)
            emitted = first.events.buffer.emitted + second.events.buffer.emitted
        balances = await ledger.balances(account)
    assert sorted(replies) == sorted(f"dialer/v1/{OPERATOR}/replies/t{n}" for n in range(6))
    assert emitted == 7  # six top-ups and the first with the reference
    assert balances[Counter.SPEECH] == 60 + 6 * 60 + 60
    assert first.commands + second.commands == 8 and first.commands and second.commands


async def test_replies_go_only_to_the_accounts_own_reply_topics(
    sqlite_url: str, tmp_path: Path
) -> None:
    account = f"rt{uuid.uuid4().hex[:6]}"
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        await make_account(database, ledger, tmp_path, account, 1)
        async with bridge(database, SYSTEM_URL), client(SYSTEM_URL) as c:
            own = f"dialer/v1/{account}"
            for target in (f"{own}/billing/events", f"{own}/campaigns/x/status",
                           f"{own}/inbox/+", f"{own}/inbox/#", f"{own}/replies//x",
                           "dialer/v1/other/inbox/x"):  # fmt: skip
                with pytest.raises(TimeoutError):
                    await request(c, f"{own}/billing/cmd",
                                  {"action": "balance", "request_id": "spoof"},
                                  account=account, response_topic=target, within=1)  # fmt: skip
            ok = await request(c, f"{own}/billing/cmd", {"action": "balance", "request_id": "ok"},
                               account=account, response_topic=f"{own}/inbox/me")  # fmt: skip
            assert ok["ok"]
    assert reply_topic_allowed(f"{own}/replies/r1", account)
    assert not reply_topic_allowed(f"{own}/replies/r+1", account)
    assert not reply_topic_allowed(f"{own}/billing/cmd", account)  # (a test client would
    # receive its own command there, so this one is checked here, not over the broker)


async def test_an_event_leaves_the_buffer_only_once_the_broker_has_it() -> None:
    class Flaky:
        def __init__(self, fail_at: int) -> None:
            self.sent: list[bytes] = []
            self.fail_at = fail_at

        async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
            await asyncio.sleep(0)
            if len(self.sent) == self.fail_at:
                self.fail_at = -1
                raise aiomqtt.MqttError("connection lost")
            self.sent.append(payload)

    events = Events(EventBuffer(capacity=1000))
    for n in range(100):
        events.emit("billing.exhausted", account="a", counter="speech", balance_seconds=n)
    mqtt = MqttBridge(SYSTEM_URL, cast(Any, None), events, "unit")
    flaky = Flaky(fail_at=40)
    with pytest.raises(aiomqtt.MqttError):
        await mqtt._flush(cast(Any, flaky))
    assert len(events.buffer) == 100 - 32  # the first window went; the second did not
    await mqtt._flush(cast(Any, flaky))  # reconnected
    seen = [json.loads(p)["balance_seconds"] for p in flaky.sent]
    assert sorted(set(seen)) == list(range(100)) and len(events.buffer) == 0
    # in order, the unacknowledged window again from its start (at least once)
    assert seen[:32] == list(range(32)) and seen[-68:] == list(range(32, 100))


def test_a_bad_broker_setting_is_refused_at_start() -> None:
    with pytest.raises(DialerError, match="mqtt url must be"):
        MqttBridge("http://broker", cast(Any, None), Events(), "w")
    with pytest.raises(DialerError, match=r"mqtt ca_file /nope\.pem"):
        MqttBridge("mqtts://127.0.0.1:8883", cast(Any, None), Events(), "w", ca_file="/nope.pem")
    buffer = EventBuffer(capacity=3)
    events = Events(buffer)
    for n in range(5):
        events.emit("billing.exhausted", account="a", counter="speech", balance_seconds=n)
    assert len(buffer) == 3 and buffer.dropped == 2 and buffer.emitted == 5
    assert json.loads(cast(Any, buffer.peek()).payload)["balance_seconds"] == 2  # oldest gone
