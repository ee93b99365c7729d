"""Campaign CLI: creation, imports with bad rows, state changes, CDR export, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from clitools import Run
from sqlalchemy import select

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


def _prompt_rows(url: str) -> list[tuple[str, str, str, bytes]]:
    async def read() -> list[tuple[str, str, str, bytes]]:
        async with Database(url) as database:
            rows = await database.run(
                lambda c: c.execute(
                    select(store.CAMPAIGN.c.name, store.PROMPT.c.name, store.PROMPT.c.sha256,
                           store.PROMPT.c.content)
                    .join(store.CAMPAIGN, store.CAMPAIGN.c.id == store.PROMPT.c.campaign_id)
                    .order_by(store.CAMPAIGN.c.name, store.PROMPT.c.name)
                ).all(),
                write=False,
            )  # fmt: skip
            return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    return asyncio.run(read())


def test_script_prompts_come_only_from_the_prompts_folder_and_are_stored(
    acme: Run, database: str, tmp_path: Path, tone_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 20: a say.wav outside the prompts folder, or not a WAV the line plays, is
    refused with one line and nothing written; a good one is stored with the campaign."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    good = tone_wav.read_bytes()
    (prompts / "hello.wav").write_bytes(good)
    (tmp_path / "outside.wav").write_bytes(good)
    (prompts / "escape.wav").symlink_to(tmp_path / "outside.wav")
    (prompts / "fake.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 40)
    script = prompts / "spring.yaml"
    create = ("campaign", "create", "c1", "--account", "acme", "--trunk", "main",
              "--script", str(script))  # fmt: skip
    at = "error: spring.yaml: block 'hi' (line 3): say.wav: "
    for name, why in [
        (str(tmp_path / "outside.wav"), "absolute paths are not allowed"),
        ("../outside.wav", "'../outside.wav': '..' is not allowed (stay in the prompts folder)"),
        ("escape.wav", f"'escape.wav' leads outside the prompts folder {prompts.resolve()}"),
        ("fake.wav", "not a playable WAV file (the fmt chunk must come first)"),
    ]:
        script.write_text(f"blocks:\n  hi:\n    say: {{wav: '{name}'}}\n")
        message = acme.fails(*create)
        assert message.startswith(at) and why in message, message
    assert acme.json("campaign", "list") == {"campaigns": []}  # nothing half-written
    assert _prompt_rows(database) == []

    script.write_text("blocks:\n  hi:\n    say: {wav: hello.wav}\n    next: bye\n"
                      "  bye:\n    say: {wav: hello.wav}\n")  # fmt: skip
    acme(*create)
    sha = hashlib.sha256(good).hexdigest()
    assert _prompt_rows(database) == [("c1", "hello.wav", sha, good)]  # once per name

    # [scripts] prompts_dir: names are relative to it, wherever the script is
    library = tmp_path / "library"
    library.mkdir()
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(library / "bye.wav"),
                    "synth", "0.5", "sine", "300"], check=True)  # fmt: skip
    bye = (library / "bye.wav").read_bytes()
    other = tmp_path / "other.yaml"
    other.write_text("blocks:\n  bye:\n    say: {wav: bye.wav}\n")
    config = tmp_path / "dialer.toml"
    config.write_text(f'[scripts]\nprompts_dir = "{library}"\n')
    acme("--config", str(config), "campaign", "create", "c2", "--account", "acme",
         "--trunk", "main", "--script", str(other))  # fmt: skip
    monkeypatch.setenv("DIALER_SCRIPTS__PROMPTS_DIR", str(tmp_path / "absent"))
    assert acme.fails("campaign", "create", "c3", "--account", "acme", "--trunk", "main",
                      "--script", str(other)) == (
        f"error: other.yaml: block 'bye' (line 3): say.wav: the prompts folder "
        f"{tmp_path / 'absent'} does not exist"
    )  # fmt: skip
    (library / "bye.wav").unlink()  # the host file going away changes nothing stored
    (prompts / "hello.wav").write_bytes(b"replaced")
    assert _prompt_rows(database) == [
        ("c1", "hello.wav", sha, good),
        ("c2", "bye.wav", hashlib.sha256(bye).hexdigest(), bye),
    ]
