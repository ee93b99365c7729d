"""Hostile SIP against real line processes, played with raw sockets (tests/rawsip.py) and
sipp: late-offer INVITEs, INVITEs with Replaces, strangers' requests, floods.

Who may do what (docs/security.md): only the trunks' addresses (and proxies, agents being
dialled, `allow_from`) reach a line at all; from them, an INVITE gets a rejection, an
OPTIONS its 200, SUBSCRIBE/MESSAGE nothing useful; nobody may take over our calls.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError
from rawsip import RawSip, raw_sip, status_of
from siputil import FINAL, Sipp, events_until, kinds, pool_of, sipps, trunk, typed
from sqlalchemy import select
from workerutil import callee_calls, calls_answered, check_books, dial_campaign, phones

from billing.storage import Database
from dialer import store
from dialer.config import SipConfig
from dialer.worker import Worker
from sip.events import (
    Accepted,
    AgentAnswered,
    AgentEnded,
    AgentFailed,
    AgentRinging,
    Answered,
    Hangup,
    InboundRejected,
    Ringing,
)
from sip.protocol import LineConfig

pytestmark = pytest.mark.sip

STRANGER = "127.0.0.2"  # another address on loopback: not a trunk's


def _dialog_of(uas: Sipp, phone: str) -> tuple[str, str, str]:
    """(Call-ID, our tag, the callee's tag) of the answered call to ``phone``."""
    invite = next(m for m in uas.received("INVITE") if phone in m.first_line)
    call_id = str(invite.header("Call-ID"))
    ok = next(m for m in uas.sent("SIP/2.0 200", "INVITE") if m.header("Call-ID") == call_id)
    ours = re.search(r"tag=([^;>\s]+)", str(invite.header("From")))
    theirs = re.search(r"tag=([^;>\s]+)", str(ok.header("To")))
    assert ours and theirs
    return call_id, ours.group(1), theirs.group(1)


async def test_late_offers_and_replaces_leave_the_calls_up_alone(
    sqlite_url: str, tmp_path: Path
) -> None:
    # one database: nothing here depends on which (the books are proven on both)
    """While two calls are up on one line, the trunk's own address sends INVITEs without
    SDP (a legal late offer: it used to abort the line process), with SDP, again and
    again, and INVITEs with Replaces naming each live call's dialog (pjsua's default
    answered 200 and hung up on our callee): every one is declined with 603, the line
    lives, both calls end when their callees hang up and are billed by the callees'
    clocks."""
    numbers = phones(2)
    statuses: list[int | None] = []

    async def attack(database: Database, worker: Worker) -> None:
        await calls_answered(worker, 2)
        await asyncio.sleep(0.5)  # sipp's trace holds both dialogs
        port = worker.pool.sip_ports[0]

        def send() -> None:
            with raw_sip(port) as peer:
                for offer in (False, True, False, False, True, False):
                    peer.invite(offer=offer)
                    statuses.append(peer.final_status(3))
                for phone in numbers:
                    call_id, ours, theirs = _dialog_of(uas, phone)
                    # both tag orders: the target checks the dialog from either side
                    for to_tag, from_tag in ((ours, theirs), (theirs, ours)):
                        replaces = f"{call_id};to-tag={to_tag};from-tag={from_tag}"
                        peer.invite(headers={"Replaces": replaces})
                        statuses.append(peer.final_status(3))

        await asyncio.to_thread(send)

    with sipps(Sipp("uas_answer", tmp_path, calls=2, sets={"ring_ms": 100, "talk_ms": 6000})) as (
        uas,
    ):
        outcome = await dial_campaign(
            sqlite_url, tmp_path, {"main": (uas.uri, numbers)}, max_concurrent=2, cps=10,
            during=attack,
        )  # fmt: skip
    assert len(statuses) == 10
    # 603 for each; a Replaces naming no dialog of ours (the wrong tag order) gets 481
    assert all(s in (603, 481) for s in statuses), statuses
    assert statuses[:6] == [603] * 6 and statuses[6:].count(603) >= 2, statuses
    assert outcome.worker.pool.line_deaths == 0
    check_books(outcome, callee_calls(uas))
    outbound = [c for c in outcome.calls if c.direction == "outbound"]
    assert [(c.disposition, c.hangup_by) for c in outbound] == [("answered", "remote")] * 2
    assert all(c.billed_telephony_seconds == 15 for c in outbound)
    assert len(uas.sent("BYE")) == 2  # the callees hung up
    assert not uas.received("BYE")  # we never hung up on a callee for a third party


async def test_strangers_get_no_answer_and_trunks_no_presence(tmp_path: Path) -> None:
    """A stranger's OPTIONS, INVITE, SUBSCRIBE and MESSAGE get no answer at all (they used
    to get 200, 603, 200 + NOTIFYs to any Contact, 200), nor a TCP connection; the trunk's
    address gets its OPTIONS answered and INVITEs declined, but no presence (SUBSCRIBE:
    403 over TCP, dropped over UDP) and no MESSAGE; calls go on as usual."""
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 500})) as (uas,):
        async with pool_of(trunk("main", uas.uri)) as pool:
            port = pool.sip_ports[0]
            heard: dict[tuple[str, str], list[int | None]] = {}

            def probe(source: str, method: str) -> None:
                with raw_sip(port, source) as peer:
                    if method == "INVITE":
                        peer.invite()
                    elif method == "SUBSCRIBE":
                        peer.request(method, headers={"Event": "presence", "Expires": "60"})
                    else:
                        peer.request(method, body="hi" if method == "MESSAGE" else "")
                    heard[source, method] = [status_of(r) for r in peer.responses(0.8)]

            await asyncio.gather(*(
                asyncio.to_thread(probe, source, method)
                for source in (STRANGER, "127.0.0.1")
                for method in ("OPTIONS", "INVITE", "SUBSCRIBE", "MESSAGE")
            ))  # fmt: skip
            with socket.socket() as tcp:
                tcp.bind((STRANGER, 0))
                tcp.settimeout(1.5)
                with pytest.raises(OSError):  # the SYN is dropped: timeout
                    tcp.connect(("127.0.0.1", port))
            subscribe_over_tcp = await asyncio.to_thread(_subscribe_over_tcp, port)
            await pool.dial("c1", "+15550001", "main")
            call = await events_until(pool, "c1", FINAL)
        assert uas.wait(10) == 0, uas.error_text()
    for method in ("OPTIONS", "INVITE", "SUBSCRIBE", "MESSAGE"):
        assert heard[STRANGER, method] == [], (method, heard)
    assert heard["127.0.0.1", "OPTIONS"] == [200]
    assert 603 in heard["127.0.0.1", "INVITE"] and 200 not in heard["127.0.0.1", "INVITE"]
    assert heard["127.0.0.1", "SUBSCRIBE"] == [] and heard["127.0.0.1", "MESSAGE"] == []
    assert subscribe_over_tcp == 403
    assert kinds(call) == [Accepted, Ringing, Answered, Hangup]


def _subscribe_over_tcp(port: int) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as tcp:
        local = tcp.getsockname()
        message = (
            f"SUBSCRIBE sip:dialer@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bKsub1;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:watcher@{local[0]}:{local[1]}>;tag=w1\r\n"
            f"To: <sip:dialer@127.0.0.1:{port}>\r\n"
            "Call-ID: subscribe-over-tcp\r\nCSeq: 1 SUBSCRIBE\r\n"
            f"Contact: <sip:watcher@{local[0]}:{local[1]};transport=tcp>\r\n"
            "Event: presence\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
        )
        tcp.sendall(message.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tcp.recv(4096)
            if not chunk:
                break
            data += chunk
            while data.startswith(b"SIP/2.0 1"):  # provisional: read on
                data = data.split(b"\r\n\r\n", 1)[1]
    return status_of(data.decode(errors="replace"))


async def test_allow_from_admits_a_configured_source(tmp_path: Path) -> None:
    """`allow_from` adds sources: the same stranger's INVITE is now declined, not ignored."""
    async with pool_of(allow_from=(f"{STRANGER}/32",)) as pool:
        port = pool.sip_ports[0]

        def invite() -> int | None:
            with raw_sip(port, STRANGER) as peer:
                peer.invite(offer=False)
                return peer.final_status(3)

        assert await asyncio.to_thread(invite) == 603
        event = (await events_until(pool, None, InboundRejected, 5))[-1]
    assert STRANGER in typed(event, InboundRejected).from_


async def test_an_agent_on_another_host_can_hang_up(tmp_path: Path) -> None:
    """An agent we dial is not a trunk: its address is admitted for the transfer, so its
    BYE reaches us (agent_ended; dropped, the caller would stay bridged to nobody)."""
    with sipps(
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 0}),
        Sipp("uas_answer", tmp_path, sets={"ring_ms": 200, "talk_ms": 800}, ip="127.0.0.3"),
    ) as (caller, agent):
        async with pool_of(trunk("main", caller.uri)) as pool:
            await pool.dial("c1", "+15550001", "main")
            await events_until(pool, "c1", Answered)
            await pool.transfer("c1", f"sip:agent@127.0.0.3:{agent.port}", "bridge")
            bridged = await events_until(pool, "c1", (AgentFailed, AgentEnded, Hangup))
            await pool.hangup("c1")
            await events_until(pool, "c1", FINAL)
        assert agent.wait(10) == 0, agent.error_text()
    assert kinds(bridged) == [AgentRinging, AgentAnswered, AgentEnded]


async def test_an_inbound_flood_is_not_a_flood_of_rows(sqlite_url: str, tmp_path: Path) -> None:
    """200 INVITEs from the trunk's address, with an ESC sequence in the From display
    name: each is declined, but the worker records at most the burst of its rate limit
    (plus what the rate refills meanwhile), and no control character reaches a CDR."""
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 1000})) as (uas,):

        async def flood(database: Database, worker: Worker) -> None:
            port = worker.pool.sip_ports[0]

            def send() -> None:
                peer = RawSip(port)
                try:
                    for _ in range(200):
                        peer.invite(offer=False, from_display="evil\x1b[2J\x1b]0;pwned\x07")
                    peer.responses(2.0)
                finally:
                    peer.close()

            started = asyncio.get_running_loop().time()
            await asyncio.to_thread(send)
            await asyncio.sleep(1.0)
            flood_seconds.append(asyncio.get_running_loop().time() - started)

        flood_seconds: list[float] = []
        outcome = await dial_campaign(
            sqlite_url, tmp_path, {"main": (uas.uri, phones(1))}, during=flood
        )
        async with Database(sqlite_url) as database:
            inbound = await database.run(
                lambda c: list(
                    c.execute(select(store.CALL).where(store.CALL.c.direction == "inbound"))
                ),
                write=False,
            )
    limit = outcome.worker.inbound
    assert 0 < len(inbound) <= limit.burst + flood_seconds[0] * limit.rate + 5
    assert outcome.worker.metrics.inbound_unrecorded > 100  # declined, counted, not written
    assert all("\x1b" not in c.phone and "\x07" not in c.phone for c in inbound)
    assert outcome.worker.pool.line_deaths == 0


@pytest.mark.parametrize("configured", [False, True])
async def test_what_our_invites_say_about_us(
    sqlite_url: str, tmp_path: Path, configured: bool
) -> None:
    """By default an INVITE names no campaign (X-Campaign told every carrier on the path
    who our customer is) and says User-Agent: campaign-dialer; both are configurable."""
    sip = SipConfig(user_agent="acme-pbx/2.1", campaign_header=True) if configured else None
    with sipps(Sipp("uas_answer", tmp_path, sets={"ring_ms": 0, "talk_ms": 300})) as (uas,):
        await dial_campaign(sqlite_url, tmp_path, {"main": (uas.uri, phones(1))}, sip=sip)
    invite = uas.received("INVITE")[0]
    assert invite.header("X-Campaign") == ("c-main" if configured else None)
    assert invite.header("User-Agent") == ("acme-pbx/2.1" if configured else "campaign-dialer")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("allow_from", ["bad host!"], "allow_from: not an IPv4 address, network or host"),
        ("allow_from", ["10.0.0.0/8\r\nX: 1"], "allow_from: not an IPv4 address"),
        ("user_agent", "dialer\r\nX-Injected: 1", "user_agent: printable ASCII only"),
        ("user_agent", "", "at least 1 character|user_agent: printable ASCII only"),
    ],
)
def test_sip_settings_are_checked_where_they_are_read(
    field: str, value: object, message: str
) -> None:
    """The worker's [sip] section and each line's configuration apply the same rules: a
    User-Agent with a line break would inject a header into every request."""
    with pytest.raises(ValidationError, match=message):
        SipConfig(**{field: value})
    with pytest.raises(ValidationError, match=message):
        LineConfig(sip_port=0, rtp_port=20000, **{field: value})
