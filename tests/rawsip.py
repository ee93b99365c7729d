"""A raw-socket SIP peer for the hostile-network tests: it says what an attacker would."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator

SDP = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 {ip}\r\n"
    "s=-\r\n"
    "c=IN IP4 {ip}\r\n"
    "t=0 0\r\n"
    "m=audio {rtp} RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


class RawSip:
    """One UDP socket bound to ``source``; requests built by hand, responses read back."""

    def __init__(self, target_port: int, source: str = "127.0.0.1", target: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source, 0))
        self.source = source
        self.port = int(self.sock.getsockname()[1])
        self.target = (target, target_port)

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        *,
        user: str = "dialer",
        body: str = "",
        headers: dict[str, str] | None = None,
        call_id: str | None = None,
        from_tag: str | None = None,
        to_tag: str | None = None,
        cseq: int = 1,
        from_display: str = "",
    ) -> str:
        """Send one request; returns its Call-ID."""
        call_id = call_id or secrets.token_hex(8)
        from_tag = from_tag or secrets.token_hex(4)
        host, port = self.target
        lines = [
            f"{method} sip:{user}@{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK{secrets.token_hex(8)}"
            ";rport",
            "Max-Forwards: 70",
            f'From: "{from_display}" <sip:attacker@{self.source}:{self.port}>;tag={from_tag}'
            if from_display
            else f"From: <sip:attacker@{self.source}:{self.port}>;tag={from_tag}",
            f"To: <sip:{user}@{host}:{port}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:attacker@{self.source}:{self.port}>",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines.append(
                "Content-Type: application/sdp"
                if method == "INVITE"
                else "Content-Type: text/plain"
            )
        lines.append(f"Content-Length: {len(body.encode())}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.target)
        return call_id

    def invite(self, *, offer: bool = True, **fields: object) -> str:
        body = SDP.format(ip=self.source, rtp=self.port + 2) if offer else ""
        return self.request("INVITE", body=body, **fields)  # type: ignore[arg-type]

    def responses(self, within: float = 1.0) -> list[str]:
        """Every datagram received within ``within`` seconds."""
        found: list[str] = []
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            found.append(data.decode(errors="replace"))
        return found

    def final_status(self, within: float = 3.0) -> int | None:
        """The first final (>= 200) status received within ``within`` seconds."""
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            for text in self.responses(min(remaining, 0.2)):
                if text.startswith("SIP/2.0 "):
                    status = int(text.split(" ", 2)[1])
                    if status >= 200:
                        return status
        return None


@contextlib.contextmanager
def raw_sip(target_port: int, source: str = "127.0.0.1") -> Iterator[RawSip]:
    peer = RawSip(target_port, source)
    try:
        yield peer
    finally:
        peer.close()


def status_of(text: str) -> int | None:
    return int(text.split(" ", 2)[1]) if text.startswith("SIP/2.0 ") else None
