"""Benchmark: the whole worker on a 1,000-contact campaign against sipp callees.

Phase 1, throughput: 1,000 contacts, calls answered at once and hung up by the callee
after 2 s (scripts/sipp/uas_answer.xml), plenty of balance. Calls/s, concurrent calls,
billing lag (answered event -> first debit committed) p50/p99, next to the line pool
alone with the same lines and call length (the baseline).
Phase 2, overshoot: 2 minutes of speech on a customer trunk, 200 contacts: how many
seconds are charged after the exhausting debit, against the bound (calls in flight at
exhaustion x one increment each: a 2 s call is one increment).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sip_pool  # noqa: E402

from billing.ledger import Ledger  # noqa: E402
from billing.storage import Database  # noqa: E402
from billing.tariff import Counter  # noqa: E402
from dialer import db  # noqa: E402
from dialer.campaign_state import Action  # noqa: E402
from dialer.campaigns import (  # noqa: E402
    CampaignSpec,
    add_trunk,
    campaign_status,
    change_state,
    create_campaign,
    import_contacts,
)
from dialer.runtime import running_worker  # noqa: E402

UAS_PORT = 5699
HOLD_MS = 2000


@dataclass
class Result:
    contacts: int
    seconds: float
    answered: int
    concurrent_max: int
    concurrent_mean: float
    lag: list[float]
    overshoot: int = 0
    bound: int = 0

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    def lag_ms(self, q: float) -> float:
        ordered = sorted(self.lag)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0


async def run_campaign(folder: Path, lines: int, contacts: int, kind: str,
                       speech_minutes: int) -> Result:  # fmt: skip
    database = Database(f"sqlite:///{folder / f'{kind}.db'}", create=True)
    await db.upgrade(database)
    ledger = Ledger(database)
    await ledger.create_account("bench")
    await ledger.buy_package("bench", Counter.TELEPHONY, 100_000)
    await ledger.buy_package("bench", Counter.SPEECH, speech_minutes)
    await add_trunk(database, name="sipp", account="bench", kind=kind,
                    uri=f"sip:127.0.0.1:{UAS_PORT}", channels=lines * 4, cps=200)  # fmt: skip
    spec = CampaignSpec(name="bulk", account="bench", trunk="sipp", max_concurrent=lines * 4,
                        cps=200, retries=0)  # fmt: skip
    await create_campaign(database, spec)
    csv = folder / f"{kind}.csv"
    csv.write_text("phone\n" + "\n".join(f"+1415{5550000 + n:07d}"[:12] for n in range(contacts)))
    await import_contacts(database, "bulk", csv)
    await change_state(database, ledger.tariff, "bulk", Action.START)
    samples: list[int] = []
    started = time.monotonic()
    async with running_worker(database, ledger, lines=lines, sip_port=9000, rtp_port=26000,
                              assets=folder, drain_seconds=10) as worker:  # fmt: skip
        while True:
            samples.append(len(worker.calls))
            status = await campaign_status(database, "bulk")
            if status["state"] != "running" and not worker.calls:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
    entries = await ledger.entries("bench")
    status = await campaign_status(database, "bulk")
    await database.dispose()
    running, overshoot, exhausted = 0, 0, False
    for entry in entries:
        running += entry.seconds if entry.counter == "speech" else 0
        if exhausted and entry.kind == "debit" and entry.counter == "speech":
            overshoot -= entry.seconds
        if entry.counter == "speech" and running <= 0 and entry.kind == "debit":
            exhausted = True
    up = worker.metrics.exhausted_with_calls_up[0] if worker.metrics.exhausted_with_calls_up else 0
    return Result(contacts, elapsed, status["calls"]["answered"], max(samples),
                  statistics.mean(samples), list(worker.metrics.billing_lag), overshoot,
                  up * 15)  # fmt: skip


def main(lines: int = 10, contacts: int = 1000) -> tuple[sip_pool.Phase, Result, Result]:
    sipp = sip_pool.start_sipp()
    try:
        baseline = asyncio.run(sip_pool.pool_rate(lines, HOLD_MS / 1000, 20.0))
    finally:
        sipp.terminate()
        sipp.wait()
    uas = subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "scripts" / "sipp" / "uas_answer.xml"), "-i", "127.0.0.1",
         "-p", str(UAS_PORT), "-mp", "6500", "-set", "ring_ms", "0", "-set", "talk_ms",
         str(HOLD_MS), "-nostdin", "-max_socket", "2000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            throughput = asyncio.run(run_campaign(Path(tmp), lines, contacts, "platform", 100_000))
            overshoot = asyncio.run(run_campaign(Path(tmp), lines, 200, "customer", 2))
    finally:
        uas.terminate()
        uas.wait()
    print(f"pool baseline: {baseline.rate:.1f} calls/s ({lines} lines, {HOLD_MS} ms calls)")
    print(f"worker: {throughput.answered}/{throughput.contacts} answered in "
          f"{throughput.seconds:.1f} s = {throughput.rate:.1f} calls/s; concurrent max "
          f"{throughput.concurrent_max}, mean {throughput.concurrent_mean:.1f}; billing lag "
          f"p50 {throughput.lag_ms(0.5):.1f} ms p99 {throughput.lag_ms(0.99):.1f} ms")  # fmt: skip
    print(f"overshoot: {overshoot.overshoot} s after the exhausting debit, bound "
          f"{overshoot.bound} s ({overshoot.bound // 15} calls up x 15 s)")  # fmt: skip
    return baseline, throughput, overshoot


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
