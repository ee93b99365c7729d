"""Benchmark: several `dialer worker` processes on one PostgreSQL database.

In one run, on fresh PostgreSQL databases and one sipp callee farm (answers at once,
hangs up after 2 s, traces every message):
  1. one worker with N lines dials C contacts;
  2. two workers with N lines each dial the same C contacts (a new campaign) together.
Reported: answered calls per second of each (first INVITE to last hangup, by the CDRs),
and the checks: billing exact (ledger debits = CDR billed seconds = each callee's
connected time in the sipp trace, rounded up to 15 s), every contact dialled exactly
once (INVITEs per number in the callee trace), how the calls split between the workers.

    .venv/bin/python bench/scale_out.py [LINES] [CONTACTS]
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter as Tally
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, select  # noqa: E402

from billing.ledger import Ledger  # noqa: E402
from billing.storage import Database  # noqa: E402
from billing.tariff import Counter  # noqa: E402
from dialer import db, store  # noqa: E402
from dialer.campaign_state import Action  # noqa: E402
from dialer.campaigns import (  # noqa: E402
    CampaignSpec,
    add_trunk,
    change_state,
    create_campaign,
    import_contacts,
)

ADMIN_DSN = os.environ.get(
    "DIALER_TEST_PG_DSN", "postgresql://postgres:postgres@127.0.0.1:5432/test"
)
UAS_PORT = 5698
METRICS = 9461
HOLD_MS = 2000
INCREMENT = 15


@dataclass
class Run:
    workers: int
    lines: int
    contacts: int
    answered: int
    seconds: float
    ledger_seconds: int
    cdr_seconds: int
    callee_seconds: int
    invites_per_number: Tally[int]
    by_worker: dict[str, int]
    mismatched: int

    @property
    def rate(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def exact(self) -> bool:
        return (
            self.ledger_seconds == self.cdr_seconds == self.callee_seconds and not self.mismatched
        )

    @property
    def duplicates(self) -> int:
        return sum(n for times, n in self.invites_per_number.items() if times > 1)


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def pg_url(name: str) -> str:
    return (
        ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name
    )


async def prepare(url: str, contacts: int, lines: int, folder: Path) -> None:
    database = Database(url)
    try:
        await db.upgrade(database)
        ledger = Ledger(database)
        await ledger.create_account("bench")
        for counter in Counter:
            await ledger.buy_package("bench", counter, 100_000)
        channels = lines * 4 * 2
        await add_trunk(database, name="sipp", account="bench", kind="platform",
                        uri=f"sip:127.0.0.1:{UAS_PORT}", channels=channels, cps=500)  # fmt: skip
        spec = CampaignSpec(name="bulk", account="bench", trunk="sipp", max_concurrent=channels,
                            cps=500, retries=0)  # fmt: skip
        await create_campaign(database, spec)
        csv = folder / "contacts.csv"
        csv.write_text("phone\n" + "\n".join(f"+1415{5550000 + n:07d}" for n in range(contacts)))
        await import_contacts(database, "bulk", csv)
    finally:
        await database.dispose()


def start_worker(
    url: str, name: str, lines: int, rtp: int, metrics: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env |= {"DIALER_DATABASE__URL": url, "DIALER_WORKER__ID": name,
            "DIALER_SIP__RTP_PORT_BASE": str(rtp), "DIALER_LOGGING__LEVEL": "warning",
            "DIALER_OPS__PORT": str(metrics)}  # fmt: skip
    exe = str(Path(sys.executable).with_name("dialer"))
    return subprocess.Popen(
        [exe, "worker", "--lines", str(lines), "--sip-port", "0", "--drain-seconds", "10"],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def callee_trace(trace: Path) -> dict[str, dict[str, float]]:
    """Per SIP Call-ID: the number dialled, INVITEs, when the callee answered and hung up."""
    calls: dict[str, dict[str, float]] = defaultdict(dict)
    blocks = re.split(r"^-{20,} (\S+ \S+)\n", trace.read_text(errors="replace"), flags=re.M)
    for stamp, body in zip(blocks[1::2], blocks[2::2], strict=True):
        head, _, message = body.partition("\n\n")
        first = message.strip("\n").split("\n", 1)[0].strip()
        found = re.search(r"^Call-ID:\s*(\S+)", message, re.M | re.I)
        if not found:
            continue
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
        sent = " sent" in head
        call = calls[found.group(1)]
        if first.startswith("INVITE") and not sent:
            call.setdefault("number", float(first.split("sip:+", 1)[1].split("@", 1)[0]))
            call["invites"] = call.get("invites", 0) + 1
        elif first.startswith("SIP/2.0 200") and sent and "answered" not in call:
            call["answered"] = at
        elif first.startswith("BYE") and sent:
            call.setdefault("bye", at)
    return calls


def placed_by(port: int) -> int:
    """calls placed, from the worker's own Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(r"^dialer_calls_placed_total (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else -1


async def campaign_run(
    url: str, workers: int, lines: int, contacts: int, folder: Path
) -> tuple[list[Any], int, dict[str, int]]:
    """Run the campaign to its end: (CDRs, ledger seconds debited, calls placed per worker)."""
    await prepare(url, contacts, lines, folder)
    database = Database(url)
    try:
        ledger = Ledger(database)
        procs = [start_worker(url, f"bench-{n}", lines, 21000 + 4000 * n, METRICS + n,
                              folder / f"worker{n}.log") for n in range(workers)]  # fmt: skip
        await asyncio.sleep(4)  # lines up
        await change_state(database, ledger.tariff, "bulk", Action.START)
        deadline = time.monotonic() + 60 + contacts  # a generous 1 call/s at worst
        while True:
            campaign = await database.run(lambda c: store.campaign_by_name(c, "bulk"), write=False)
            if campaign.state == "completed":
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for proc in procs:
                    proc.kill()
                raise RuntimeError(f"campaign not completed ({campaign.state}); see {folder}")
            await asyncio.sleep(0.5)
        by_worker = {f"bench-{n}": placed_by(METRICS + n) for n in range(workers)}
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait, 60)

        def rows(conn: Connection) -> list[Any]:
            return list(conn.execute(select(store.CALL)))

        calls = await database.run(rows, write=False)
        balances = await ledger.balances("bench")
    finally:
        await database.dispose()
    return calls, 100_000 * 60 - balances[Counter.TELEPHONY], by_worker


def measure(url: str, workers: int, lines: int, contacts: int, folder: Path, trace: Path) -> Run:
    offset = trace.stat().st_size if trace.exists() else 0
    calls, ledger_seconds, by_worker = asyncio.run(
        campaign_run(url, workers, lines, contacts, folder)
    )
    with trace.open("rb") as handle:
        handle.seek(offset)
        part = folder / f"trace-{workers}.log"
        part.write_bytes(handle.read())
    callees = callee_trace(part)
    invites: Tally[int] = Tally()
    callee_seconds = 0
    for c in callees.values():
        invites[int(c.get("number", 0))] += int(c.get("invites", 0))
        if "answered" in c and "bye" in c:
            callee_seconds += math.ceil((c["bye"] - c["answered"]) / INCREMENT) * INCREMENT
    first = min(c.invite_at for c in calls)
    last = max(c.ended_at for c in calls)
    return Run(
        workers, lines, contacts, sum(1 for c in calls if c.disposition == "answered"),
        (last - first).total_seconds(), ledger_seconds,
        sum(c.billed_telephony_seconds for c in calls), callee_seconds,
        Tally(invites.values()), by_worker,
        sum(1 for c in calls if c.billed_telephony_seconds != INCREMENT),
    )  # fmt: skip


def main(lines: int = 6, contacts: int = 2000) -> tuple[Run, Run]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trace = folder / "uas.log"
        uas = subprocess.Popen(
            ["sipp", "-sf", str(ROOT / "scripts" / "sipp" / "uas_answer.xml"), "-i", "127.0.0.1",
             "-p", str(UAS_PORT), "-mp", "6600", "-set", "ring_ms", "0", "-set", "talk_ms",
             str(HOLD_MS), "-nostdin", "-max_socket", "4000", "-trace_msg",
             "-message_file", str(trace)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
        )  # fmt: skip
        time.sleep(0.5)
        try:
            for workers in (1, 2):
                name = f"dialer_bench_{uuid.uuid4().hex[:8]}"
                asyncio.run(admin(f'CREATE DATABASE "{name}"'))
                try:
                    results.append(measure(pg_url(name), workers, lines, contacts, folder, trace))
                finally:
                    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            uas.terminate()
            uas.wait()
    one, two = results
    for run in results:
        print(json.dumps({"workers": run.workers, "lines": run.lines, "answered": run.answered,
                          "seconds": round(run.seconds, 1), "calls_per_s": round(run.rate, 1),
                          "ledger_s": run.ledger_seconds, "cdr_s": run.cdr_seconds,
                          "callee_s": run.callee_seconds, "duplicates": run.duplicates,
                          "invites_per_number": dict(run.invites_per_number),
                          "placed_by_worker": run.by_worker}))  # fmt: skip
    print(f"two workers: {two.rate / one.rate:.2f} x one worker")
    return one, two


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
