"""Every field of an MQTT command is checked before anything is written (types,
whole and finite numbers, bounded lengths, no unknown fields), and the error quotes at
most a short cut of what was sent. Real Mosquitto, the worker's bridge, a real ledger."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from mqttutil import SYSTEM_URL, bridge, client, ensure_system_broker, make_account, request

from billing.ledger import Ledger
from billing.storage import Database
from dialer.mqtt import OPERATOR

pytestmark = pytest.mark.mqtt

LONG = "A" * 5000


async def test_every_field_is_checked_and_nothing_is_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    ensure_system_broker()
    acme = f"val{uuid.uuid4().hex[:6]}"
    topup = {"action": "topup", "account": acme, "counter": "speech", "minutes": 1}
    operator: list[tuple[dict[str, Any] | bytes, str]] = [
        ({"action": "topup", "counter": "speech", "minutes": 1}, "account must be a string"),
        ({**topup, "account": 5}, "account must be a string"),
        ({**topup, "account": LONG}, "unknown account 'AAAA"),
        ({**topup, "account": OPERATOR}, "unknown account '_operator'"),
        ({**topup, "account": "ghost"}, "unknown account 'ghost'"),
        ({**topup, "counter": None}, "counter must be a string"),
        ({**topup, "counter": LONG}, "unknown counter 'AAAA"),
        ({**topup, "minutes": 1.5}, "minutes must be a whole number"),
        ({**topup, "minutes": 2.0}, "minutes must be a whole number"),
        ({**topup, "minutes": "10"}, "minutes must be a whole number"),
        ({**topup, "minutes": True}, "minutes must be a whole number"),
        ({**topup, "minutes": 0}, "minutes must be a whole positive number"),
        ({**topup, "minutes": -5}, "minutes must be a whole positive number"),
        ({**topup, "minutes": 10_000_001}, "minutes must be at most 10000000"),
        ({**topup, "minutes": 10**30}, "minutes must be at most 10000000"),
        (json.dumps(topup).replace('"minutes": 1', '"minutes": NaN').encode(),
         "minutes must be a whole number"),
        (json.dumps(topup).replace('"minutes": 1', '"minutes": -Infinity').encode(),
         "minutes must be a whole number"),
        (json.dumps(topup).replace('"minutes": 1', '"minutes": ' + "9" * 5000).encode(),
         "not JSON"),  # more digits than Python's JSON reads
        ({**topup, "reference": 7}, "reference must be a string of 1-200 printable"),
        ({**topup, "reference": ""}, "reference must be a string of 1-200 printable"),
        ({**topup, "reference": "r" * 201}, "reference must be a string of 1-200 printable"),
        ({**topup, "reference": "inv\x1b[2J"}, "reference must be a string of 1-200 printable"),
        ({**topup, "minute": 5}, "unknown field 'minute'"),
        ({**topup, LONG: 1}, "unknown field 'AAAA"),
        ({"action": "balance", "account": acme, "counter": "speech"}, "unknown field 'counter'"),
        ({"action": LONG}, "unknown action 'AAAA"),
        ({"action": "start", "account": acme}, "unknown action 'start'"),
        ({"action": ["topup"]}, "action must be a string"),
    ]  # fmt: skip
    customer: list[tuple[str, dict[str, Any], str]] = [
        ("billing/cmd", {"action": "balance", "account": "other"}, "unknown field 'account'"),
        ("billing/cmd", {**topup}, "only the operator"),
        ("billing/cmd", {"action": "topup"}, "only the operator"),
        ("billing/cmd", {"action": f"x\x1b[2J\x9b{LONG}"}, "unknown action 'x\\x1b[2J\\x9b"),
        (f"campaigns/{acme}-c/cmd", {"action": "start", "force": True}, "unknown field 'force'"),
        (f"campaigns/{'c' * 3000}/cmd", {"action": "status"}, "unknown campaign 'cccc"),
        (f"campaigns/{acme}-c/cmd", {"action": LONG}, "unknown action 'AAAA"),
    ]  # fmt: skip
    async with Database(sqlite_url) as database:
        ledger = Ledger(database)
        await make_account(database, ledger, tmp_path, acme, 10)
        before = await ledger.balances(acme)
        async with bridge(database, SYSTEM_URL) as mqtt, client(SYSTEM_URL) as c:
            inbox = f"dialer/v1/{OPERATOR}/inbox/{acme}"
            for n, (body, message) in enumerate(operator):
                if isinstance(body, dict):
                    body = {**body, "request_id": f"o{n}"}
                reply = await request(c, f"dialer/v1/{OPERATOR}/billing/cmd", body,
                                      account=OPERATOR, response_topic=inbox)  # fmt: skip
                assert not reply["ok"] and message in reply["error"], (n, reply)
                assert len(reply["error"]) < 200, reply["error"][:80]  # a short cut, never all
            for n, (topic, body, message) in enumerate(customer):
                reply = await request(c, f"dialer/v1/{acme}/{topic}",
                                      {**body, "request_id": f"c{n}"}, account=acme)  # fmt: skip
                assert not reply["ok"] and message in reply["error"], (n, reply)
                assert len(reply["error"]) < 200, reply["error"][:80]
            # and the same fields, right, are served
            ok = await request(c, f"dialer/v1/{OPERATOR}/billing/cmd",
                               {**topup, "reference": "inv-1", "request_id": "ok"},
                               account=OPERATOR)  # fmt: skip
            assert ok["ok"] and ok["result"]["balance_seconds"] == 600 + 60
            emitted = mqtt.events.buffer.emitted
        after = await ledger.balances(acme)
    added = {counter.value: after[counter] - before[counter] for counter in after}
    assert added == {"telephony": 0, "speech": 60}  # the good top-up only
    assert emitted == 1  # one topped_up event: the good one
