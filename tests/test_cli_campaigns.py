"""Campaign CLI: creation, imports with bad rows, state changes, CDR export, bad input."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from clitools import Run

from billing.storage import Database
from dialer import store

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def acme(run: Run, database: str) -> Run:
    run("account", "create", "acme")
    run("account", "create", "other")
    run("trunk", "add", "main", "--account", "acme", "--kind", "platform",
        "--uri", "sip:127.0.0.1:5999")  # fmt: skip
    return run


def test_campaign_lifecycle_and_imports(acme: Run, tmp_path: Path) -> None:
    cli = acme
    window = ["--window", "09:00-20:00", "--days", "mon-fri", "--timezone", "America/New_York"]
    cli("campaign", "create", "spring", "--account", "acme", "--trunk", "main", *window)
    csv = tmp_path / "contacts.csv"
    csv.write_text(
        "Phone,timezone,name\n"
        "+14155550101,,Ann\n"
        "+14155550102,Europe/Berlin,Bob\n"
        "12345,,Bad\n"
        "+14155550101,,Dup\n"
        "+14155550103,Mars/Base,Zed\n"
    )
    _, out, _ = cli("campaign", "import", "spring", str(csv), "--json")
    report = json.loads(out)
    assert report["imported"] == 2 and len(report["problems"]) == 3
    assert "line 4: bad phone number '12345'" in report["problems"][0]
    assert "line 5: duplicate number +14155550101 (first on line 2)" in report["problems"][1]
    assert "line 6: unknown time zone 'Mars/Base'" in report["problems"][2]
    assert cli.json("campaign", "import", "spring", str(csv))["already_there"] == 2  # type: ignore[index]

    start = cli.fails("campaign", "start", "spring")
    assert "cannot start: telephony balance is 0 s" in start
    cli("billing", "topup", "acme", "--counter", "telephony", "--minutes", "5")
    cli("billing", "topup", "acme", "--counter", "speech", "--minutes", "5")
    assert cli.json("campaign", "start", "spring")["state"] == "running"  # type: ignore[index]
    assert "cannot resume a campaign that is running" in cli.fails("campaign", "resume", "spring")
    paused = cli.json("campaign", "pause", "spring")
    assert paused == {"campaign": "spring", "state": "paused", "pause_reason": "user"}
    status = cli.json("campaign", "status", "spring")
    assert status["contacts"] == {"total": 2, "pending": 2, "in_progress": 0, "done": 0}  # type: ignore[index]
    assert status["calls"]["placed"] == 0  # type: ignore[index]
    cli("campaign", "stop", "spring")
    assert "cannot resume a campaign that is stopped" in cli.fails("campaign", "resume", "spring")
    _, watched, _ = cli("campaign", "status", "spring", "--watch")  # ends: the campaign did
    assert "spring [stopped]" in watched and "contacts done" in watched
    listed = cli.json("campaign", "list")
    expected = {"campaign": "spring", "account": "acme", "state": "stopped", "pause_reason": None}
    assert listed == {"campaigns": [expected]}
    _, out, _ = cli("cdr", "export", "spring")
    assert out.startswith("call_id,campaign,account,phone,attempt,direction,invite_at")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trunk", "nope"], "unknown trunk 'nope'"),
        (["--account", "other"], "belongs to account 'acme'"),
        (["--window", "25:00-26:00"], "bad window '25:00-26:00'"),
        (["--days", "mon-funday"], "bad days"),
        (["--timezone", "Mars/Base"], "unknown time zone"),
        (["--agent-uri", "tel:123"], "agent URI 'tel:123' must be a sip: or sips: URI"),
        (["--caller-id", "abc"], "bad phone number 'abc'"),
    ],
)
def test_bad_campaigns_are_refused(acme: Run, args: list[str], message: str) -> None:
    base = {"--account": "acme", "--trunk": "main"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for pair in base.items() for x in pair]
    extra = [a for a in args if a not in base and a not in base.values()]
    assert message in acme.fails("campaign", "create", "c1", *flat, *extra)
    assert acme.json("campaign", "list") == {"campaigns": []}


def test_file_level_import_errors_import_nothing(acme: Run, tmp_path: Path) -> None:
    acme("campaign", "create", "spring", "--account", "acme", "--trunk", "main")
    no_phone = tmp_path / "a.csv"
    no_phone.write_text("number\n+14155550101\n")
    latin = tmp_path / "b.csv"
    latin.write_bytes("phone,name\n+14155550101,J\xf6rg\n".encode("latin-1"))
    assert "no 'phone' column" in acme.fails("campaign", "import", "spring", str(no_phone))
    assert "not UTF-8" in acme.fails("campaign", "import", "spring", str(latin))
    assert "no such file" in acme.fails("campaign", "import", "spring", str(tmp_path / "x.csv"))
    assert "unknown campaign 'autumn'" in acme.fails("campaign", "import", "autumn", str(latin))
    assert acme.json("campaign", "status", "spring")["contacts"]["total"] == 0  # type: ignore[index]


def test_trunks_and_dnc(acme: Run, tmp_path: Path) -> None:
    assert "already exists" in acme.fails("trunk", "add", "main", "--account", "acme", "--kind",
                                          "platform", "--uri", "sip:x")  # fmt: skip
    assert "unknown trunk kind 'carrier'" in acme.fails(
        "trunk", "add", "t2", "--account", "acme", "--kind", "carrier", "--uri", "sip:x"
    )
    assert "unknown account 'ghost'" in acme.fails(
        "trunk", "add", "t3", "--account", "ghost", "--kind", "platform", "--uri", "sip:x"
    )
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    acme("trunk", "add", "own", "--account", "acme", "--kind", "customer", "--uri",
         "sip:pbx.example", "--username", "u", "--password-file", str(secret))  # fmt: skip
    listed = acme.json("trunk", "list")
    assert [t["name"] for t in listed["trunks"]] == ["main", "own"]  # type: ignore[index]
    assert "hunter2" not in json.dumps(listed)
    dnc = tmp_path / "dnc.csv"
    dnc.write_text("phone\n+14155550101\nnope\n")
    report = acme.json("dnc", "import", "acme", str(dnc))
    assert report["imported"] == 1 and "line 3" in report["problems"][0]  # type: ignore[index]


def test_a_campaign_keeps_its_validated_script(acme: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("blocks:\n  hello:\n    say: hi\n    next: ask\n")
    message = acme.fails("campaign", "create", "c1", "--account", "acme", "--trunk", "main",
                         "--script", str(bad))  # fmt: skip
    assert message == (
        "error: bad.yaml: block 'hello' (line 3): goes to 'ask', which is not a block (nor 'end')"
    )
    assert acme.json("campaign", "list") == {"campaigns": []}  # nothing half-written
    assert "cannot read script" in acme.fails(
        "campaign", "create", "c1", "--account", "acme", "--trunk", "main",
        "--script", str(tmp_path / "none.yaml"),
    )  # fmt: skip
    good = tmp_path / "good.yaml"
    text = "blocks:\n  hello:\n    say: hi\n"
    good.write_text(text)
    acme("campaign", "create", "c1", "--account", "acme", "--trunk", "main", "--script", str(good))
    good.write_text("edited after the campaign was created: not what runs")

    async def stored() -> tuple[str, str]:
        async with Database(os.environ["DIALER_DATABASE__URL"]) as database:
            row = await database.run(lambda c: store.campaign_by_name(c, "c1"), write=False)
            return row.script, row.script_text

    assert asyncio.run(stored()) == (str(good.resolve()), text)
