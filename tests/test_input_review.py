"""Holes the issue 12 review found after the fixes landed, each through the real component:
the CLI on SQLite and PostgreSQL, a real pjsua2 line with raw SIP sockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import Run

pytestmark = pytest.mark.usefixtures("isolated")


def test_a_do_not_call_import_echoes_a_short_cut_of_a_bad_number(
    run: Run, database: str, tmp_path: Path
) -> None:
    """`dnc import` quoted a bad number whole (a 100k-character phone printed 100k
    characters); it now says what `campaign import` says, and imports the good rows."""
    run("account", "create", "acme")
    dnc = tmp_path / "dnc.csv"
    dnc.write_text("phone\n" + "5" * 100_000 + "\n\x1b[2J+1 555\n+14155550101\n")
    _, out, _ = run("dnc", "import", "acme", str(dnc), "--json")
    report = json.loads(out)
    assert report["imported"] == 1
    problems = report["problems"]
    assert len(problems) == 2 and all(len(p) < 120 for p in problems), problems
    assert "too long" in problems[0] and "5" * 100 not in problems[0]
    assert "\x1b" not in problems[1] and "\\x1b" in problems[1]
