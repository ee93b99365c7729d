"""Eight processes debiting one account at once: no lost update, no double charge.

Run on PostgreSQL (the one that matters: SQLAlchemy's SQLite dialect drops FOR UPDATE, so
a SQLite locking test would prove nothing about row locks) and on SQLite, where
BEGIN IMMEDIATE must serialise the writers.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from billing.ledger import Ledger
from billing.storage import Database
from billing.tariff import Counter

LOAD = Path(__file__).resolve().parent.parent / "scripts" / "ledger_load.py"
WRITERS = 8
CALLS = 12
INCREMENTS = 3


def run_writers(url: str, account: str) -> list[dict[str, int]]:
    start_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(LOAD),
                "--url",
                url,
                "--account",
                account,
                "--writer",
                str(i),
                "--calls",
                str(CALLS),
                "--increments",
                str(INCREMENTS),
                "--shared",
                "--start-at",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_eight_processes_debiting_one_account(backend: str, request: pytest.FixtureRequest) -> None:
    url = str(request.getfixturevalue("pg_url" if backend == "postgresql" else "sqlite_url"))

    async def prepare() -> None:
        async with Database(url) as database:
            ledger = Ledger(database)
            await ledger.create_account("acme")
            await ledger.buy_package("acme", Counter.TELEPHONY, 10)

    asyncio.run(prepare())
    results = run_writers(url, "acme")

    per_call = INCREMENTS * 15
    own_calls = WRITERS * CALLS
    shared_calls = CALLS
    package_rounds = len(range(0, 2 * CALLS, 10))  # every 10th call of own + shared
    expected_debits = (own_calls + shared_calls) * INCREMENTS * len(Counter)
    expected_packages = (WRITERS + 1) * package_rounds
    # Every shared key was applied exactly once, however the writers raced.
    assert sum(r["applied"] for r in results) == expected_debits
    assert sum(r["replayed"] for r in results) == (WRITERS - 1) * shared_calls * INCREMENTS * 2
    assert sum(r["packages"] for r in results) == expected_packages

    async def check() -> None:
        async with Database(url) as database:
            ledger = Ledger(database)
            balances = await ledger.balances("acme")
            calls = own_calls + shared_calls
            assert balances[Counter.TELEPHONY] == 600 - calls * per_call
            assert balances[Counter.SPEECH] == expected_packages * 60 - calls * per_call
            for line in await ledger.audit("acme"):
                assert line.consistent, line
            assert len(await ledger.entries("acme")) == 1 + expected_debits + expected_packages

    asyncio.run(check())
