"""`dialer demo`, the README's main command, from a clean folder (about 90 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sip


def test_the_demo_shows_every_rule(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dialer")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    done = subprocess.run([str(exe), "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    for shown in (
        "bought 10 min telephony and 1 min speech",
        "every campaign pauses; calls already up finish",
        "the debt of",
        "campaigns stay paused after a top-up",
        "resumed demo-1-sales",
        "resumed demo-1-support",
        "audit: balance = sum of ledger entries",
    ):
        assert shown in out, shown
    dispositions = next(line for line in out.splitlines() if line.startswith("dispositions:"))
    for kind in ("answered", "answering_machine", "busy", "no_answer", "rejected"):
        assert kind in dispositions
    assert (tmp_path / "dialer.db").exists()
