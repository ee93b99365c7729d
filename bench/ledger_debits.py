"""Benchmark: ledger debits per second on SQLite and PostgreSQL, 1 and 8 writer processes.

Each writer is a separate process (scripts/ledger_load.py) debiting its own calls on ONE
shared account, so all of them contend for the same balance rows: the worst case.
Throughput = debits applied / (last writer finished - first writer started).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing.ledger import Ledger  # noqa: E402
from billing.storage import Database  # noqa: E402
from billing.tariff import Counter  # noqa: E402
from dialer import db  # noqa: E402

LOAD = ROOT / "scripts" / "ledger_load.py"
PG_ADMIN = "postgresql://postgres:postgres@127.0.0.1:5432/test"
INCREMENTS = 4  # per call and counter: 8 debits a call


@dataclass
class Result:
    backend: str
    writers: int
    debits: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.debits / self.seconds


async def prepare(url: str) -> None:
    async with Database(url, create=True) as database:
        await db.upgrade(database)
        ledger = Ledger(database)
        await ledger.create_account("bench")
        await ledger.buy_package("bench", Counter.TELEPHONY, 1000)


async def audit(url: str) -> bool:
    async with Database(url) as database:
        return all(line.consistent for line in await Ledger(database).audit("bench"))


def run_writers(url: str, writers: int, calls: int) -> tuple[int, float]:
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(LOAD),
                "--url",
                url,
                "--account",
                "bench",
                "--writer",
                str(i),
                "--calls",
                str(calls),
                "--increments",
                str(INCREMENTS),
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"writer failed with exit code {proc.returncode}")
        outputs.append(json.loads(out))
    debits = sum(o["applied"] for o in outputs)
    elapsed = max(o["finished"] for o in outputs) - min(o["started"] for o in outputs)
    return debits, elapsed


async def pg_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def bench(backend: str, writers: int, total_calls: int) -> Result:
    calls = max(1, total_calls // writers)
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/bench.db"
            asyncio.run(prepare(url))
            debits, seconds = run_writers(url, writers, calls)
            assert asyncio.run(audit(url)), "balance != sum of entries"
    else:
        name = f"dialer_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
        try:
            url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
            asyncio.run(prepare(url))
            debits, seconds = run_writers(url, writers, calls)
            assert asyncio.run(audit(url)), "balance != sum of entries"
        finally:
            asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return Result(backend, writers, debits, seconds)


def main(total_calls: int = 1200) -> list[Result]:
    results = []
    for backend in ("sqlite", "postgresql"):
        for writers in (1, 8):
            result = bench(backend, writers, total_calls)
            print(
                f"{backend:<10} writers={writers}  {result.debits} debits in "
                f"{result.seconds:.2f} s = {result.rate:,.0f} debits/s",
                flush=True,
            )
            results.append(result)
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1200)
