"""The MQTT control plane: commands in, replies and the event stream out (aiomqtt).

One connection per worker, reconnected with backoff (0.5 s doubling to 10 s). Nothing
else waits on it: events wait in the bounded buffer (dialer.events) and go out in order,
QoS 1, once the broker is back. Commands (INTERFACE.md "MQTT"):

    dialer/v1/{account}/campaigns/{campaign}/cmd  {"action": "start|pause|resume|stop|status",
                                                   "request_id": "r1"}
    dialer/v1/{account}/billing/cmd               {"action": "balance", "request_id"}
    dialer/v1/_operator/billing/cmd               {"action": "topup|balance", "account":
                                                   "acme", "counter": "speech",
                                                   "minutes": 100, "request_id"}

are served by dialer.service, the same layer as the CLI. Money is the operator's act: a
top-up is served only on the operator's topic, whose level ``_operator`` no account name
can take (names start with a letter or digit); an account's own billing/cmd answers
``balance`` and refuses ``topup``. The reply goes to
``dialer/v1/{account}/replies/{request_id}`` (``_operator`` for the operator's) and, for
MQTT 5 clients, to their response topic with their correlation data, but only a response
topic under the same prefix: a client confined by the broker's ACL to its account must
not make the worker publish elsewhere. Bad input (not JSON, not an object, unknown action
or field, wrong types, oversized, unknown account or campaign) gets
``{"ok": false, "error": "..."}`` and a log line; the worker goes on.

A command is never executed from a retained message (it would run again at every
reconnect): the worker subscribes with retain handling "do not send" and "retain as
published", refuses whatever still carries the retain flag and clears it from the broker.
The worker announces an MQTT 5 Maximum Packet Size (the broker drops bigger messages
instead of sending them) and, should a broker send one anyway, drops the connection
before reading its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from billing.errors import BillingError
from billing.ledger import ACCOUNT_NAME, MAX_REFERENCE, Ledger
from billing.storage import first_line
from dialer import service
from dialer.errors import ConfigError, DialerError
from dialer.events import PREFIX, Events, worker_topic
from dialer.text import has_controls, shorten

log = structlog.get_logger("dialer.mqtt")

MAX_PAYLOAD = 16 * 1024  # a command's JSON
DEFAULT_MAX_PACKET = 64 * 1024  # announced in CONNECT: the broker sends nothing bigger
OPERATOR = "_operator"  # the operator's topic level: no account name starts with "_"
MAX_ECHO = 40  # customer input quoted in an error is cut to this
SHARE_GROUP = "dialer-workers"
PUBLISH_WINDOW = 32  # QoS 1 publishes in flight: one round trip per window, not per event
MAX_QUEUED_COMMANDS = 1000  # incoming commands waiting: the broker holds the rest
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
STABLE_SECONDS = 30.0  # a connection that lasted this long resets the backoff


def broker_of(url: str) -> tuple[str, int, bool]:
    """mqtt://host[:1883] or mqtts://host[:8883] -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"mqtt url must be mqtt://host[:port] or mqtts://host[:port], got {url!r}"
        )
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def cut(value: object, width: int = MAX_ECHO) -> str:
    """Customer input as an error quotes it: its start only, control characters escaped."""
    return shorten(value, width)


def client_for(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    ca_file: str | None = None,
    identifier: str | None = None,
    v5: bool = True,
    will: aiomqtt.Will | None = None,
    max_packet: int | None = DEFAULT_MAX_PACKET,
) -> aiomqtt.Client:
    """``max_packet``: the largest packet this client takes (None: no limit), announced to
    an MQTT 5 broker and enforced on whatever a broker sends anyway."""
    host, port, url_tls = broker_of(url)
    context = None
    if tls or url_tls:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt ca_file {ca_file}: {first_line(exc)}") from None
    properties = None
    if v5 and max_packet is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.MaximumPacketSize = max_packet
    client = aiomqtt.Client(
        host, port, username=username, password=password, identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=will, tls_context=context, timeout=10, keepalive=30,
        max_queued_incoming_messages=MAX_QUEUED_COMMANDS, properties=properties,
    )  # fmt: skip
    if max_packet is not None:
        _refuse_packets_over(client, max_packet)
    return client


def _refuse_packets_over(client: aiomqtt.Client, limit: int) -> None:
    """A packet whose announced length is over ``limit`` ends the connection before its
    body is read (an MQTT 3.1.1 session cannot announce a limit; a broker might ignore
    it): a 50 MB publish must not become 50 MB of worker memory. paho reads the fixed
    header first, then the body through ``_sock_recv``: that is where it is stopped."""
    paho: Any = client._client
    receive = paho._sock_recv

    def guarded(bufsize: int) -> bytes:
        packet = paho._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > limit:
            log.warning("mqtt packet over the limit: disconnecting",
                        size=packet["remaining_length"], limit=limit)  # fmt: skip
            raise ConnectionError(f"incoming packet of {packet['remaining_length']} bytes")
        return receive(bufsize)  # type: ignore[no-any-return]

    paho._sock_recv = guarded


def reply_topic_allowed(topic: str, account: str) -> bool:
    """Replies go only to the account's own replies/ or inbox/ topics, concrete ones."""
    levels = topic.split("/")
    return (
        topic.startswith((f"{PREFIX}/{account}/replies/", f"{PREFIX}/{account}/inbox/"))
        and len(topic) <= 512
        and all(level and level not in ("+", "#") for level in levels)
        and not any(c in topic for c in "+#\0")
    )


class Reply(DialerError):
    """A refusal to send back (the request is answered, never dropped)."""


#: the fields each command may carry (anything else is refused: a typo in a top-up must
#: not pass as a default)
CAMPAIGN_FIELDS = frozenset({"action", "request_id"})
BALANCE_FIELDS = frozenset({"action", "request_id"})
OPERATOR_FIELDS = {
    "balance": frozenset({"action", "request_id", "account"}),
    "topup": frozenset({"action", "request_id", "account", "counter", "minutes", "reference"}),
}


def _only(request: dict[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(str(k) for k in request if k not in allowed)
    if extra:
        raise Reply(f"unknown field '{cut(extra[0])}' (allowed: {', '.join(sorted(allowed))})")


def _name(value: object, what: str) -> str:
    """An account or campaign name from a topic or a payload: a string of the names'
    shape, else "unknown" with a short echo (the database is not asked)."""
    if not isinstance(value, str):
        raise Reply(f"{what} must be a string")
    if not ACCOUNT_NAME.fullmatch(value):
        raise Reply(f"unknown {what} '{cut(value)}'")
    return value


class MqttBridge:
    def __init__(
        self,
        url: str,
        ledger: Ledger,
        events: Events,
        worker_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.url = url
        client_for(url, tls=tls, ca_file=ca_file)  # a bad URL or CA file is refused at start
        self.ledger = ledger
        self.events = events
        self.worker_id = worker_id
        self.options = {"username": username, "password": password, "tls": tls,
                        "ca_file": ca_file, "max_packet": max_packet}  # fmt: skip
        self.connected = asyncio.Event()
        self.commands = 0
        self.refused = 0
        self.retained = 0  # retained commands refused (never executed)
        self.connections = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect with backoff until ``stop``; then say offline."""
        delay = BACKOFF_FIRST
        while not stop.is_set():
            connected_at = time.monotonic()
            will = aiomqtt.Will(worker_topic(self.worker_id), b"offline", qos=1, retain=True)
            client = client_for(self.url, identifier=f"dialer-{self.worker_id}", will=will,
                                **self.options)  # type: ignore[arg-type]  # fmt: skip
            try:
                async with client:
                    self.connections += 1
                    connected_at = time.monotonic()
                    await self._session(client, stop)
                    with contextlib.suppress(aiomqtt.MqttError):  # going away on purpose
                        await client.publish(worker_topic(self.worker_id), b"offline", qos=1,
                                             retain=True, timeout=5)  # fmt: skip
                    return
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning(
                    "mqtt broker unreachable: events wait in the buffer",
                    error=str(exc), retry_in=delay, buffered=len(self.events.buffer),
                )  # fmt: skip
            except Exception:  # never let the bridge die silently: log it, try again
                self.connected.clear()
                log.exception("mqtt bridge failed; reconnecting", retry_in=delay)
            if time.monotonic() - connected_at > STABLE_SECONDS:
                delay = BACKOFF_FIRST  # it had worked for a while: a fresh start
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        await client.publish(worker_topic(self.worker_id), b"online", qos=1, retain=True)
        # shared: with several workers on one broker each command is served once.
        # Retained commands: not sent at subscribe, and flagged when published live (the
        # flag is how _command refuses them, whatever the broker does at subscribe).
        options = SubscribeOptions(
            qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
        )
        for topic in (f"{PREFIX}/+/campaigns/+/cmd", f"{PREFIX}/+/billing/cmd"):
            await client.subscribe(f"$share/{SHARE_GROUP}/{topic}", options=options)
        self.connected.set()
        log.info("mqtt connected", broker=self.url, buffered=len(self.events.buffer))
        tasks = {
            asyncio.create_task(self._publish(client), name="mqtt-publish"),
            asyncio.create_task(self._serve(client), name="mqtt-commands"),
            asyncio.create_task(stop.wait(), name="mqtt-stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected.clear()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if stop.is_set():
            await self._drain(client)

    async def _drain(self, client: aiomqtt.Client, within: float = 5.0) -> None:
        """Stopping: what is buffered goes out first (briefly)."""
        with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
            await asyncio.wait_for(self._flush(client), within)

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Publish in order, a window at a time; an event leaves the buffer only once the
        broker has acknowledged it (a lost connection keeps it for the next one: QoS 1,
        at least once)."""
        buffer = self.events.buffer
        while batch := buffer.first(PUBLISH_WINDOW):
            await asyncio.gather(
                *(client.publish(i.topic, i.payload, qos=1, retain=i.retain) for i in batch)
            )
            for item in batch:
                buffer.pop(item)

    async def _publish(self, client: aiomqtt.Client) -> None:
        buffer = self.events.buffer
        while True:
            await buffer.waiter()
            # removed only once the broker has it (QoS 1): a lost connection keeps it
            await self._flush(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self._command(client, message)
            except aiomqtt.MqttError:
                raise
            except Exception:  # a bug in one command must not stop the others
                log.exception("mqtt command failed", topic=cut(str(message.topic), 200))

    async def _command(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        self.commands += 1
        topic = str(message.topic)
        parts = topic.split("/")
        account = parts[2] if len(parts) > 2 else ""
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        request_id: str | None = None
        if message.retain:
            self.retained += 1
            if not message.payload:  # a retained command being cleared (by us): nothing
                return
            # clear it, or it would be offered again at every (re)connect
            await client.publish(topic, b"", qos=1, retain=True)
        try:
            request = self._decode(message.payload)
            rid = request.get("request_id")
            if isinstance(rid, str) and REQUEST_ID.match(rid):
                request_id = rid
            elif rid is not None:
                raise Reply("request_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
            if message.retain:
                raise Reply("a retained command is never executed: publish it with retain off")
            result = await self._run(parts, account, request)
            reply: dict[str, Any] = {"request_id": request_id, "ok": True, "result": result}
        except (Reply, DialerError, BillingError) as refused:
            self.refused += 1
            reply = {"request_id": request_id, "ok": False, "error": first_line(refused)}
            log.warning("mqtt command refused", topic=cut(topic, 200), request_id=request_id,
                        error=reply["error"])  # fmt: skip
        if account != OPERATOR and not ACCOUNT_NAME.fullmatch(account):
            return  # no reply topic to build from a level that is no account's name
        payload = json.dumps(reply, separators=(",", ":"), default=str).encode()
        if request_id is not None:
            await client.publish(f"{PREFIX}/{account}/replies/{request_id}", payload, qos=1)
        if isinstance(response_topic, str) and reply_topic_allowed(response_topic, account):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                properties.CorrelationData = correlation
            await client.publish(response_topic, payload, qos=1, properties=properties)

    @staticmethod
    def _decode(payload: Any) -> dict[str, Any]:
        data = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        if len(data) > MAX_PAYLOAD:
            raise Reply(f"payload of {len(data)} bytes: at most {MAX_PAYLOAD}")
        try:
            request = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, huge numbers
            raise Reply("payload is not JSON (or not JSON this worker reads)") from None
        if not isinstance(request, dict):
            raise Reply("payload must be a JSON object")
        return request

    async def _run(self, parts: list[str], account: str, request: dict[str, Any]) -> Any:
        action = request.get("action")
        if not isinstance(action, str):
            raise Reply("action must be a string")
        if account == OPERATOR:
            if len(parts) == 5 and parts[3] == "billing":
                return await self._operator(action, request)
            raise Reply(f"not a command topic: {cut('/'.join(parts), 120)}")
        _name(account, "account")
        if len(parts) == 6 and parts[3] == "campaigns":
            campaign = _name(parts[4], "campaign")
            if action not in service.CAMPAIGN_ACTIONS:
                raise Reply(f"unknown action '{cut(action)}' "
                            f"(one of {', '.join(service.CAMPAIGN_ACTIONS)})")  # fmt: skip
            _only(request, CAMPAIGN_FIELDS)
            return await service.campaign_command(self.ledger, campaign, action, account=account)
        if len(parts) == 5 and parts[3] == "billing":
            if action == "topup":  # money is the operator's act, never the customer's
                raise Reply(f"topup is refused on an account's topic: only the operator "
                            f"tops up (on {PREFIX}/{OPERATOR}/billing/cmd)")  # fmt: skip
            if action != "balance":
                raise Reply(f"unknown action '{cut(action)}' (one of balance)")
            _only(request, BALANCE_FIELDS)
            return await service.balance(self.ledger, account)
        raise Reply(f"not a command topic: {cut('/'.join(parts), 120)}")

    async def _operator(self, action: str, request: dict[str, Any]) -> Any:
        """The operator's billing commands: they name the account in the payload."""
        if action not in OPERATOR_FIELDS:
            raise Reply(f"unknown action '{cut(action)}' (one of topup, balance)")
        _only(request, OPERATOR_FIELDS[action])
        account = _name(request.get("account"), "account")
        if action == "balance":
            return await service.balance(self.ledger, account)
        counter, minutes = request.get("counter"), request.get("minutes")
        if not isinstance(counter, str):
            raise Reply("counter must be a string: telephony or speech")
        if counter not in service.COUNTERS:
            raise Reply(f"unknown counter '{cut(counter)}' (one of {', '.join(service.COUNTERS)})")
        if not isinstance(minutes, int) or isinstance(minutes, bool):
            raise Reply("minutes must be a whole number")  # floats, NaN, strings
        reference = request.get("reference")
        if reference is not None and (
            not isinstance(reference, str)
            or not 1 <= len(reference) <= MAX_REFERENCE
            or has_controls(reference)
        ):
            raise Reply(f"reference must be a string of 1-{MAX_REFERENCE} printable characters")
        result = await service.topup(self.ledger, account, counter, minutes, reference)
        if not result["replayed"]:
            self.events.emit("billing.topped_up", account=account, counter=counter,
                             balance_seconds=result["balance_seconds"])  # fmt: skip
        return result
