"""Dead workers noticed in seconds: `dialer worker` (no configured id) SIGKILLed with
calls up. Its line processes go within a second; restarted 2 s later on the same SIP port
it settles its calls at once (its default id is stable) and dials on; or another worker
(another port, another id) settles them once the first has been silent for dead_after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from siputil import SimProcess, free_port, rtp_base
from workerutil import cli_campaign, simulator

pytestmark = pytest.mark.sip

DEAD_AFTER = 4.0
PHONES = [f"+1415555{8100 + n}" for n in range(8)]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Setup:
    def __init__(self, tmp_path: Path, sim: SimProcess) -> None:
        self.exe = str(Path(sys.executable).with_name("dialer"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
        self.env |= {"DIALER_DATABASE__URL": f"sqlite:///{tmp_path / 'w.db'}",
                     "DIALER_WORKER__DEAD_AFTER": str(DEAD_AFTER)}  # fmt: skip
        self.sim = sim
        cli_campaign(self.cli, sim, tmp_path, PHONES, "--max-concurrent", "3", "--cps", "10")

    def cli(self, *args: str) -> str:
        done = subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("campaign", "status", "spring", "--json"))  # type: ignore[no-any-return]

    def wait_for(self, condition: Callable[[], bool], within: float) -> float:
        start = time.monotonic()
        while not condition():
            assert time.monotonic() - start < within, self.status()
            time.sleep(0.2)
        return time.monotonic() - start

    @contextmanager
    def worker(self, sip_port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                [self.exe, "worker", "--lines", "1", "--sip-port", str(sip_port),
                 "--drain-seconds", "1"],
                env=self.env | {"DIALER_SIP__RTP_PORT_BASE": str(rtp_base())},
                stdout=out, stderr=out,
            )  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    def kill_with_calls_up(self, worker: subprocess.Popen[bytes]) -> float:
        """SIGKILL once 3 calls are up; returns how long its lines outlived it."""
        self.wait_for(lambda: self.status()["calls"]["answered"] >= 3, 30)
        lines = children(worker.pid)
        assert lines
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed = time.monotonic()
        while any(alive(pid) for pid in lines):
            assert time.monotonic() - killed < 3, "line processes outlived their worker"
            time.sleep(0.01)
        outlived = time.monotonic() - killed
        # they hung up first: the callees got their BYEs
        self.wait_for(lambda: sum(e["event"] == "ended" for e in self.sim.events) >= 3, 5)
        return outlived

    def check_settled(self) -> None:
        records = json.loads(self.cli("cdr", "export", "spring", "--format", "json"))
        interrupted = [r for r in records if r["disposition"] == "interrupted"]
        assert len(interrupted) == 3 and all(r["hangup_by"] == "recovery" for r in interrupted)
        assert all(r["billed_telephony_seconds"] >= 15 for r in interrupted)  # answered ones
        invites: dict[str, int] = {}
        for event in self.sim.events:
            if event["event"] == "incoming":
                invites[event["number"]] = invites.get(event["number"], 0) + 1
        assert max(invites.values()) == 1  # an answered contact is never dialled again
        # the ledger holds exactly what the CDRs say: nothing charged twice, nothing lost
        balance = json.loads(self.cli("billing", "balance", "acme", "--json"))
        billed = sum(r["billed_telephony_seconds"] for r in records)
        assert balance["counters"]["telephony"]["balance_seconds"] == 300 - billed
        assert all(r["ended_at"] for r in records)  # every call settled


def test_a_killed_worker_without_an_id_is_recovered_by_its_restart(tmp_path: Path) -> None:
    with simulator(tmp_path, "[defaults]\nring = 0.2\ntalk = 60\n") as sim:
        setup = Setup(tmp_path, sim)
        port = free_port()
        with setup.worker(port, tmp_path / "first.log") as first:
            outlived = setup.kill_with_calls_up(first)
        assert outlived < 1.0, outlived
        time.sleep(max(0.0, 2.0 - outlived))
        with setup.worker(port, tmp_path / "second.log") as second:
            # the restart settles the 3 calls at start and dials the next contacts
            took = setup.wait_for(lambda: setup.status()["calls"]["placed"] >= 6, 45)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        setup.check_settled()
    print(f"lines outlived the worker by {outlived:.3f} s; dialling again after {took:.1f} s")


def test_a_killed_worker_is_recovered_by_another_worker(tmp_path: Path) -> None:
    with simulator(tmp_path, "[defaults]\nring = 0.2\ntalk = 60\n") as sim:
        setup = Setup(tmp_path, sim)
        with setup.worker(free_port(), tmp_path / "first.log") as first:
            outlived = setup.kill_with_calls_up(first)
        assert outlived < 1.0, outlived
        with setup.worker(free_port(), tmp_path / "second.log") as second:
            # the first stays dead: the second settles its calls after dead_after
            took = setup.wait_for(lambda: setup.status()["calls"]["placed"] >= 6, 45)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        log = (tmp_path / "second.log").read_text()
        assert "worker dead: its calls settled" in log
        setup.check_settled()
    assert took >= DEAD_AFTER - 1
    print(f"lines outlived the worker by {outlived:.3f} s; dialling again after {took:.1f} s")


async def test_a_line_waits_for_its_sip_port_held_by_a_dying_line() -> None:
    """The lines of a worker killed just before still hold the port: the new line waits
    (bounded, one log line) instead of failing the worker's start."""
    import asyncio
    import socket

    from structlog.testing import capture_logs

    from sip.pool import LinePool, PoolConfig

    port = free_port()
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    loop.call_later(1.5, held.close)
    started = time.monotonic()
    with capture_logs() as logs:
        async with LinePool(PoolConfig(lines=1, sip_port=port, rtp_port=rtp_base())) as pool:
            assert pool.sip_ports == [port]
    assert time.monotonic() - started >= 1.5
    assert [e["event"] for e in logs].count("SIP port in use: waiting for it") == 1
