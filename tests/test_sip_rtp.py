"""RTP latching (issue 12): media is accepted only from the address the SDP negotiated.

A real pjsua2 line calls sipp; sipp's SDP answer names a raw UDP socket of the test as
the callee's media, and a second raw socket (the attacker, another 127.0.0.1 port, its own
SSRC) sprays a loud PCMU tone at the line's RTP port. Without protection pjmedia's
"symmetric RTP" switches the call's remote address to the attacker: the bot's audio goes
to the attacker and the attacker's audio reaches the tap (speech analysis, AMD).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from siputil import (
    FINAL,
    RtpPeer,
    Sipp,
    events_until,
    kinds,
    mulaw_tone,
    pool_of,
    sipps,
    trunk,
    typed,
)

from sip.events import Answered, Error, Hangup

pytestmark = pytest.mark.sip


async def _until(condition: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("callee_talks", "burst"),
    [
        (True, 20),  # callee sends 50 packets/s; attacker 1,000/s (10 in a row latch)
        (False, 1),  # a silent callee: the attacker's first packet latched
    ],
    ids=["callee-talking", "callee-silent"],
)
async def test_foreign_rtp_neither_diverts_nor_feeds_the_call(
    tmp_path: Path, callee_talks: bool, burst: int
) -> None:
    """Before the fix: 59 of the bot's packets went to the attacker, 62 voiced frames
    reached the tap, and a silent callee never got the bot's audio back."""
    callee = RtpPeer()
    attacker = RtpPeer(mulaw_tone(), burst=burst)
    uas = Sipp(
        "uas_answer_rtp_at", tmp_path, sets={"ring_ms": 0, "talk_ms": 0, "rtp_port": callee.port}
    )
    try:
        with sipps(uas):
            async with pool_of(trunk("main", uas.uri), lines=1, measure_audio=True) as pool:
                await pool.dial("c-rtp", "+15550100", "main", ring_timeout=10)
                await events_until(pool, "c-rtp", Answered)
                # the bot's RTP reaches the callee
                line_rtp = await asyncio.to_thread(callee.wait_received, 10)
                callee.target = line_rtp
                if callee_talks:
                    callee.sending.set()
                attacker.target = line_rtp
                attacker.sending.set()
                await _until(lambda: attacker.sent >= (1000 if callee_talks else 75))
                attacker.sending.clear()
                # the callee keeps getting the bot's audio after the attack
                await asyncio.to_thread(callee.wait_received, len(callee.received) + 25)
                await pool.hangup("c-rtp", "done")
                events = await events_until(pool, "c-rtp", FINAL)
        assert uas.wait(15) == 0, uas.error_text()
    finally:
        callee.close()
        attacker.close()
    # the kernel dropped the stranger's datagrams: pjmedia never saw them, nothing to say
    assert kinds(events) == [Hangup], events
    hangup = typed(events[-1], Hangup)
    assert hangup.status == 200
    assert attacker.received == [], "the bot's audio went to the attacker"
    assert hangup.rx_voiced == 0, "the attacker's audio reached the tap"
    assert hangup.rx_frames is not None and hangup.rx_frames > 50


async def test_an_unpinned_call_stops_listening_at_the_first_stranger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback when a call's sockets cannot be filtered (IPv6 media, a socket pjmedia
    re-created): the line notices RTP from a stranger within a turn, says so once, and the
    stranger's audio stops reaching the tap. Here the line process is made unable to pin."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sip.rtpguard as guard\n"
        "guard.close_ports = lambda ports: False\n"
        "guard.pin = lambda *args: False\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    callee = RtpPeer()
    attacker = RtpPeer(mulaw_tone(), burst=20)
    uas = Sipp(
        "uas_answer_rtp_at", tmp_path, sets={"ring_ms": 0, "talk_ms": 0, "rtp_port": callee.port}
    )
    try:
        with sipps(uas):
            async with pool_of(trunk("main", uas.uri), lines=1, measure_audio=True) as pool:
                await pool.dial("c-watch", "+15550101", "main", ring_timeout=10)
                seen = await events_until(pool, "c-watch", Answered)
                line_rtp = await asyncio.to_thread(callee.wait_received, 10)
                callee.target = attacker.target = line_rtp
                callee.sending.set()
                attacker.sending.set()
                seen += await events_until(pool, "c-watch", Error)
                while (error := typed(seen[-1], Error)).security != "rtp" or (
                    "RTP from" not in error.message
                ):
                    seen += await events_until(pool, "c-watch", Error)
                after_event = attacker.sent
                await _until(lambda: attacker.sent >= after_event + 2000)  # 100 tone frames
                attacker.sending.clear()
                await pool.hangup("c-watch", "done")
                seen += await events_until(pool, "c-watch", FINAL)
        assert uas.wait(15) == 0, uas.error_text()
    finally:
        callee.close()
        attacker.close()
    warnings = [e for e in seen if isinstance(e, Error)]
    assert [w.security for w in warnings] == ["rtp", "rtp"], warnings  # cannot pin; stranger
    assert f"RTP from 127.0.0.1:{attacker.port} on the callee's leg" in warnings[1].message
    hangup = typed(seen[-1], Hangup)
    assert hangup.status == 200
    # the 100 tone frames sent after the warning never reached the tap (without the gate
    # they all do): what did, if anything, came in the turn before the line noticed
    assert hangup.rx_voiced is not None and hangup.rx_voiced < 50, hangup
