"""Real pjsua2 line processes, driven through the line pool, against real sipp on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from siputil import FINAL, Sipp, events_until, kinds, pool_of, sipps, trunk

from sip.events import (
    Accepted,
    Answered,
    Error,
    Failed,
    Hangup,
    InboundRejected,
    Interrupted,
    LineRestarted,
    PlayDone,
    Registration,
    Ringing,
)
from sip.pool import DialOutcomeUnknown, DialRefused, PoolClosed, PoolFull, UnknownCall
from sip.protocol import Hangup as HangupCommand

pytestmark = pytest.mark.sip


async def test_answered_call_timestamps_agree_with_the_wire(tmp_path: Path) -> None:
    """`answered` is taken when the 200 OK arrives: within 20 ms of sipp sending it."""
    with sipps(Sipp("uas_answer", tmp_path, calls=3, sets={"ring_ms": 300, "talk_ms": 800})) as (
        uas,
    ):
        async with pool_of(trunk("main", uas.uri), lines=1, measure_audio=True) as pool:
            for n in range(3):
                await pool.dial(f"c{n}", f"+1555000{n}", "main", ring_timeout=10)
            runs = [await events_until(pool, f"c{n}", FINAL) for n in range(3)]
        assert uas.wait(15) == 0, uas.error_text()
    oks = {
        str(m.header("To")).split("@")[0].split(":")[-1]: m.at
        for m in uas.sent("SIP/2.0 200", "INVITE")
    }
    for n, events in enumerate(runs):
        assert kinds(events) == [Accepted, Ringing, Answered, Hangup], events
        answered, hangup = events[2], events[3]
        assert isinstance(hangup, Hangup) and answered.at is not None
        assert abs(answered.at - oks[f"+1555000{n}"]) < 0.020
        assert answered.mono is not None and answered.mono > 0
        assert hangup.by == "remote" and hangup.status == 200
        assert hangup.rx_frames is not None and hangup.rx_frames > 20  # the tap heard the callee


async def test_hangup_before_the_answer_sends_cancel(tmp_path: Path) -> None:
    with sipps(Sipp("uas_noanswer", tmp_path, calls=2)) as (uas,):
        async with pool_of(trunk("main", uas.uri)) as pool:
            await pool.dial("c-hang", "+15550001", "main", ring_timeout=30)
            await events_until(pool, "c-hang", Ringing)
            await pool.hangup("c-hang", "campaign paused")
            hung = await events_until(pool, "c-hang", FINAL)
            await pool.dial("c-timeout", "+15550002", "main", ring_timeout=1)
            timed_out = await events_until(pool, "c-timeout", FINAL)
        # sipp's scenario completes only when CANCEL arrived and 487 was acknowledged
        assert uas.wait(15) == 0, uas.error_text()
    assert len(uas.received("CANCEL")) == 2
    hung_up, gave_up = hung[-1], timed_out[-1]
    assert isinstance(hung_up, Failed)
    assert (hung_up.by, hung_up.status, hung_up.timeout) == ("local", 487, False)
    assert isinstance(gave_up, Failed) and gave_up.timeout is True and gave_up.by == "local"


@pytest.mark.parametrize("status", [486, 603, 480, 404, 503])
async def test_callee_refusals_are_reported_with_their_status(tmp_path: Path, status: int) -> None:
    with sipps(Sipp(f"uas_reject_{status}", tmp_path)) as (uas,):
        async with pool_of(trunk("main", uas.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            events = await events_until(pool, "c1", FINAL)
        assert uas.wait(10) == 0, uas.error_text()
    assert kinds(events) == [Accepted, Failed]
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.status == status and failed.by == "remote"


@pytest.mark.parametrize("status", [603, 486])
async def test_inbound_invites_are_rejected_never_answered(tmp_path: Path, status: int) -> None:
    # no trunk here: the sipp caller's address must be allowed to reach the line at all
    async with pool_of(inbound_reject_status=status, allow_from=("127.0.0.1",)) as pool:
        port = pool.sip_ports[0]
        with sipps(Sipp(f"uac_inbound_{status}", tmp_path, remote=f"127.0.0.1:{port}")) as (uac,):
            assert uac.wait(15) == 0, uac.error_text()
            event = (await events_until(pool, None, InboundRejected, 5))[-1]
    assert isinstance(event, InboundRejected) and event.status == status
    assert "+15551234567" in event.from_
    assert not [m for m in uac.messages() if not m.sent and m.first_line.startswith("SIP/2.0 200")]


async def test_play_reaches_the_callee_and_reports_its_end(tmp_path: Path, tone_wav: Path) -> None:
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 0})) as (uas,):
        async with pool_of(trunk("main", uas.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            await pool.play("c1", str(tone_wav))
            done = await events_until(pool, "c1", (PlayDone, Error))
            await pool.play("c1", str(tmp_path / "missing.wav"))
            missing = await events_until(pool, "c1", Error)
            await pool.hangup("c1")
            end = await events_until(pool, "c1", FINAL)
        assert uas.wait(10) == 0, uas.error_text()
    played, error, ended = done[-1], missing[-1], end[-1]
    assert isinstance(played, PlayDone) and played.wav == str(tone_wav)
    assert isinstance(error, Error) and "cannot play" in error.message
    assert isinstance(ended, Hangup) and ended.by == "local"
    assert uas.received("BYE")


async def test_caller_id_headers_codecs_and_tcp(tmp_path: Path) -> None:
    with sipps(
        Sipp("uas_answer", tmp_path, transport="t1", sets={"ring_ms": 0, "talk_ms": 200})
    ) as (uas,):
        main = trunk(
            "main",
            f"sip:127.0.0.1:{uas.port};transport=tcp",
            caller_id="+15557654321",
            headers={"X-Trunk": "main"},
        )
        async with pool_of(main, codecs=("G722/16000", "PCMA/8000", "PCMU/8000")) as pool:
            await pool.dial("c1", "+15550001", "main", caller_id="+15550000999",
                            headers={"X-Campaign": "spring"})  # fmt: skip
            events = await events_until(pool, "c1", FINAL)
        assert uas.wait(10) == 0, uas.error_text()
    assert isinstance(events[-1], Hangup)
    invite = uas.received("INVITE")[0]
    assert "sip:+15550000999@" in (invite.header("From") or "")  # per-call caller ID wins
    assert invite.header("X-Campaign") == "spring" and invite.header("X-Trunk") == "main"
    assert "TCP" in (invite.header("Via") or "")
    assert "m=audio" in invite.text and " RTP/AVP 9 8 0" in invite.text  # configured order
    assert "c=IN IP4 127.0.0.1" in invite.text


async def test_digest_credentials_and_registration(tmp_path: Path) -> None:
    credentials = {"username": "trunkuser", "password": "s3cret"}
    with sipps(Sipp("uas_register", tmp_path), Sipp("uas_auth_answer", tmp_path)) as (
        registrar,
        carrier,
    ):
        registering = trunk(
            "reg", registrar.uri, register=True, register_expires=120, **credentials
        )
        authed = trunk("carrier", carrier.uri, **credentials)
        async with pool_of(registering, authed) as pool:
            registration = (await events_until(pool, None, Registration))[-1]
            refreshed = (await events_until(pool, None, Registration, 15))[-1]
            await pool.dial("c1", "+15550001", "carrier")
            await events_until(pool, "c1", Answered)
            await pool.hangup("c1")
            await events_until(pool, "c1", FINAL)
        assert registrar.wait(10) == 0, registrar.error_text()
        assert carrier.wait(10) == 0, carrier.error_text()
    assert isinstance(registration, Registration) and registration.ok is True
    assert registration.trunk == "reg" and registration.status == 200
    assert registration.expires == 8  # what the registrar granted, not what we asked
    assert isinstance(refreshed, Registration) and refreshed.ok is True
    assert refreshed.at is not None and registration.at is not None
    assert refreshed.at - registration.at < 8  # in time
    assert len(registrar.received("REGISTER")) >= 3  # challenged, accepted, refreshed


async def test_one_reader_times_out_reads_what_is_left_then_is_told_the_pool_closed() -> None:
    async with pool_of() as pool:
        with pytest.raises(TimeoutError):
            await pool.next_event(0.05)
        readers = [asyncio.create_task(pool.next_event()) for _ in range(2)]
        await asyncio.sleep(0.05)
        # the line answers an unknown call's hangup with an error, before it shuts down
        pool._send(pool._lines[0], HangupCommand(call_id="ghost"))
    first, second = await asyncio.gather(*readers, return_exceptions=True)
    assert isinstance(first, Error) and first.line == "line0" and "no such call" in first.message
    assert isinstance(second, PoolClosed)
    with pytest.raises(PoolClosed):
        await pool.next_event(1)


async def test_dial_refusals_are_clean(tmp_path: Path) -> None:
    with sipps(Sipp("uas_noanswer", tmp_path, calls=4)) as (uas,):
        async with pool_of(trunk("main", uas.uri), lines=1) as pool:
            with pytest.raises(DialRefused, match="unknown trunk 'nope'"):
                await pool.dial("x", "+15550001", "nope")
            for n in range(4):
                await pool.dial(f"c{n}", f"+1555000{n}", "main")
            with pytest.raises(PoolFull):
                await pool.dial("c5", "+15550005", "main")
            with pytest.raises(DialRefused, match="already up"):
                await pool.dial("c1", "+15550001", "main")
            with pytest.raises(UnknownCall):
                await pool.hangup("ghost")
            for n in range(4):
                await pool.hangup(f"c{n}")
            for n in range(4):
                await events_until(pool, f"c{n}", FINAL)
        assert uas.wait(10) == 0, uas.error_text()


async def test_a_full_line_refuses_and_the_pool_places_the_call_elsewhere(tmp_path: Path) -> None:
    with sipps(Sipp("uas_noanswer", tmp_path, calls=5)) as (uas,):
        async with pool_of(trunk("main", uas.uri), lines=2) as pool:
            line0, line1 = pool._lines
            line1.alive = False  # hide line1 while line0 fills up
            for n in range(4):
                assert await pool.dial(f"c{n}", f"+1555000{n}", "main") == "line0"
            line1.alive = True
            line0.free = 4  # a stale view: the pool believes line0 has room
            line1.free = 0
            line1.pending = -4  # ... and prefers it
            assert await pool.dial("c4", "+15550004", "main") == "line1"
            line1.pending = 0
            for n in range(5):
                await pool.hangup(f"c{n}")
                await events_until(pool, f"c{n}", FINAL)
        assert uas.wait(10) == 0


async def test_a_killed_line_is_replaced_and_its_calls_interrupted(tmp_path: Path) -> None:
    with sipps(Sipp("uas_answer", tmp_path, calls=3, sets={"ring_ms": 0, "talk_ms": 0})) as (uas,):
        async with pool_of(trunk("main", uas.uri), lines=2) as pool:
            placed = {f"c{n}": await pool.dial(f"c{n}", f"+1555000{n}", "main") for n in range(2)}
            for call_id in placed:
                await events_until(pool, call_id, Answered)
            victim = pool._lines[0]
            old_pid = victim.process.pid  # type: ignore[union-attr]
            os.kill(old_pid, signal.SIGKILL)
            lost = await events_until(pool, "c0", FINAL)
            assert isinstance(lost[-1], Interrupted) and lost[-1].line == "line0"
            await events_until(pool, None, LineRestarted)
            assert victim.process.pid != old_pid and victim.alive  # type: ignore[union-attr]
            assert await pool.dial("c2", "+15550002", "main") in ("line0", "line1")
            await events_until(pool, "c2", Answered)
        # closing the pool hung up the calls still up with BYE
    uas.stop()
    assert len(uas.received("BYE")) >= 2


async def test_closing_the_pool_hangs_up_every_call_and_leaves_no_process(tmp_path: Path) -> None:
    with sipps(
        Sipp("uas_answer", tmp_path, calls=2, sets={"ring_ms": 0, "talk_ms": 0}),
        Sipp("uas_noanswer", tmp_path, calls=2),
    ) as (answering, ringing):
        async with pool_of(trunk("up", answering.uri), trunk("ring", ringing.uri), lines=2) as pool:
            for n in range(2):
                await pool.dial(f"up{n}", f"+1555000{n}", "up")
                await pool.dial(f"ring{n}", f"+1555100{n}", "ring")
            for n in range(2):
                await events_until(pool, f"up{n}", Answered)
                await events_until(pool, f"ring{n}", Ringing)
            pids = [pid for pid in pool.pids() if pid]
        assert answering.wait(10) == 0, answering.error_text()  # BYE for the answered
        assert ringing.wait(10) == 0, ringing.error_text()  # CANCEL for the ringing
    await asyncio.sleep(0.1)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_outbound_proxy_receives_the_invite(tmp_path: Path) -> None:
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 200})) as (proxy,):
        via_proxy = trunk("carrier", "sip:10.255.255.1:5060", outbound_proxy=f"{proxy.uri};lr")
        async with pool_of(via_proxy) as pool:
            await pool.dial("c1", "+15550001", "carrier")
            events = await events_until(pool, "c1", FINAL)
        assert proxy.wait(10) == 0, proxy.error_text()
    assert isinstance(events[-1], Hangup)
    invite = proxy.received("INVITE")[0]
    assert invite.first_line.startswith("INVITE sip:+15550001@10.255.255.1:5060")
    assert f"127.0.0.1:{proxy.port}" in (invite.header("Route") or "")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "line.crt", tmp_path / "line.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_transport_when_a_certificate_is_configured(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    async with pool_of(tls_cert_file=str(cert), tls_key_file=str(key), lines=2) as pool:
        infos = [line.ready.result() for line in pool._lines if line.ready is not None]
    ports = {info.sip_port for info in infos}
    tls_ports = {info.tls_port for info in infos}
    assert all(info.transports == ["udp", "tcp", "tls"] for info in infos)
    assert len(tls_ports) == 2 and not tls_ports & ports  # never a neighbour's SIP port


async def test_a_line_that_stops_answering_is_killed_not_doubled(tmp_path: Path) -> None:
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 300})) as (uas,):
        async with pool_of(trunk("main", uas.uri), lines=2) as pool:
            frozen = pool._lines[0]
            os.kill(frozen.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            with pytest.raises(DialOutcomeUnknown, match="did not answer"):
                await pool.dial("c1", "+15550001", "main")  # line0 is preferred: equal room
            await events_until(pool, None, LineRestarted)
            assert await pool.dial("c2", "+15550002", "main") in ("line0", "line1")
            events = await events_until(pool, "c2", FINAL)
        uas.stop()
    assert isinstance(events[-1], Hangup)
    assert len(uas.received("INVITE")) == 1  # c1 never left the frozen line
