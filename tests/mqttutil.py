"""Real Mosquitto brokers for the tests: the machine's (127.0.0.1:1883, started when it
is down; unreachable = fail, never skip) and private ones on a free port, with their own
config (passwords, ACL), that a test may stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter
from dialer.campaigns import CampaignSpec, add_trunk, create_campaign, import_contacts
from dialer.events import Events
from dialer.mqtt import MqttBridge

SYSTEM_URL = "mqtt://127.0.0.1:1883"


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def ensure_system_broker() -> None:
    if reachable(1883):
        return
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    subprocess.run([exe, "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=False,
                   capture_output=True, timeout=30)  # fmt: skip
    deadline = time.monotonic() + 15
    while not reachable(1883) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not reachable(1883):
        raise RuntimeError("Mosquitto is not reachable on 127.0.0.1:1883 even after starting it")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateBroker:
    """`mosquitto -c` in the foreground on a free port; stop() and start() at will."""

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None,
                 acl: str | None = None, tls: bool = False) -> None:  # fmt: skip
        self.port = free_tcp_port()
        self.folder = folder
        self.tls = tls
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_type error"]
        if tls:  # a CA of our own and a server certificate for 127.0.0.1
            self.ca_file = make_certificates(folder)
            lines += [f"cafile {self.ca_file}", f"certfile {folder / 'server.pem'}",
                      f"keyfile {folder / 'server.key'}"]  # fmt: skip
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who can't read tmp_path
        if users:
            passwd = folder / "passwd"
            passwd.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password],
                               check=True, capture_output=True)  # fmt: skip
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (folder / "acl").write_text(acl)
            lines.append(f"acl_file {folder / 'acl'}")
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [exe, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not reachable(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                _, err = self.process.communicate()
                raise RuntimeError(f"private mosquitto did not start: {err.decode()[-500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def make_certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=dialer test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
            "-out", "server.pem")  # fmt: skip
    return folder / "ca.pem"


def client(
    url: str, *, v5: bool = True, username: str | None = None, password: str | None = None,
    identifier: str | None = None,
) -> aiomqtt.Client:  # fmt: skip
    from dialer.mqtt import client_for

    return client_for(url, v5=v5, username=username, password=password, identifier=identifier)


async def request(
    c: aiomqtt.Client, topic: str, body: dict[str, Any] | bytes, *, account: str,
    response_topic: str | None = None, within: float = 10,
) -> dict[str, Any]:  # fmt: skip
    """Publish a command and wait for its reply (replies/{request_id}, or the MQTT 5
    response topic when given)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    rid = body.get("request_id") if isinstance(body, dict) else None
    wait_on = response_topic or f"dialer/v1/{account}/replies/{rid}"
    await c.subscribe(wait_on, qos=1)
    properties = None
    if response_topic is not None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = response_topic
        properties.CorrelationData = b"corr-" + str(rid).encode()
    await c.publish(topic, payload, qos=1, properties=properties)
    async with asyncio.timeout(within):
        async for message in c.messages:
            if str(message.topic) == wait_on:
                reply: dict[str, Any] = json.loads(bytes(message.payload))
                if response_topic is not None:
                    reply["_correlation"] = getattr(message.properties, "CorrelationData", None)
                await c.unsubscribe(wait_on)
                return reply
    raise AssertionError("unreachable")


# -- accounts and a bridge served in the test's own loop ----------------------------------


async def make_account(database: Database, ledger: Ledger, tmp_path: Path, account: str,
                       minutes: int) -> None:  # fmt: skip
    await ledger.create_account(account)
    if minutes:
        for counter in Counter:
            await ledger.buy_package(account, counter, minutes)
    await add_trunk(database, name=f"{account}-t", account=account, kind="platform",
                    uri="sip:127.0.0.1:5999")  # fmt: skip
    await create_campaign(database, CampaignSpec(name=f"{account}-c", account=account,
                                                 trunk=f"{account}-t"))  # fmt: skip
    csv = tmp_path / f"{account}.csv"
    csv.write_text("phone\n+14155550101\n")
    await import_contacts(database, f"{account}-c", csv)


@contextlib.asynccontextmanager
async def bridge(database: Database, url: str, **options: Any) -> AsyncIterator[MqttBridge]:
    ledger = Ledger(database)
    mqtt = MqttBridge(url, ledger, Events(), f"t-{uuid.uuid4().hex[:6]}", **options)
    stop = asyncio.Event()
    task = asyncio.create_task(mqtt.run(stop))
    try:
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        yield mqtt
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
