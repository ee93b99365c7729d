"""CLI: `dialer events [--follow] [--account A] [--json]`: the MQTT event stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import aiomqtt
import typer
from rich.console import Console
from rich.markup import escape

from dialer.cli import app, emit_json, settings
from dialer.errors import DialerError
from dialer.events import PREFIX
from dialer.mqtt import client_for

QUIET_SECONDS = 1.0  # without --follow: what is retained arrives at once


@app.command("events")
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
                        tls=cfg.mqtt.tls, ca_file=cfg.mqtt.ca_file)  # fmt: skip
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


def _print(message: aiomqtt.Message, as_json: bool, out: Console) -> None:
    topic = str(message.topic)
    raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
    try:
        body: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = raw.decode(errors="replace")
    if as_json:
        emit_json({"topic": topic, "retained": bool(message.retain), "payload": body})
        return
    if isinstance(body, dict):
        kind = body.get("type", "?")
        at = str(body.get("at", ""))[11:23]
        rest = {k: v for k, v in body.items() if k not in ("v", "type", "at")}
        details = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                           for k, v in rest.items() if v is not None)  # fmt: skip
        mark = " (retained)" if message.retain else ""
        out.print(f"{at} [bold]{escape(kind)}[/]{mark} {escape(details)}")
    else:
        out.print(f"{escape(topic)}: {escape(str(body))}")
    with contextlib.suppress(Exception):
        out.file.flush()
