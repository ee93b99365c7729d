"""The `dialer` CLI: JSON shapes, bad input, database states, configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import Run

pytestmark = pytest.mark.usefixtures("isolated")


def test_billing_walkthrough_json_shapes(run: Run, database: str) -> None:
    assert run.json("account", "create", "acme")["account"] == "acme"  # type: ignore[index]
    run("account", "create", "beta")
    accounts = run.json("account", "list")
    assert [a["name"] for a in accounts["accounts"]] == ["acme", "beta"]  # type: ignore[index]

    topup = run.json("billing", "topup", "acme", "--counter", "speech", "--minutes", "10")
    assert topup == topup | {
        "account": "acme",
        "counter": "speech",
        "minutes": 10,  # type: ignore[operator]
        "balance_seconds": 600,
        "restored": True,
    }
    assert run.json("billing", "balance", "acme") == {
        "account": "acme",
        "counters": {"telephony": {"balance_seconds": 0}, "speech": {"balance_seconds": 600}},
    }
    usage = run.json("billing", "usage", "acme", "--period", "2026-11")
    assert usage == {
        "account": "acme",
        "period": "2026-11",
        "unique_contacts": 0,
        "billed_seconds": {"telephony": 0, "speech": 0},
        "campaigns": [],
    }
    campaign = run.json("billing", "usage", "acme", "--campaign", "spring")
    assert campaign["campaigns"] == []  # type: ignore[index]
    audit = run.json("billing", "audit", "acme")
    assert audit["consistent"] is True  # type: ignore[index]

    _, text, _ = run("billing", "balance", "acme")
    assert "speech" in text and "10:00" in text


def test_topup_reference_is_idempotent(run: Run, database: str) -> None:
    run("account", "create", "acme")
    args = (
        "billing",
        "topup",
        "acme",
        "--counter",
        "telephony",
        "--minutes",
        "5",
        "--reference",
        "inv-7",
    )
    first = run.json(*args)
    again = run.json(*args)
    assert first["balance_seconds"] == again["balance_seconds"] == 300  # type: ignore[index]
    assert again["replayed"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--minutes", "-5"), "minutes must be a whole positive number, got '-5'"),
        (("--minutes", "0"), "minutes must be a whole positive number, got '0'"),
        (("--minutes", "1.5"), "minutes must be a whole positive number, got '1.5'"),
        (("--minutes", "ten"), "minutes must be a whole positive number, got 'ten'"),
        (("--minutes", "5", "--counter", "sms"), "unknown counter 'sms'"),
    ],
)
def test_bad_topups_are_refused_and_write_nothing(
    run: Run, database: str, args: tuple[str, ...], message: str
) -> None:
    run("account", "create", "acme")
    base = ["billing", "topup", "acme", "--counter", "speech"]
    if "--counter" in args:
        base = ["billing", "topup", "acme"]
    line = run.fails(*base, *args)
    assert message in line and line.startswith("error: ")
    balances = run.json("billing", "balance", "acme")
    assert balances["counters"]["speech"]["balance_seconds"] == 0  # type: ignore[index]
    assert run.json("billing", "audit", "acme")["consistent"] is True  # type: ignore[index]


def test_other_bad_input(run: Run, database: str) -> None:
    run("account", "create", "acme")
    assert "unknown account 'ghost'" in run.fails(
        "billing", "topup", "ghost", "--counter", "speech", "--minutes", "5"
    )
    assert "unknown account 'ghost'" in run.fails("billing", "balance", "ghost")
    assert "account 'acme' already exists" in run.fails("account", "create", "acme")
    assert "invalid account name" in run.fails("account", "create", "a b")
    assert "malformed period '2026-13'" in run.fails(
        "billing", "usage", "acme", "--period", "2026-13"
    )
    assert "malformed period 'Nov'" in run.fails("billing", "usage", "acme", "--period", "Nov")
    assert "Missing option '--minutes'" in run.fails(
        "billing", "topup", "acme", "--counter", "speech"
    )
    assert "No such command" in run.fails("billing", "refund", "acme")
    assert [a["name"] for a in run.json("account", "list")["accounts"]] == ["acme"]  # type: ignore[index]


def test_database_states_say_what_to_run(
    run: Run, monkeypatch: pytest.MonkeyPatch, pg_empty_url: str
) -> None:
    line = run.fails("account", "list")  # default ./dialer.db, never created
    assert "does not exist: run `dialer db upgrade`" in line
    assert not Path("dialer.db").exists()  # nothing half-written

    monkeypatch.setenv("DIALER_DATABASE__URL", pg_empty_url)
    assert "is not migrated: run `dialer db upgrade`" in run.fails("account", "list")

    monkeypatch.setenv("DIALER_DATABASE__URL", "postgresql://postgres:hunter2@127.0.0.1:1/nowhere")
    line = run.fails("account", "list")
    assert line.startswith("error: cannot open database") and "hunter2" not in line

    monkeypatch.setenv("DIALER_DATABASE__URL", "mysql://x@y/z")
    assert "use sqlite:///FILE or postgresql://" in run.fails("account", "list")

    monkeypatch.setenv("DIALER_DATABASE__URL", "sqlite:////no/such/folder/x.db")
    assert "no such folder" in run.fails("db", "upgrade")

    monkeypatch.delenv("DIALER_DATABASE__URL")
    run("db", "upgrade")
    assert Path("dialer.db").exists()
    _, out, _ = run("db", "upgrade")
    assert "up to date" in out


def test_config_file_flag_env_and_overrides(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("a.toml").write_text('[database]\nurl = "sqlite:///a.db"\n')
    Path("b.toml").write_text('[database]\nurl = "sqlite:///b.db"\n')
    run("--config", "a.toml", "db", "upgrade")
    assert Path("a.db").exists()
    run("db", "upgrade", "--config", "b.toml")  # also accepted after the command
    assert Path("b.db").exists()
    monkeypatch.setenv("DIALER_CONFIG", "a.toml")
    monkeypatch.setenv("DIALER_DATABASE__URL", "sqlite:///env.db")  # env beats the file
    run("db", "upgrade")
    assert Path("env.db").exists()

    Path("bad.toml").write_text("[database\n")
    assert "not valid TOML" in run.fails("--config", "bad.toml", "account", "list")
    Path("typo.toml").write_text("[billing]\nincrement_second = 15\n")
    assert "billing.increment_second" in run.fails("--config", "typo.toml", "account", "list")
    Path("neg.toml").write_text("[billing]\nincrement_seconds = -1\n")
    assert "billing.increment_seconds" in run.fails("--config", "neg.toml", "account", "list")
    assert "does not exist" in run.fails("--config", "missing.toml", "account", "list")


def test_configured_increment_is_used(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo meters with the configured increment (6 s -> call 1 of 40 s bills 42 s)."""
    monkeypatch.setenv("DIALER_BILLING__INCREMENT_SECONDS", "6")
    _, out, _ = run("demo", "--billing-only")
    assert "billed: telephony 42 s, speech 42 s" in out


def test_demo_walks_through_the_rules(run: Run) -> None:
    _, out, _ = run("demo", "--billing-only")
    assert "created account demo-1" in out
    assert "billed: telephony 45 s, speech 45 s" in out
    assert "billed: telephony 0 s, speech 30 s (agent time 120 s)" in out
    assert "balance_exhausted" in out and "balance_restored" in out
    _, again, _ = run(
        "demo", "--billing-only"
    )  # runs again on the same database with a fresh account
    assert "created account demo-2" in again
    usage = run.json("billing", "usage", "demo-1")
    assert usage["billed_seconds"] == {"telephony": 45, "speech": 75}  # type: ignore[index]
    assert usage["unique_contacts"] == 2  # type: ignore[index]


def test_console_script_prints_one_error_line(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("dialer")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    done = subprocess.run(
        [str(exe), "billing", "balance", "acme", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "dialer db upgrade" in done.stderr


def test_hostile_configuration_and_input_give_one_line_without_secrets(
    run: Run, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    run("account", "create", "acme")
    line = run.fails("billing", "topup", "acme", "--counter", "speech", "--minutes", "x" * 3)
    assert "minutes" in line
    line = run.fails(
        "billing", "topup", "acme", "--counter", "speech", "--minutes", "1",
        "--reference", "r" * 300,
    )  # fmt: skip
    assert "reference must be 1-200 characters" in line
    assert "minutes must be a whole positive number" in run.fails(
        "billing", "topup", "acme", "--counter", "speech", "--minutes", "\u0663"
    )  # an Arabic-Indic three is not a number of minutes
    assert "malformed period '9999-12'" in run.fails(
        "billing", "usage", "acme", "--period", "9999-12"
    )
    balances = run.json("billing", "balance", "acme")
    assert balances["counters"]["speech"]["balance_seconds"] == 0  # type: ignore[index]

    monkeypatch.setenv("DIALER_MQTT", '{"password": "hunter2",')
    line = run.fails("account", "list", "--json")
    assert "DIALER_MQTT" in line and "hunter2" not in line
    monkeypatch.delenv("DIALER_MQTT")

    monkeypatch.setenv("DIALER_SIP__PORT", "99999")
    assert "environment DIALER_SIP__PORT: sip.port" in run.fails("account", "list")
    monkeypatch.delenv("DIALER_SIP__PORT")

    monkeypatch.setenv("DIALER_DATABASE__URL", "postgresql://u@127.0.0.1:5432/x?password=hunter2")
    line = run.fails("account", "list")
    assert "cannot open database" in line and "hunter2" not in line
    monkeypatch.setenv("DIALER_DATABASE__URL", "postgresql://u:pw@127.0.0.1:99999/x")
    line = run.fails("account", "list")
    assert "cannot open database" in line and ":pw@" not in line
    monkeypatch.setenv("DIALER_DATABASE__URL", "u:s3cret@h/x")
    line = run.fails("account", "list")
    assert "not a valid URL" in line and "s3cret" not in line


def test_no_subcommand_prints_help_and_no_empty_error(run: Run) -> None:
    code, out, err = run("billing", ok=False)
    assert code != 0
    assert "topup" in out + err and "error: \n" not in err
