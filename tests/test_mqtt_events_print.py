"""`dialer events` prints text a customer wrote: printed raw, its escape sequences would
reach the operator's terminal. So every topic, key and value loses its control characters
(C0, DEL, C1) in the human and the --json output, Rich markup in a payload is printed as
text, and a payload the CLI cannot decode does not stop it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest
from mqttutil import SYSTEM_URL, client, ensure_system_broker

pytestmark = pytest.mark.mqtt

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\x85\t\r\n\x7f\x00[red]ALERT[/red] :smile:"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


async def dialer_events(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("dialer")), "events", *args,
        env=os.environ | {"DIALER_MQTT__URL": SYSTEM_URL},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return proc.returncode, out.decode()


async def test_control_characters_and_markup_never_reach_the_terminal(tmp_path: Path) -> None:
    ensure_system_broker()
    account = f"esc{uuid.uuid4().hex[:6]}"
    prefix = f"dialer/v1/{account}"
    event = {"v": 1, "type": f"call.ended{HOSTILE}", "at": "2026-11-27T10:00:00.123Z",
             "campaign": f"spring{HOSTILE}",
             f"key{HOSTILE}": [HOSTILE, {"deep": HOSTILE}]}  # fmt: skip
    retained = {
        f"{prefix}/calls/c1/events": json.dumps(event).encode(),
        # a payload that is not JSON (Mosquitto refuses control characters in topics:
        # markup then, printed as text)
        f"{prefix}/campaigns/[blink]c/events": f"not json {HOSTILE}".encode(),
        f"{prefix}/billing/events": b"[" * 50_000,  # too deep for json: printed as text
    }
    async with client(SYSTEM_URL) as c:
        for topic, payload in retained.items():
            await c.publish(topic, payload, qos=1, retain=True)
    try:
        _, human = await dialer_events("--account", account)
        _, as_json = await dialer_events("--account", account, "--json")
    finally:
        async with client(SYSTEM_URL) as c:
            for topic in retained:
                await c.publish(topic, b"", qos=1, retain=True)
    for output in (human, as_json):
        lines = output.splitlines()
        assert len(lines) == len(retained)  # one message, one line: no newline got through
        assert not any(CONTROL.search(line) for line in lines), [
            CONTROL.findall(line) for line in lines
        ]
    assert "[red]ALERT[/red] :smile:" in human  # markup and emoji codes: shown, not obeyed
    assert "call.ended[2J]0;owned31m" in human
    documents = [json.loads(line) for line in as_json.splitlines()]
    text = json.dumps(documents, ensure_ascii=False)
    assert "\\u001b" not in text and not CONTROL.search(text)  # not even escaped C0
    ended = next(d for d in documents if d["topic"].endswith("/calls/c1/events"))
    assert ended["payload"]["campaign"] == "spring[2J]0;owned31m[red]ALERT[/red] :smile:"
    assert f"{prefix}/campaigns/[blink]c/events: not json [2J]0;owned31m[red]" in human
