"""Crash recovery: `dialer worker` SIGKILLed mid-call and started again under the same
worker id settles the calls it left (never charged twice, never forgotten) and never
dials again a contact whose call was answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from siputil import rtp_base
from workerutil import cli_campaign, simulator

pytestmark = pytest.mark.sip


def test_a_killed_worker_is_recovered_by_its_restart(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("dialer"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env |= {"DIALER_DATABASE__URL": f"sqlite:///{tmp_path / 'w.db'}",
            "DIALER_WORKER__ID": "host-a"}  # fmt: skip

    def cli(*args: str) -> str:
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status() -> dict[str, object]:
        return json.loads(cli("campaign", "status", "spring", "--json"))  # type: ignore[no-any-return]

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [exe, "worker", "--lines", "1", "--sip-port", "0", "--drain-seconds", "1"],
            env=env | {"DIALER_SIP__RTP_PORT_BASE": str(rtp_base())},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_for(condition: object, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while not condition():  # type: ignore[operator]
            assert time.monotonic() < deadline, status()
            time.sleep(0.3)

    plan = "[defaults]\nring = 0.2\ntalk = 60\n"
    with simulator(tmp_path, plan) as sim:
        phones = ["+14155558001", "+14155558002", "+14155558003"]
        cli_campaign(cli, sim, tmp_path, phones, "--retries", "0")
        first = start_worker()
        try:
            wait_for(lambda: status()["calls"]["answered"] >= 2)  # type: ignore[index]
            first.send_signal(signal.SIGKILL)  # no drain, no settling: gone
            first.wait(10)
            # its lines see their pipe close and hang up; the callees report it
            wait_for(lambda: sum(e["event"] == "ended" for e in sim.events) >= 2)
            second = start_worker()
            try:
                # the restart settles the two calls at once, then dials the third
                wait_for(lambda: status()["calls"]["placed"] >= 3)  # type: ignore[index]
                # (the two settled ones count as interrupted now, not answered)
                wait_for(lambda: status()["calls"]["answered"] >= 1)  # type: ignore[index]
                second.send_signal(signal.SIGTERM)
                assert second.wait(30) == 0
            finally:
                if second.poll() is None:
                    second.kill()
        finally:
            if first.poll() is None:
                first.kill()
        records = json.loads(cli("cdr", "export", "spring", "--format", "json"))
        balance = json.loads(cli("billing", "balance", "acme", "--json"))
        final = status()
    invites: dict[str, int] = {}
    for event in sim.events:
        if event["event"] == "incoming":
            invites[event["number"]] = invites.get(event["number"], 0) + 1
    assert invites == {"+14155558001": 1, "+14155558002": 1, "+14155558003": 1}  # none twice
    by_phone = {r["phone"]: r for r in records}
    interrupted = [r for r in records if r["disposition"] == "interrupted"]
    assert len(interrupted) == 2 and all(r["hangup_by"] == "recovery" for r in interrupted)
    assert by_phone["+14155558003"]["disposition"] == "answered"
    billed = sum(r["billed_telephony_seconds"] for r in records)
    assert all(r["billed_telephony_seconds"] >= 15 for r in records)  # each was answered
    # the ledger holds exactly what the CDRs say, nothing charged twice
    assert balance["counters"]["telephony"]["balance_seconds"] == 300 - billed
    assert final["contacts"] == {"total": 3, "pending": 0, "in_progress": 0, "done": 3}
