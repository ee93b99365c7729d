"""Helpers for the SIP integration tests: free ports, sipp runs and their traces, pools."""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sip.events import Failed, Hangup, Interrupted, LineEvent
from sip.pool import LinePool, PoolConfig
from sip.protocol import TrunkConfig

SCENARIOS = Path(__file__).resolve().parent.parent / "scripts" / "sipp"
# a fresh RTP range per pool or simulator; 500 ports apart: room for 5 lines of 100 each;
# from a random start, so two test runs on one host rarely reach for the same ports
_RTP_RANGES = list(range(20000, 60000, 500))
_first = random.randrange(len(_RTP_RANGES))
_next_rtp = itertools.cycle(_RTP_RANGES[_first:] + _RTP_RANGES[:_first])


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def rtp_base() -> int:
    return next(_next_rtp)


def _udp_bound(port: int, ip: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError:
            return True
    return False


@dataclass
class Message:
    at: float  # epoch seconds
    sent: bool
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def header(self, name: str) -> str | None:
        match = re.search(rf"^{re.escape(name)}:\s*(.*)$", self.text, re.M | re.I)
        return match.group(1).strip() if match else None


class Sipp:
    """One sipp process (UAS, or UAC when ``remote`` is given) with its message trace."""

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        port: int | None = None,
        calls: int = 1,
        sets: dict[str, Any] | None = None,
        remote: str | None = None,
        transport: str = "u1",
        timeout: float = 30,
        options: tuple[str, ...] = (),
        ip: str = "127.0.0.1",
    ) -> None:
        self.scenario = scenario
        self.ip = ip
        self.port = port or free_port()
        self.workdir = workdir
        self.trace = workdir / f"{scenario}-{self.port}-msg.log"
        self.errors = workdir / f"{scenario}-{self.port}-err.log"
        command = [
            "sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"),
            "-i", ip, "-p", str(self.port), "-mp", str(rtp_base()),
            "-m", str(calls), "-nostdin", "-t", transport,
            "-trace_msg", "-message_file", str(self.trace),
            "-trace_err", "-error_file", str(self.errors),
            "-timeout", f"{int(timeout)}s", "-timeout_error",
        ]  # fmt: skip
        for key, value in (sets or {}).items():
            command += ["-set", key, str(value)]
        command += options
        if remote:
            command.append(remote)
        self.process = subprocess.Popen(
            command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if remote is None and transport.startswith("u"):
            deadline = time.monotonic() + 5
            while not _udp_bound(self.port, ip) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(0.3)

    @property
    def uri(self) -> str:
        return f"sip:{self.ip}:{self.port}"

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def error_text(self) -> str:
        return self.errors.read_text(errors="replace") if self.errors.exists() else ""

    def messages(self) -> list[Message]:
        if not self.trace.exists():
            return []
        found: list[Message] = []
        blocks = re.split(
            r"^-{20,} (\S+ \S+)\n", self.trace.read_text(errors="replace"), flags=re.M
        )
        for stamp, body in zip(blocks[1::2], blocks[2::2], strict=True):
            head, _, text = body.partition("\n\n")
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
            found.append(Message(at, " sent" in head, text.strip("\n")))
        return found

    def sent(self, first_line_start: str, cseq: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages()
            if m.sent
            and m.first_line.startswith(first_line_start)
            and (cseq is None or (m.header("CSeq") or "").endswith(cseq))
        ]

    def received(self, method: str) -> list[Message]:
        return [m for m in self.messages() if not m.sent and m.first_line.startswith(method)]


@contextlib.contextmanager
def sipps(*runs: Sipp) -> Iterator[tuple[Sipp, ...]]:
    try:
        yield runs
    finally:
        for run in runs:
            run.stop()


def trunk(name: str, uri: str, **fields: Any) -> TrunkConfig:
    return TrunkConfig(name=name, uri=uri, **fields)


@contextlib.asynccontextmanager
async def pool_of(*trunks: TrunkConfig, lines: int = 1, **options: Any) -> AsyncIterator[LinePool]:
    config = PoolConfig(lines=lines, sip_port=0, rtp_port=rtp_base(), trunks=trunks, **options)
    async with LinePool(config) as pool:
        yield pool
    assert pool.bad_messages == 0, "a line sent a message that is not a valid event"


E = TypeVar("E")
_BACKLOG: dict[int, dict[str | None, list[LineEvent]]] = {}
#: the events that end a call, for events_until
FINAL = (Failed, Hangup, Interrupted)


async def events_until(
    pool: LinePool, call_id: str | None, last: type | tuple[type, ...], within: float = 20
) -> list[LineEvent]:
    """Events of one call (None: events of no call), up to and including the first that
    is an instance of ``last``. Other calls' events are kept for their own turn."""
    backlog = _BACKLOG.setdefault(id(pool), {})
    seen: list[LineEvent] = []
    queued = backlog.setdefault(call_id, [])
    while queued:
        event = queued.pop(0)
        seen.append(event)
        if isinstance(event, last):
            return seen
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{call_id}: no {last} within {within} s; saw {seen}")
        event = await pool.next_event(remaining)
        of = getattr(event, "call_id", None)
        if of != call_id:
            backlog.setdefault(of, []).append(event)
            continue
        seen.append(event)
        if isinstance(event, last):
            return seen


def kinds(events: list[LineEvent]) -> list[type]:
    return [type(e) for e in events]


def typed(event: LineEvent, kind: type[E]) -> E:
    """The event as the class it must be (a test failure names it otherwise)."""
    assert isinstance(event, kind), event
    return event


class SimProcess:
    """`dialer sim` as a subprocess, its JSON lines collected."""

    def __init__(self, plan: Path, port: int | None = None) -> None:
        import json
        import sys
        import threading

        self.port = port or free_port()
        exe = Path(sys.executable).with_name("dialer")
        self.process = subprocess.Popen(
            [str(exe), "sim", "--plan", str(plan), "--port", str(self.port),
             "--rtp-port", str(rtp_base())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                with self._changed:
                    self.events.append(json.loads(line))
                    self._changed.notify_all()

        threading.Thread(target=pump, daemon=True).start()
        self.wait_for(lambda e: e["event"] == "ready", 15)

    def wait_for(self, match: Any, within: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    raise TimeoutError(f"sim: no matching event; saw {self.events}")
                self._changed.wait(remaining)

    def stop(self) -> None:
        """SIGTERM; the simulator must shut down cleanly (exit 0, no pjlib abort)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        assert self.process.returncode == 0, f"dialer sim exited with {self.process.returncode}"


def mulaw_tone(hz: float = 1000.0, amplitude: int = 8000, samples: int = 160) -> bytes:
    """``samples`` of a sine at 8 kHz, G.711 mu-law (PCMU payload)."""
    import math

    def encode(sample: int) -> int:
        sign = 0x80 if sample < 0 else 0
        magnitude = min(abs(sample), 32635) + 0x84
        exponent = max(0, magnitude.bit_length() - 8)
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
        return ~(sign | (exponent << 4) | mantissa) & 0xFF

    return bytes(
        encode(int(amplitude * math.sin(2 * math.pi * hz * n / 8000))) for n in range(samples)
    )


MULAW_SILENCE = b"\xff" * 160


class RtpPeer:
    """A raw RTP endpoint on 127.0.0.1: sends PCMU (``burst`` packets every 20 ms) to
    ``target`` while ``sending`` is set, and records who sent it what."""

    def __init__(self, payload: bytes = MULAW_SILENCE, burst: int = 1, ssrc: int = 0) -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.payload = payload
        self.burst = burst
        self.ssrc = ssrc or (0x5EC0_0000 | self.port)
        self.target: tuple[str, int] | None = None
        self.sending = threading.Event()
        self.received: list[tuple[str, int]] = []  # source of each datagram, in order
        self.sent = 0
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(target=self._receive, daemon=True),
            threading.Thread(target=self._send, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                _, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.received.append(source)
                self._changed.notify_all()

    def _send(self) -> None:
        import struct

        seq, stamp = 1, 0
        while not self._closed.is_set():
            if self.sending.wait(0.05) and self.target is not None:
                for _ in range(self.burst):
                    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, stamp, self.ssrc)
                    with contextlib.suppress(OSError):
                        self.sock.sendto(header + self.payload, self.target)
                    self.sent += 1
                    seq, stamp = seq + 1, stamp + 160
                time.sleep(0.02)

    def wait_received(self, count: int, within: float = 15) -> tuple[str, int]:
        """Until ``count`` datagrams arrived in all; the source of the last one."""
        deadline = time.monotonic() + within
        with self._changed:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"RTP peer got {len(self.received)} of {count} packets")
                self._changed.wait(remaining)
            return self.received[-1]

    def close(self) -> None:
        self._closed.set()
        for thread in self._threads:
            thread.join(2)
        self.sock.close()
