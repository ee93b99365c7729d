"""Answering-machine detection, evaluated on a generated corpus (scripts/amd_corpus.py).

    python bench/amd_eval.py [--corpus DIR] [--per-kind N] [--report docs/amd-eval.md]

Reports machine recall (voicemail + announcements decided `machine`), humans taken for
machines, the decision delay after the key phrase ends (p50/p90), per voice and per
signal, and the recognition CPU: core-seconds per second of the callee's speech, and
per second of silence (a silent call). Runs the same pipeline as ``dialer amd classify``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from dialer.classify import classify
from dialer.script import default_script
from sip.recognizer import pocketsphinx_factory
from sip.speech import SAMPLE_RATE, CallAnalyzer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from amd_corpus import generate


def generate_corpus(folder: Path, per_kind: int) -> None:
    generate(folder, per_kind)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def silent_cpu(seconds: float = 60.0) -> float:
    """Core-seconds per second of a silent call (line noise only)."""
    noise = np.random.default_rng(1).normal(0, 30, int(SAMPLE_RATE * seconds)).astype("<i2")
    analyzer = CallAnalyzer(pocketsphinx_factory(default_script().phrases()))
    raw = noise.tobytes()
    started = time.process_time()
    for offset in range(0, len(raw), 640):
        analyzer.feed(raw[offset : offset + 640])
    return (time.process_time() - started) / seconds


def evaluate(corpus: Path) -> dict[str, Any]:
    labels = json.loads((corpus / "labels.json").read_text())
    script = default_script()
    recognizer = pocketsphinx_factory(script.phrases())  # reused, as a line reuses them
    rows: list[dict[str, Any]] = []
    speech_cpu: list[tuple[float, float]] = []
    for label in labels:
        recognizer.reset()  # as a line does before each call
        result = classify(str(corpus / label["file"]), script, recognizer=recognizer)
        voiced = sum(f.get("duration", 0.0) for f in result.facts if f["kind"] == "voice_end")
        speech_cpu.append((result.cpu_seconds, voiced))
        delay = None
        if result.decision.decision == "machine" and label["key_end_s"] is not None:
            delay = result.decision.seconds - label["key_end_s"]
        rows.append(label | {"decision": result.decision.decision, "signal": result.decision.signal,
                             "reason": result.decision.reason, "transcript": result.transcript,
                             "delay": delay})  # fmt: skip
    machines = [r for r in rows if r["kind"] != "human"]
    humans = [r for r in rows if r["kind"] == "human"]
    delays = [r["delay"] for r in machines if r["delay"] is not None]
    by_voice: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        v = by_voice[r["voice"]]
        if r["kind"] == "human":
            v[2] += 1
            v[3] += r["decision"] == "machine"
        else:
            v[0] += 1
            v[1] += r["decision"] == "machine"
    cpu = sum(c for c, _ in speech_cpu) / max(1e-9, sum(s for _, s in speech_cpu))
    return {
        "samples": len(rows),
        "machine_recall": sum(r["decision"] == "machine" for r in machines) / len(machines),
        "voicemail_recall": _share([r for r in machines if r["kind"] == "voicemail"]),
        "announcement_recall": _share([r for r in machines if r["kind"] == "announcement"]),
        "humans_as_machines": sum(r["decision"] == "machine" for r in humans) / len(humans),
        "humans_recognised": sum(r["decision"] == "human" for r in humans) / len(humans),
        "delay_p50": statistics.median(delays) if delays else float("nan"),
        "delay_p90": percentile(delays, 0.9),
        "signals": dict(Counter(r["signal"] for r in machines if r["decision"] == "machine")),
        "by_voice": {k: v for k, v in sorted(by_voice.items())},
        "cpu_per_speech_second": cpu,
        "cpu_per_silent_second": silent_cpu(),
        "misses": [r for r in machines if r["decision"] != "machine"],
        "false_alarms": [r for r in humans if r["decision"] == "machine"],
        "counts": dict(Counter(r["kind"] for r in rows)),
    }


def _share(rows: list[dict[str, Any]]) -> float:
    return sum(r["decision"] == "machine" for r in rows) / len(rows) if rows else float("nan")


def report(result: dict[str, Any]) -> str:
    r = result
    lines = [
        f"Corpus: {r['samples']} generated samples "
        f"({', '.join(f'{v} {k}' for k, v in r['counts'].items())}); "
        "festival voices slt/kal/ked and espeak-ng, speeds 0.9/1.0/1.15, line noise, "
        "300-3400 Hz, 8 kHz mu-law (`scripts/amd_corpus.py`).",
        "",
        "| measure | result | goal |",
        "|---|---|---|",
        f"| machine + announcement recall | {r['machine_recall']:.1%} | >= 95% |",
        f"| - voicemail | {r['voicemail_recall']:.1%} | |",
        f"| - carrier announcements | {r['announcement_recall']:.1%} | |",
        f"| humans taken for machines | {r['humans_as_machines']:.1%} | <= 3% |",
        f"| humans recognised as human | {r['humans_recognised']:.1%} | |",
        f"| decision after the key phrase ends, p50 | {r['delay_p50']:+.2f} s | <= 1.5 s |",
        f"| decision after the key phrase ends, p90 | {r['delay_p90']:+.2f} s | |",
        f"| recognition CPU while the callee speaks | {r['cpu_per_speech_second']:.3f} core "
        "| <= 0.15 |",
        f"| CPU while the line is silent | {r['cpu_per_silent_second']:.4f} core | ~0 |",
        "",
        "Decided by: " + ", ".join(f"{k} {v}" for k, v in sorted(r["signals"].items())) + ".",
        "",
        "| voice | machine recall | humans as machines |",
        "|---|---|---|",
    ]  # fmt: skip
    for voice, (m, mh, h, hm) in r["by_voice"].items():
        lines.append(f"| {voice} | {mh}/{m} | {hm}/{h} |")
    if r["misses"] or r["false_alarms"]:
        lines += ["", "Errors:", ""]
        for row in [*r["misses"], *r["false_alarms"]]:
            lines.append(f"- {row['file']}: {row['decision']} ({row['reason']}); heard "
                         f"\"{row['transcript']}\"")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/dialer-amd-corpus"))
    parser.add_argument("--per-kind", type=int, default=36)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    if not (args.corpus / "labels.json").exists():
        generate(args.corpus, args.per_kind)
    result = evaluate(args.corpus)
    text = (
        f"## Answering-machine detection ({date.today()}, {platform.node()}, "
        f"{platform.processor() or platform.machine()})\n\n" + report(result)
    )
    print(text)
    if args.report:
        args.report.write_text("# Answering-machine detection: evaluation report\n\n" + text)


if __name__ == "__main__":
    main()
