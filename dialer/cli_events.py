"""CLI: `dialer events [--follow] [--account A] [--json]`: the MQTT event stream.

What it prints comes partly from customers (their commands, campaign and contact names),
so every topic, key and value loses its control characters (C0, DEL, C1: no escape
sequence, no `\\x9b` CSI, not even a tab or newline inside a field reaches the terminal)
and the human lines are Rich ``Text``, never markup: a payload's ``[red]`` or ``:smile:``
is printed as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import aiomqtt
import typer
from rich.console import Console
from rich.text import Text

from dialer.cli_common import emit_json, settings
from dialer.errors import DialerError
from dialer.events import PREFIX
from dialer.mqtt import client_for
from dialer.text import strip_controls

QUIET_SECONDS = 1.0  # without --follow: what is retained arrives at once


def events(
    follow: Annotated[bool, typer.Option("--follow", help="keep printing until Ctrl-C")] = False,
    account: Annotated[str | None, typer.Option("--account", help="one account only")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines on stdout")] = False,
) -> None:
    """Print the worker's events (and the retained statuses) from the MQTT broker."""
    cfg = settings()
    if not cfg.mqtt.url:
        raise DialerError("no MQTT broker configured: set [mqtt] url (or DIALER_MQTT__URL)")
    if (account is not None and any(c in account for c in "/+#")) or account == "":
        raise DialerError(f"bad account name {account!r}")
    out = Console(highlight=False, soft_wrap=True)  # one event, one line
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow
        asyncio.run(_follow(cfg, account, follow, as_json, out))


async def _follow(cfg: Any, account: str | None, follow: bool, as_json: bool,
                  out: Console) -> None:  # fmt: skip
    password = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
    client = client_for(cfg.mqtt.url, username=cfg.mqtt.username, password=password,
                        tls=cfg.mqtt.tls, ca_file=cfg.mqtt.ca_file,
                        max_packet=cfg.mqtt.max_packet_bytes)  # fmt: skip
    try:
        async with client:
            await client.subscribe(f"{PREFIX}/{account or '+'}/#", qos=1)  # workers/ too
            while True:
                try:
                    message = await asyncio.wait_for(
                        anext(client.messages), None if follow else QUIET_SECONDS
                    )
                except TimeoutError:
                    return
                _print(message, as_json, out)
    except aiomqtt.MqttError as exc:
        raise DialerError(f"MQTT broker {cfg.mqtt.url}: {exc}") from None


def clean(value: Any) -> Any:
    """``value`` (decoded JSON) with the control characters of every string removed."""
    if isinstance(value, str):
        return strip_controls(value)
    if isinstance(value, dict):
        return {clean(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _print(message: aiomqtt.Message, as_json: bool, out: Console) -> None:
    topic = clean(str(message.topic))
    raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
    try:
        body: Any = clean(json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, huge numbers
        body = clean(raw.decode(errors="replace"))
    if as_json:
        emit_json({"topic": topic, "retained": bool(message.retain), "payload": body})
        return
    line = Text()
    if isinstance(body, dict):
        kind = body.get("type", "?")
        at = str(body.get("at", ""))[11:23]
        rest = {k: v for k, v in body.items() if k not in ("v", "type", "at")}
        details = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                           for k, v in rest.items() if v is not None)  # fmt: skip
        mark = " (retained)" if message.retain else ""
        line.append(f"{at} ").append(str(kind), style="bold").append(f"{mark} {details}")
    else:
        line.append(f"{topic}: {body}")
    out.print(line)
    with contextlib.suppress(Exception):
        out.file.flush()
