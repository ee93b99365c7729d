"""Without a maximum packet size one 50 MB command takes the worker from 104 MB to
253 MB RSS. So the worker announces an MQTT 5 Maximum Packet Size in CONNECT (the broker
then drops bigger messages for it) and a client on an MQTT 3.1.1 session (which cannot
announce one) drops the connection before reading a bigger packet's body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
from mqttutil import PrivateBroker, client, make_account, request
from siputil import rtp_base

from billing.ledger import Ledger
from billing.storage import Database
from dialer.mqtt import DEFAULT_MAX_PACKET, OPERATOR, client_for

pytestmark = [pytest.mark.sip, pytest.mark.mqtt]

OP_TOPIC = f"dialer/v1/{OPERATOR}/billing/cmd"
BIG = 50 * 1024 * 1024


def memory_mb(pid: int) -> str:
    """The process's resident memory now and at its peak (VmHWM: a 50 MB message read
    and freed again shows there)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)  # fmt: skip
    rss, peak = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    return f"RSS {rss:.1f} MB (peak {peak:.1f} MB)"


def big_topup() -> bytes:
    body = {"action": "topup", "account": "acme", "counter": "speech", "minutes": 1,
            "request_id": "big", "pad": ""}  # fmt: skip
    head = json.dumps(body).encode()
    return head[:-2] + b"x" * (BIG - len(head)) + b'"}'


async def test_a_50_mb_command_never_reaches_the_worker(sqlite_url: str, tmp_path: Path) -> None:
    broker = PrivateBroker(tmp_path)  # no size limit of its own: the worker's counts
    exe = str(Path(sys.executable).with_name("dialer"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env |= {"DIALER_DATABASE__URL": sqlite_url, "DIALER_MQTT__URL": broker.url,
            "DIALER_SIP__RTP_PORT_BASE": str(rtp_base())}  # fmt: skip
    log = (tmp_path / "worker.log").open("wb")
    worker: asyncio.subprocess.Process | None = None
    try:
        async with Database(sqlite_url) as database:
            ledger = Ledger(database)
            await make_account(database, ledger, tmp_path, "acme", 10)
            before = await ledger.balances("acme")
            async with client(broker.url) as c:
                await c.subscribe("dialer/v1/workers/+/status", qos=1)
                worker = await asyncio.create_subprocess_exec(
                    exe, "worker", "--lines", "1", "--sip-port", "0", "--drain-seconds", "1",
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                )  # fmt: skip
                async with asyncio.timeout(60):
                    async for message in c.messages:
                        if message.payload == b"online":
                            break
                await c.unsubscribe("dialer/v1/workers/+/status")
                marker = {"action": "balance", "account": "acme", "request_id": "m0"}
                assert (await request(c, OP_TOPIC, marker, account=OPERATOR))["ok"]
                before_mb = memory_mb(worker.pid)
                payload = big_topup()
                for v5 in (True, False):  # from an MQTT 5 and a 3.1.1 publisher
                    async with client(broker.url, v5=v5) as publisher:
                        await publisher.publish(OP_TOPIC, payload, qos=1)
                del payload
                # a command after them is answered: they came first, and were dropped
                marker["request_id"] = "m1"
                assert (await request(c, OP_TOPIC, marker, account=OPERATOR))["ok"]
                after_mb = memory_mb(worker.pid)
                assert worker.returncode is None
            # figures for the report, not asserted
            print(f"\nworker before two 50 MB commands: {before_mb}; after: {after_mb}")
            assert await ledger.balances("acme") == before
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await asyncio.wait_for(worker.wait(), 10)
        log.close()
        broker.stop()
    # not even refused: the worker never saw them
    assert b"mqtt command refused" not in (tmp_path / "worker.log").read_bytes()


async def test_a_311_session_drops_a_packet_over_the_limit_unread(tmp_path: Path) -> None:
    """MQTT 3.1.1 cannot announce a limit: the broker sends the big packet, the client
    ends the connection once its length is known (a limit of None reads it: the control)."""
    broker = PrivateBroker(tmp_path)
    big = b"x" * (4 * DEFAULT_MAX_PACKET)
    try:
        for limit in (None, DEFAULT_MAX_PACKET):
            async with client_for(broker.url, v5=False, max_packet=limit) as c, \
                    client(broker.url) as publisher:  # fmt: skip
                await c.subscribe("t/big", qos=1)
                await publisher.publish("t/big", b"small", qos=1)
                await publisher.publish("t/big", big, qos=1)
                received: list[int] = []
                with pytest.raises(aiomqtt.MqttError) if limit else contextlib.nullcontext():
                    async with asyncio.timeout(30):
                        async for message in c.messages:
                            received.append(len(message.payload))
                            if len(received) == 2:
                                break
                assert received == ([5] if limit else [5, len(big)])
    finally:
        broker.stop()
