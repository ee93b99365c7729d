"""Run the benchmarks and write their figures, with the machine and date, into
docs/benchmarks.md (the section of each benchmark is replaced, the others kept).

    ./dev bench            # or: .venv/bin/python bench/run.py [--calls N]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import ledger_debits  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nWritten by `./dev bench` (bench/run.py). Compare figures within one run.\n"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pg = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-Atc",
                "show server_version",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pg = "unknown"
    return (
        f"{os.cpu_count()} cores ({cpu}), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, PostgreSQL {pg or 'unknown'}"
    )


def replace_section(title: str, body: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--calls", type=int, default=1200, help="calls per scenario (8 debits each)"
    )
    args = parser.parse_args()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = ledger_debits.main(args.calls)
    goals = {("sqlite", 1): 500, ("postgresql", 8): 1000}
    rows = []
    for r in results:
        goal = goals.get((r.backend, r.writers))
        verdict = (
            "" if goal is None else (f">= {goal}: met" if r.rate >= goal else f">= {goal}: MISSED")
        )
        cells = (r.backend, r.writers, r.debits, f"{r.seconds:.2f}", f"{r.rate:,.0f}", verdict)
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    body = f"""
Run {when} on {machine()}.

Each writer is its own process debiting its own calls on ONE shared account (all writers
contend for the same balance rows); every debit is a committed, idempotent ledger entry
plus its balance move. Throughput = debits / (last writer done - first writer started).
After each run the ledger is audited: balance = sum of entries.

| backend | writers | debits | seconds | debits/s | goal |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    replace_section("Ledger debits", body)
    print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
