"""Run the benchmarks and write their figures, with the machine and date, into
docs/benchmarks.md (the section of each benchmark is replaced, the others kept).

    ./dev bench            # or: .venv/bin/python bench/run.py [--calls N]
"""

from __future__ import annotations

import argparse
import json
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

import amd_eval  # noqa: E402
import ledger_debits  # noqa: E402
import mqtt_events  # noqa: E402
import scale_out  # noqa: E402
import sip_pool  # noqa: E402
import worker as worker_bench  # noqa: E402

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


def ledger_section(calls: int, when: str) -> None:
    results = ledger_debits.main(calls)
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


def sip_section(lines: int, when: str) -> None:
    baseline, rate, held = sip_pool.main(lines)
    ratio = rate.rate / baseline.rate

    def row(phase: sip_pool.Phase, extra: str) -> str:
        cpu = sum(phase.cpu_percent) / max(1, len(phase.cpu_percent))
        rss = sum(phase.rss_mib) / max(1, len(phase.rss_mib))
        cells = (
            phase.name, phase.processes, f"{phase.rate:,.1f}", f"{phase.pct(0.5):.1f}",
            f"{phase.pct(0.99):.1f}", f"{cpu:.1f}%", f"{rss:.0f}", phase.failures, extra,
        )  # fmt: skip
        return "| " + " | ".join(str(c) for c in cells) + " |"

    verdict_rate = "met" if ratio >= 0.9 else "MISSED"
    verdict_held = "met" if held.concurrent_held >= 150 else "MISSED"
    body = f"""
Run {when} on {machine()}.

One `sipp -sn uas -rtp_echo` answers everything (RTP echoed back). Short calls: answered,
held 0.2 s, hung up, the next one placed at once, 4 at a time per process, 15 s. The
baseline is the same number of bare pjsua2 processes (bench/bare_pjsua2.py: makeCall,
hang up, no pool, no pipe, no asyncio); the pool is LinePool with the same number of line
processes, driven from one asyncio orchestrator. Then {lines * 4} long calls are placed
at 40/s on a fresh pool and held for 15 s. Setup = dial -> 200 OK received; CPU is % of
one core per process while calls flow; RSS per process.

| phase | processes | calls/s | setup p50 ms | setup p99 ms | CPU/process | RSS MiB | failures | |
|---|---|---|---|---|---|---|---|---|
{row(baseline, "")}
{row(rate, f"{ratio:.0%} of baseline (goal >= 90%: {verdict_rate})")}
{row(held, f"held {held.concurrent_held}, max {held.concurrent_max} (goal >= 150: {verdict_held})")}

Setup latency of the pool includes the orchestrator -> line pipe and the line's 10 ms
command poll; the `answered` time itself is taken in the SIP callback (within 20 ms of
the wire, tested).
"""
    replace_section("SIP line pool", body)


def worker_section(lines: int, when: str) -> None:
    baseline, run, over = worker_bench.main(lines, 1000)
    ratio = run.rate / baseline.rate
    verdict = "within" if over.overshoot <= over.bound else "OVER"
    worker_row = (
        f"| worker, 1,000 contacts ({run.answered} answered in {run.seconds:.1f} s) "
        f"| {run.rate:.1f} ({ratio:.0%}) | {run.concurrent_max} / {run.concurrent_mean:.1f} "
        f"| {run.lag_ms(0.5):.1f} ms / {run.lag_ms(0.99):.1f} ms |"
    )
    body = f"""
Run {when} on {machine()}.

The whole worker (claims with the balance gate, pacing, line pool, real-time billing on
SQLite, CDRs) on a 1,000-contact campaign; `scripts/sipp/uas_answer.xml` answers at once
and hangs up after {worker_bench.HOLD_MS} ms; {lines} line processes ({lines * 4} calls at
a time). Baseline: the line pool alone, same lines and call length, same run.

| | calls/s | concurrent max / mean | billing lag p50 / p99 |
|---|---|---|---|
| line pool alone (baseline) | {baseline.rate:.1f} | {lines * 4} / - | - |
{worker_row}

Balance overshoot (2 min of speech on a customer trunk, 200 contacts): {over.overshoot} s
charged after the exhausting debit; bound {over.bound} s = {over.bound // 15} calls in flight
at exhaustion x one 15 s increment (a {worker_bench.HOLD_MS} ms call is one increment):
{verdict} the bound. No INVITE leaves after the exhausting debit; the calls already
ringing may still answer and are billed.
"""
    replace_section("Campaign worker", body)


def amd_section(per_kind: int, when: str) -> None:
    corpus = Path("/tmp/dialer-amd-corpus")
    if not (corpus / "labels.json").exists() or (
        len(json.loads((corpus / "labels.json").read_text())) != 3 * per_kind
    ):
        amd_eval.generate_corpus(corpus, per_kind)
    result = amd_eval.evaluate(corpus)
    report = amd_eval.report(result)
    (ROOT / "docs" / "amd-eval.md").write_text(
        "# Answering-machine detection: evaluation report\n\n"
        f"Run {when} on {machine()} by `./dev bench --only amd`.\n\n{report}"
    )
    summary = report.split("\nDecided by:")[0]
    body = f"""
Run {when} on {machine()}. Full report with every miss: docs/amd-eval.md.

The default script's detector (`dialer amd classify` pipeline: voice activity, tone
detection, pocketsphinx on a bigram model of the script's phrases plus everyday answers,
fuzzy intent match) over a generated corpus. CPU is the analysis thread's core-seconds
per second of the callee's speech, and per second of a silent line.

{summary}"""
    replace_section("Answering-machine detection", body)


def mqtt_section(when: str) -> None:
    import statistics

    results = mqtt_events.main()
    rows = "\n".join(
        f"| {r.name} | {r.events:,} | {r.rate:,.0f} | "
        f"{statistics.median(r.latencies_ms):.1f} ms / {r.pct(0.99):.1f} ms |"
        for r in results
    )
    body = f"""
Run {when} on {machine()}.

Events through the worker's own MQTT bridge (`dialer/mqtt.py`: the bounded buffer,
QoS 1, one publish at a time in order) to the local Mosquitto, received by a subscriber
in the same process; latency = emitted -> received. The paced rate is a campaign with
{mqtt_events.CALLS_UP} calls up of {mqtt_events.CALL_SECONDS} s each
(~{mqtt_events.EVENTS_PER_CALL} events per call).

| run | events | events/s | latency p50 / p99 |
|---|---|---|---|
{rows}
"""
    replace_section("MQTT event stream", body)


def scale_section(when: str, lines: int = 10, contacts: int = 2000) -> None:
    one, two = scale_out.main(lines, contacts)

    def row(run: scale_out.Run) -> str:
        split = " / ".join(f"{n:,}" for n in run.by_worker.values())
        books = "yes" if run.exact else "NO"
        return (
            f"| {run.workers} x {run.lines} lines | {run.answered:,} in {run.seconds:.1f} s "
            f"| {run.rate:.1f} | {split} | {run.ledger_seconds:,} / {run.cdr_seconds:,} / "
            f"{run.callee_seconds:,} ({books}) | {run.duplicates} |"
        )

    body = f"""
Run {when} on {machine()}.

`dialer worker` processes sharing one PostgreSQL database (claims with FOR UPDATE SKIP
LOCKED leases, the trunk's channels and calls-per-second budgets kept in the database),
{contacts:,} contacts against one sipp callee farm (`uas_answer.xml`: answers at once, hangs
up after {scale_out.HOLD_MS} ms, every message traced). Same run: one worker, then two
workers on a fresh campaign. Rate = answered calls / (first INVITE to last hangup).
Billing: ledger debits = CDR billed seconds = each callee's connected time in its trace
rounded up to 15 s. Duplicates: numbers that received more than one INVITE.

| workers | answered | calls/s | placed per worker | ledger / CDR / callee s (exact) | duplicates |
|---|---|---|---|---|---|
{row(one)}
{row(two)}

Two workers: **{two.rate / one.rate:.2f} x** one worker's throughput on this 2-core host
(both workers, their {2 * lines} line processes, sipp and PostgreSQL share the two cores).
"""
    replace_section("Scale-out: workers sharing PostgreSQL", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1200, help="ledger: calls per scenario")
    parser.add_argument("--lines", type=int, default=40, help="sip: line processes")
    parser.add_argument(
        "--only",
        choices=["ledger", "sip", "worker", "amd", "mqtt", "scale"],
        help="run one benchmark",
    )
    parser.add_argument("--per-kind", type=int, default=36, help="amd: samples per kind")
    args = parser.parse_args()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.only in (None, "ledger"):
        ledger_section(args.calls, when)
    if args.only in (None, "sip"):
        sip_section(args.lines, when)
    if args.only in (None, "worker"):
        worker_section(10, when)
    if args.only in (None, "amd"):
        amd_section(args.per_kind, when)
    if args.only in (None, "mqtt"):
        mqtt_section(when)
    if args.only in (None, "scale"):
        scale_section(when)
    print(f"written to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
