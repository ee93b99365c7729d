"""Pipe protocol v1: encoding, strict decoding, and a line process fed garbage."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from siputil import rtp_base

from sip.engine import dial_uri, registrar_uri
from sip.protocol import (
    Configure,
    Dial,
    LineConfig,
    ProtocolError,
    TrunkConfig,
    decode_command,
    decode_event,
    encode,
)


def test_commands_round_trip() -> None:
    dial = Dial(call_id="c1", to="+15550001", trunk="main", ring_timeout=20,
                headers={"X-Campaign": "spring"})  # fmt: skip
    assert decode_command(encode(dial)) == dial
    configure = Configure(line=LineConfig(sip_port=0, rtp_port=30000))
    assert decode_command(encode(configure)) == configure


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"cmd": "dial"}', "unsupported protocol version None"),
        (b'{"v": 2, "cmd": "dial"}', "unsupported protocol version 2"),
        (b'{"v": 1, "cmd": "explode"}', "unknown command 'explode'"),
        (b'{"v": 1}', "unknown command None"),
        (b'{"v": 1, "cmd": "dial", "call_id": "c1", "trunk": "t"}', "bad 'dial' command: to"),
        (b'{"v": 1, "cmd": "dial", "call_id": "c1", "to": "1", "trunk": "t", "ring_timeout": -1}',
         "ring_timeout"),
        (b'{"v": 1, "cmd": "dial", "call_id": "c1", "to": "1", "trunk": "t", "listen": "hi"}',
         "bad 'dial' command: listen"),
        (b'{"v": 1, "cmd": "dial", "call_id": "c1", "to": "1", "trunk": "t", "listen": [""]}',
         "bad 'dial' command: listen.0"),
        (b'{"v": 1, "cmd": "transfer", "call_id": "c", "agent_uri": "sip:a@b", "mode": "fax"}',
         "mode"),
        (b'{"v": 1, "cmd": "hangup", "call_id": "c", "extra": 1}', "extra"),
        (b"{" + b" " * 70000 + b"}", "longer than"),
    ],
)  # fmt: skip
def test_bad_commands_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_command(line)


def test_events_are_checked_too() -> None:
    assert decode_event(b'{"v": 1, "event": "ringing", "call_id": "c"}')["event"] == "ringing"
    with pytest.raises(ProtocolError, match="unknown event 'party'"):
        decode_event(b'{"v": 1, "event": "party"}')


def test_trunk_uris() -> None:
    main = TrunkConfig(name="m", uri="sip:carrier.example:5080;transport=tcp")
    assert dial_uri(main, "+15550001") == "sip:+15550001@carrier.example:5080;transport=tcp"
    assert dial_uri(main, "sip:agent@pbx") == "sip:agent@pbx"
    with_user = TrunkConfig(name="u", uri="sips:acct@carrier.example")
    assert dial_uri(with_user, "100") == "sips:100@carrier.example"
    assert registrar_uri(with_user) == "sips:carrier.example"
    with pytest.raises(ValueError, match="sip: or sips: URI"):
        TrunkConfig(name="bad", uri="http://carrier")
    with pytest.raises(ValueError, match="at most"):
        LineConfig(sip_port=0, rtp_port=30000, trunks=[main] * 8)


@pytest.mark.sip
async def test_a_line_survives_garbage_and_exits_on_eof() -> None:
    line = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip.line",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert line.stdin is not None and line.stdout is not None

    async def next_event() -> dict[str, object]:
        raw = await asyncio.wait_for(line.stdout.readline(), 15)  # type: ignore[union-attr]
        return dict(json.loads(raw))

    line.stdin.write(encode(Configure(line=LineConfig(sip_port=0, rtp_port=rtp_base()))))
    assert (await next_event())["event"] == "ready"
    for garbage in (b"hello\n", b'{"v": 1, "cmd": "dial"}\n', b'{"v": 1, "cmd": "configure",'
                    b' "line": {"sip_port": 0, "rtp_port": 30000}}\n'):  # fmt: skip
        line.stdin.write(garbage)
        event = await next_event()
        assert event["event"] == "error" and event["message"]
    line.stdin.write(encode(Dial(call_id="c1", to="1", trunk="none")))
    refused = await next_event()
    assert refused["event"] == "refused" and "unknown trunk" in str(refused["reason"])
    line.stdin.write(b'{"v": 1, "cmd": "hangup", "call_id": "ghost"}\n')
    assert "no such call" in str((await next_event())["message"])
    line.stdin.close()  # the orchestrator is gone
    assert await asyncio.wait_for(line.wait(), 15) == 0


@pytest.mark.sip
async def test_a_line_without_configure_exits_with_an_error() -> None:
    line = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip.line",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(line.communicate(b'{"v": 1, "cmd": "shutdown"}\n'), 15)
    assert json.loads(out)["message"] == "the first command must be configure"
    assert line.returncode == 2


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "ok\r\nVia: evil"}, {"Bad Name": "x"}, {"X-A": "\ud800"}, {"X-A": "caf\u00e9"}],
)
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="bad"):
        Dial(call_id="c1", to="1", trunk="t", headers=headers)
    with pytest.raises(ValueError, match="bad"):
        TrunkConfig(name="t", uri="sip:h", headers=headers)
