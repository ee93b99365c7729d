"""The systemd units stay consistent with the worker: graceful stop fits in the timeout."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parent.parent / "deploy" / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_stop_gracefully_within_their_timeout(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(unit)
    service = parser["Service"]
    command = service["ExecStart"]
    assert " worker" in command and command.startswith("/")
    drain = float(re.search(r"--drain-seconds (\d+)", command).group(1))  # type: ignore[union-attr]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= drain + 15  # drain, then hang up and settle
    assert "DIALER_CONFIG=" in service["Environment"]
    assert "DIALER_WORKER__ID=%H" in service["Environment"]  # stable: restarts recover
    assert service["UMask"] == "0077"  # its SQLite file, caches: never readable by others


def test_there_are_units() -> None:
    assert {u.name for u in UNITS} == {"dialer-worker.service", "dialer-worker@.service"}
