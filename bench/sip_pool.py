"""Benchmark: the line pool against `sipp -sn uas -rtp_echo`, beside a bare pjsua2 baseline.

Phases, in one run, against one sipp:
1. baseline: N bare pjsua2 processes (bench/bare_pjsua2.py), 4 calls each, short calls;
2. pool rate: a LinePool of N lines, 4 calls per line kept going, the same short calls;
3. pool concurrency: N x 4 long calls placed at a steady pace and held; how many stay up.

Reports calls/s, setup latency (INVITE sent -> 200 OK received) p50/p99, CPU and RSS per
process. Goals: pool >= 90% of the baseline's calls/s; >= 150 concurrent calls on one host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sip.events import Answered, CallEnded, Failed, Hangup, Interrupted, LineEvent  # noqa: E402
from sip.pool import LinePool, PoolClosed, PoolConfig, PoolFull, UnknownCall  # noqa: E402
from sip.protocol import TrunkConfig  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SIPP_PORT = 5599
LOGS = Path("/tmp/dialer-bench")
LOGS.mkdir(exist_ok=True)


@dataclass
class Phase:
    name: str
    processes: int
    seconds: float
    completed: int
    latencies: list[float]
    cpu_percent: list[float] = field(default_factory=list)  # per process, % of one core
    rss_mib: list[float] = field(default_factory=list)
    concurrent_max: int = 0
    concurrent_held: int = 0
    failures: int = 0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_sipp() -> subprocess.Popen[bytes]:
    sipp = subprocess.Popen(
        ["sipp", "-sn", "uas", "-rtp_echo", "-i", "127.0.0.1", "-p", str(SIPP_PORT),
         "-mp", "6000", "-nostdin", "-max_socket", "2000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    return sipp


def baseline(lines: int, hold: float, duration: float) -> Phase:
    start_at = time.time() + 3.0 + lines * 0.05
    script = str(ROOT / "bench" / "bare_pjsua2.py")
    target = f"sip:bench@127.0.0.1:{SIPP_PORT}"
    procs = []
    for i in range(lines):
        args = [target, str(7000 + i), str(20000 + i * 100), str(hold), str(duration)]
        procs.append(
            subprocess.Popen(
                [sys.executable, script, *args, str(start_at)],
                stdout=subprocess.PIPE,
                stderr=open(LOGS / f"bare-{i}.err", "w"),  # noqa: SIM115
                text=True,
            )
        )
    time.sleep(max(0.0, start_at - time.time()))
    before = {p.pid: cpu_ticks(p.pid) for p in procs if p.poll() is None}
    time.sleep(duration * 0.8)
    usage = [
        (cpu_ticks(p.pid) - before[p.pid]) / TICKS / (duration * 0.8) * 100
        for p in procs
        if p.poll() is None
    ]
    memory = [rss_mib(p.pid) for p in procs if p.poll() is None]
    completed = 0
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0 or not out.strip():
            for other in procs:
                other.kill()
            log = LOGS / f"bare-{procs.index(proc)}.err"
            tail = [ln for ln in log.read_text().splitlines() if not ln[:2].isdigit()][-3:]
            raise SystemExit(f"baseline process failed ({proc.returncode}): {tail}")
        data = json.loads(out)
        completed += data["completed"]
        latencies += data["latencies"]
    return Phase("baseline: bare pjsua2", lines, duration, completed, latencies, usage, memory)


class Driver:
    """Routes pool events to the waiting call loops."""

    def __init__(self, pool: LinePool) -> None:
        self.pool = pool
        self.waiters: dict[str, tuple[tuple[type, ...], asyncio.Future[LineEvent]]] = {}
        self.up: set[str] = set()
        self.answered_at: dict[str, float] = {}
        self.seen: dict[str, list[LineEvent]] = {}
        self.failures = 0
        self.task = asyncio.create_task(self._route())

    async def _route(self) -> None:
        while True:
            try:
                event = await self.pool.next_event()
            except PoolClosed:
                return
            call_id = getattr(event, "call_id", None)
            if call_id is None:
                continue
            self.seen.setdefault(call_id, []).append(event)
            if isinstance(event, Answered):
                self.up.add(call_id)
                self.answered_at[call_id] = event.at or time.time()
            elif isinstance(event, CallEnded):
                self.up.discard(call_id)
                if not isinstance(event, Hangup) or event.by != "local":
                    self.failures += 1
            waiter = self.waiters.get(call_id)
            if waiter and isinstance(event, waiter[0]) and not waiter[1].done():
                waiter[1].set_result(event)

    async def wait(self, call_id: str, kinds: tuple[type, ...], within: float = 30) -> LineEvent:
        for event in self.seen.get(call_id, []):
            if isinstance(event, kinds):  # it came before we asked
                return event
        future: asyncio.Future[LineEvent] = asyncio.get_running_loop().create_future()
        self.waiters[call_id] = (kinds, future)
        try:
            async with asyncio.timeout(within):
                return await future
        finally:
            self.waiters.pop(call_id, None)


def _pool_config(lines: int) -> PoolConfig:
    return PoolConfig(
        lines=lines,
        sip_port=8000,
        rtp_port=24000,
        trunks=(TrunkConfig(name="bench", uri=f"sip:127.0.0.1:{SIPP_PORT}"),),
    )


async def pool_rate(lines: int, hold: float, duration: float) -> Phase:
    async with LinePool(_pool_config(lines)) as pool:
        driver = Driver(pool)
        latencies: list[float] = []
        completed = 0
        serial = iter(range(10**9))
        end = time.time() + duration

        async def loop() -> None:
            nonlocal completed
            while time.time() < end:
                call_id = f"r{next(serial)}"
                sent = time.time()
                try:
                    await pool.dial(call_id, "+15550000", "bench", ring_timeout=10)
                except PoolFull:
                    await asyncio.sleep(0.01)
                    continue
                event = await driver.wait(call_id, (Answered, Failed, Interrupted))
                if not isinstance(event, Answered) or event.at is None:
                    continue
                latencies.append(event.at - sent)
                await asyncio.sleep(hold)
                try:
                    await pool.hangup(call_id)
                except UnknownCall:  # it ended by itself: counted in failures
                    print("ended early:", driver.seen.get(call_id), file=sys.stderr)
                    continue
                await driver.wait(call_id, (Hangup, Failed, Interrupted))
                completed += 1

        pids = [pid for pid in pool.pids() if pid]
        before = {pid: cpu_ticks(pid) for pid in pids}
        started = time.time()
        await asyncio.gather(*(loop() for _ in range(lines * 4)))
        elapsed = time.time() - started
        usage = [(cpu_ticks(pid) - before[pid]) / TICKS / elapsed * 100 for pid in pids]
        memory = [rss_mib(pid) for pid in pids]
        driver.task.cancel()
    phase = Phase("pool: line processes", lines, duration, completed, latencies, usage, memory)
    phase.failures = driver.failures
    return phase


async def pool_concurrency(lines: int, hold: float, pace: float) -> Phase:
    target = lines * 4
    async with LinePool(_pool_config(lines)) as pool:
        driver = Driver(pool)
        sent_at: dict[str, float] = {}
        samples: list[int] = []
        pids = [pid for pid in pool.pids() if pid]

        async def sample() -> None:
            while True:
                samples.append(len(driver.up))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        for n in range(target):
            call_id = f"k{n}"
            sent_at[call_id] = time.time()
            with contextlib.suppress(PoolFull):
                await pool.dial(call_id, "+15550000", "bench", ring_timeout=20)
            await asyncio.sleep(1 / pace)
        placed_until = time.time()
        await asyncio.sleep(1)
        latencies = [driver.answered_at[c] - sent_at[c] for c in sent_at if c in driver.answered_at]
        before = {pid: cpu_ticks(pid) for pid in pids}
        hold_start = time.time()
        held: list[int] = []
        while time.time() - hold_start < hold:
            held.append(len(driver.up))
            await asyncio.sleep(0.5)
        held_for = time.time() - hold_start
        usage = [(cpu_ticks(pid) - before[pid]) / TICKS / held_for * 100 for pid in pids]
        memory = [rss_mib(pid) for pid in pids]
        sampler.cancel()
        up = len(driver.up)
        for call_id in list(driver.up):
            await pool.hangup(call_id)
        await asyncio.sleep(2)
        driver.task.cancel()
    placing = placed_until - min(sent_at.values())
    phase = Phase("pool: concurrent calls", lines, placing, up, latencies, usage, memory)
    phase.concurrent_max = max(samples) if samples else 0
    phase.concurrent_held = min(held) if held else 0
    phase.failures = driver.failures
    return phase


def main(lines: int = 40, hold: float = 0.2, duration: float = 15.0) -> list[Phase]:
    sipp = start_sipp()
    try:
        phases = [baseline(lines, hold, duration)]
        phases.append(asyncio.run(pool_rate(lines, hold, duration)))
        phases.append(asyncio.run(pool_concurrency(lines, hold=15.0, pace=40.0)))
    finally:
        sipp.terminate()
        sipp.wait()
    for phase in phases:
        print(
            f"{phase.name:<24} procs={phase.processes} calls/s={phase.rate:6.1f} "
            f"setup p50={phase.pct(0.5):.1f} ms p99={phase.pct(0.99):.1f} ms "
            f"cpu/proc={statistics.mean(phase.cpu_percent or [0]):.1f}% "
            f"rss/proc={statistics.mean(phase.rss_mib or [0]):.1f} MiB "
            f"concurrent max={phase.concurrent_max} held>={phase.concurrent_held} "
            f"failures={phase.failures}",
            flush=True,
        )
    return phases


if __name__ == "__main__":
    main(*(float(a) if "." in a else int(a) for a in sys.argv[1:]))  # type: ignore[arg-type]
