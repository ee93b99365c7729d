"""Pipe protocol v1: encoding, strict decoding, and a line process fed garbage."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import pkgutil
import sys
from typing import Any

import pytest
from siputil import rtp_base

import sip
from sip import events
from sip.engine import dial_uri, registrar_uri
from sip.errors import SipError
from sip.protocol import (
    EVENTS,
    Configure,
    Dial,
    LineConfig,
    ProtocolError,
    TrunkConfig,
    decode_command,
    encode,
    event,
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


STAMP = {"at": 1_700_000_000.5, "mono": 1234.5, "free": 3}
#: every event as sip.engine, sip.listener and sip.line emit it, field for field
EMITTED: list[tuple[dict[str, Any], type[events.LineEvent]]] = [
    (event("ready", sip_port=5060, transports=["udp", "tcp"], **STAMP), events.Ready),
    (event("ready", sip_port=5060, transports=["udp", "tcp", "tls"], tls_port=5061, **STAMP),
     events.Ready),
    (event("accepted", call_id="c1", **STAMP), events.Accepted),
    (event("refused", call_id="c1", reason="line full", retry=True, **STAMP), events.Refused),
    (event("ringing", call_id="c1", status=180, **STAMP), events.Ringing),
    (event("answered", call_id="c1", **STAMP), events.Answered),
    (event("failed", call_id="c1", status=486, reason="Busy Here", by="remote", timeout=False,
           **STAMP), events.Failed),
    (event("hangup", call_id="c1", by="transfer", status=200, reason="Normal call clearing",
           cause="amd", rx_frames=250, rx_voiced=120, **STAMP), events.Hangup),
    (event("hangup", call_id="c1", by="local", status=0, reason="line shut down", **STAMP),
     events.Hangup),
    (event("play_done", call_id="c1", wav="/tmp/a.wav", **STAMP), events.PlayDone),
    (event("agent_ringing", call_id="c1", status=180, **STAMP), events.AgentRinging),
    (event("agent_answered", call_id="c1", mode="refer", **STAMP), events.AgentAnswered),
    (event("agent_failed", call_id="c1", status=408, reason="agent did not answer in time",
           **STAMP), events.AgentFailed),
    (event("agent_ended", call_id="c1", **STAMP), events.AgentEnded),
    # sip.listener: the analyzer's facts (sip.speech), stamped with the wall clock only
    (event("speech", call_id="c1", at=1.0, kind="voice_start", audio_s=0.3), events.Speech),
    (event("speech", call_id="c1", at=1.0, kind="voice_end", audio_s=2.1, duration=1.8),
     events.Speech),
    (event("speech", call_id="c1", at=1.0, kind="partial", text="hello", audio_s=1.2),
     events.Speech),
    (event("speech", call_id="c1", at=1.0, kind="final", text="hello there", audio_s=2.1,
           start_s=0.3), events.Speech),
    (event("speech", call_id="c1", at=1.0, kind="tone", tone="beep", freq=1000.0,
           duration=0.4, audio_s=5.0), events.Speech),
    (event("inbound_rejected", status=603, **{"from": "<sip:+1555@h>", "to": "<sip:d@h>"},
           **STAMP), events.InboundRejected),
    (event("inbound_rejected", status=603, call_id="c1", reason="INVITE with Replaces",
           **{"from": "", "to": ""}, **STAMP), events.InboundRejected),
    (event("registration", trunk="main", status=200, reason="OK", expires=300, ok=True,
           **STAMP), events.Registration),
    (event("error", message="the first command must be configure"), events.Error),
    (event("error", call_id="c1", message="no such call on this line", **STAMP), events.Error),
    (event("error", call_id="c1", security="rtp", message="RTP from a stranger", **STAMP),
     events.Error),
]  # fmt: skip


@pytest.mark.parametrize(("data", "kind"), EMITTED, ids=[d["event"] for d, _ in EMITTED])
def test_every_emitted_event_decodes_to_its_model(data: dict[str, Any], kind: type) -> None:
    decoded = events.decode(encode(data))
    assert type(decoded) is kind
    assert decoded.model_dump(by_alias=True, exclude_none=True) == data | {"v": 1}


def test_the_table_covers_every_event_a_line_sends() -> None:
    assert {data["event"] for data, _ in EMITTED} == EVENTS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"v": 1, "event": "party"}', "unknown event 'party'"),
        (b'{"v": 1}', "unknown event None"),
        (b'{"v": 2, "event": "accepted", "call_id": "c"}', "unsupported protocol version 2"),
        (b'{"v": 1, "event": "accepted"}', "bad 'accepted' event: call_id"),
        (b'{"v": 1, "event": "accepted", "call_id": ""}', "call_id"),
        (b'{"v": 1, "event": "accepted", "call_id": "c", "extra": 1}', "extra"),
        (b'{"v": 1, "event": "ringing", "call_id": "c", "status": "loud"}', "status"),
        (b'{"v": 1, "event": "hangup", "call_id": "c", "by": "martians"}', "by"),
        (b'{"v": 1, "event": "speech", "call_id": "c", "kind": "song"}', "kind"),
        (b'{"v": 1, "event": "ready", "transports": []}', "sip_port"),
        (b"not json", "not JSON"),
    ],
)  # fmt: skip
def test_bad_events_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        events.decode(line)


def test_every_sip_error_derives_from_one_root() -> None:
    found = []
    for info in pkgutil.iter_modules(sip.__path__):
        module = importlib.import_module(f"sip.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.append(cls)
    assert len(found) >= 10, found
    assert [c for c in found if not issubclass(c, SipError)] == []
    from sip.sockfilter import FilterError

    assert issubclass(FilterError, ValueError)  # address list parsers catch ValueError


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

    async def next_event() -> events.LineEvent:
        raw = await asyncio.wait_for(line.stdout.readline(), 15)  # type: ignore[union-attr]
        return events.decode(raw)

    line.stdin.write(encode(Configure(line=LineConfig(sip_port=0, rtp_port=rtp_base()))))
    assert isinstance(await next_event(), events.Ready)
    for garbage in (b"hello\n", b'{"v": 1, "cmd": "dial"}\n', b'{"v": 1, "cmd": "configure",'
                    b' "line": {"sip_port": 0, "rtp_port": 30000}}\n'):  # fmt: skip
        line.stdin.write(garbage)
        error = await next_event()
        assert isinstance(error, events.Error) and error.message
    line.stdin.write(encode(Dial(call_id="c1", to="1", trunk="none")))
    refused = await next_event()
    assert isinstance(refused, events.Refused) and "unknown trunk" in refused.reason
    line.stdin.write(b'{"v": 1, "cmd": "hangup", "call_id": "ghost"}\n')
    missing = await next_event()
    assert isinstance(missing, events.Error) and "no such call" in missing.message
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
