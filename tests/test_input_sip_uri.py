"""SIP URIs and credentials at the line's gate (sip.uri, TrunkConfig): no control
characters, no URI pjsua2 would refuse only when a line creates its account."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from siputil import rtp_base

from sip.protocol import LineConfig, Transfer, TrunkConfig
from sip.uri import check_sip_uri

GOOD = [
    "sip:carrier.example",
    "sips:carrier.example",
    "sip:127.0.0.1:5080;transport=tcp",
    "sip:acct@carrier.example:5061;transport=tls;lr",
    "sip:[2001:db8::1]:5060",
    "sip:+15550001@pbx.example",
    "sip:agent%20one@pbx",
]
BAD = [
    ("sip:", "no host"),
    ("sips:", "no host"),
    ("sip:@host", "user part of SIP URI is empty"),
    ("http://carrier", "sip: or sips:"),
    ("SIP URI", "sip: or sips:"),
    ("sip:host:0", "port must be 1-65535"),
    ("sip:host:70000", "port must be 1-65535"),
    ("sip:host:", "is not sip:"),
    ("sip:host\r\nX-Evil: 1", "control character"),
    ("sip:host\x00", "control character"),
    ("sip:ho st", "space"),
    ("sip:user:secret@host", "no password"),
    ("sip:host?Route=evil", "headers"),
    ("sip:[::zz]", "bad IPv6"),
    ("sip:-bad-.example", "bad host"),
    ("sip:host;a b", "space"),
    ("sip:host;<x>", "bad parameter"),
    ("sip:" + "h" * 300, "at most 255"),
    ("", "empty"),
]


@pytest.mark.parametrize("uri", GOOD)
def test_good_uris_pass(uri: str) -> None:
    assert check_sip_uri(uri) == uri
    TrunkConfig(name="t", uri=uri, outbound_proxy=uri)


@pytest.mark.parametrize(("uri", "message"), BAD)
def test_bad_uris_are_refused_with_a_short_message(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        check_sip_uri(uri)
    assert len(str(refused.value)) < 160 and "\r" not in str(refused.value)
    with pytest.raises(ValueError):
        TrunkConfig(name="t", uri=uri)
    with pytest.raises(ValueError):
        Transfer(call_id="c1", agent_uri=uri)


@pytest.mark.parametrize(
    "fields",
    [
        {"username": "alice\r\nX-Evil: 1"},
        {"username": "ali ce"},
        {"password": "pw\r\nX-Evil: 1"},
        {"password": "pw\x1b[2J"},
        {"realm": "r\n"},
        {"caller_id": "+1555\r\n"},
        {"outbound_proxy": "sip:proxy\r\n"},
    ],
)
def test_control_characters_in_trunk_fields_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        TrunkConfig(name="t", uri="sip:carrier.example", **fields)


@pytest.mark.sip
async def test_a_line_refuses_a_trunk_with_a_crlf_username() -> None:
    """Second gate: a configure that bypassed the CLI (raw JSON on the pipe) never reaches
    pjsua2, whose Authorization header would carry the injected line."""
    line = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip.line",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    config = LineConfig(sip_port=0, rtp_port=rtp_base()).model_dump()
    config["trunks"] = [
        {"name": "t", "uri": "sip:127.0.0.1:5999", "username": "alice\r\nX-Evil: 1",
         "password": "pw", "register": True}
    ]  # fmt: skip
    message = json.dumps({"v": 1, "cmd": "configure", "line": config}) + "\n"
    out, _ = await asyncio.wait_for(line.communicate(message.encode()), 30)
    first = json.loads(out.splitlines()[0])
    assert first["event"] == "error" and "username" in first["message"]
    assert "X-Evil" not in first["message"]
    assert line.returncode != 0
