"""Holes a hostile-input review found, each through the real component: the CLI on SQLite
and PostgreSQL, a real pjsua2 line with raw SIP sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clitools import Run
from rawsip import status_of
from siputil import pool_of, trunk

pytestmark = [pytest.mark.sip, pytest.mark.usefixtures("isolated")]


def test_a_do_not_call_import_echoes_a_short_cut_of_a_bad_number(
    run: Run, database: str, tmp_path: Path
) -> None:
    """`dnc import` quoted a bad number whole (a 100k-character phone printed 100k
    characters); it now says what `campaign import` says, and imports the good rows."""
    run("account", "create", "acme")
    dnc = tmp_path / "dnc.csv"
    dnc.write_text("phone\n" + "5" * 100_000 + "\n\x1b[2J+1 555\n+14155550101\n")
    _, out, _ = run("dnc", "import", "acme", str(dnc), "--json")
    report = json.loads(out)
    assert report["imported"] == 1
    problems = report["problems"]
    assert len(problems) == 2 and all(len(p) < 120 for p in problems), problems
    assert "too long" in problems[0] and "5" * 100 not in problems[0]
    assert "\x1b" not in problems[1] and "\\x1b" in problems[1]


def _udp_answers(port: int, source: str, message: bytes) -> list[int | None]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.8)
        sock.sendto(
            message.replace(b"{port}", str(sock.getsockname()[1]).encode()), ("127.0.0.1", port)
        )
        found: list[int | None] = []
        with contextlib.suppress(TimeoutError):
            while True:
                found.append(status_of(sock.recv(65536).decode(errors="replace")))
        return found


def _request(method: str, port: int, prefix: str = "") -> bytes:
    body = "hi" if method == "MESSAGE" else ""
    return (
        f"{prefix}{method} sip:dialer@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1:{{port}}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:dialer@127.0.0.1:{port}>\r\nCall-ID: {secrets.token_hex(8)}\r\n"
        f"CSeq: 1 {method}\r\nContact: <sip:a@127.0.0.1:{{port}}>\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def test_no_message_hides_behind_leading_white_space() -> None:
    """MESSAGE is dropped from everyone over UDP; pjsip skips CR/LF and white space before
    the start line, so "\\r\\nMESSAGE" from the trunk's address slipped past the socket
    filter's method check and got 200 OK. Now nothing that starts with white space
    reaches the line; the trunk's plain OPTIONS still get their 200."""
    async with pool_of(trunk("main", "sip:127.0.0.1:5999")) as pool:
        port = pool.sip_ports[0]

        def probe() -> dict[str, list[int | None]]:
            prefixes = ("", "\r\n", "\n", " ", "\t", "\r\n\r\n\r\n", " \r\n", "\x0b")
            requests = {repr(p): _request("MESSAGE", port, p) for p in prefixes}
            requests["OPTIONS"] = _request("OPTIONS", port)
            with ThreadPoolExecutor(len(requests)) as pool_:  # each waits 0.8 s for answers
                answers = pool_.map(lambda m: _udp_answers(port, "127.0.0.1", m), requests.values())
                return dict(zip(requests, answers, strict=True))

        heard = await asyncio.to_thread(probe)
    assert heard.pop("OPTIONS") == [200]
    assert all(answers == [] for answers in heard.values()), heard
