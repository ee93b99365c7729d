"""Hostile input at the CLI edge: control characters on their way to SIP, numbers that
would stop or unthrottle dialling, lengths that would overflow a column, echoed input,
trunk passwords. Each through the real CLI on a real SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from clitools import Run
from sqlalchemy import insert, select, update

from billing.storage import Database
from dialer import store
from dialer.campaigns import MAX_CAMPAIGN_NAME, MAX_RETRIES

pytestmark = pytest.mark.usefixtures("isolated")

TRUNK = ["--account", "acme", "--kind", "platform"]
CAMPAIGN = ["--account", "acme", "--trunk", "main"]
HUGE = "99999999999999999999"


@pytest.fixture
def acme(run: Run, database: str) -> Run:
    run("account", "create", "acme")
    run("trunk", "add", "main", *TRUNK, "--uri", "sip:127.0.0.1:5999")
    return run


def in_db(work: Any) -> Any:
    async def main() -> Any:
        async with Database(os.environ["DIALER_DATABASE__URL"]) as database:
            return await database.run(work)

    return asyncio.run(main())


def trunk_row(name: str) -> Any:
    return in_db(lambda c: store.trunk_by_name(c, name))


def no_unexpected(message: str) -> str:
    assert "unexpected" not in message and len(message) < 300, message
    return message


# -- control characters and URIs on their way to SIP --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--uri", "sip:"], "has no host"),
        (["--uri", "sips:"], "has no host"),
        (["--uri", "sip:host\r\nX-Evil: 1"], "control character"),
        (["--uri", "tel:+15550001"], "must be a sip: or sips: URI"),
        (["--uri", "sip:host:99999"], "port must be 1-65535"),
        (["--uri", "sip:host?Route=evil"], "headers (?...) are not allowed"),
        (["--uri", "sip:" + "h" * 300], "trunk URI is 304 characters long (at most 255)"),
        (["--uri", "sip:h", "--outbound-proxy", "sip:p\r\nVia: x"], "outbound proxy"),
        (["--uri", "sip:h", "--username", "alice\r\nX-Evil: 1"], "trunk username"),
        (["--uri", "sip:h", "--username", "u" * 129], "at most 128"),
    ],
)
def test_trunk_fields_reaching_sip_are_checked(acme: Run, args: list[str], message: str) -> None:
    refused = no_unexpected(acme.fails("trunk", "add", "t2", *TRUNK, *args))
    assert message in refused
    assert "\r" not in refused and "X-Evil: 1" not in refused.split("'")[-1]
    assert [t["name"] for t in acme.json("trunk", "list")["trunks"]] == ["main"]  # type: ignore[index]


@pytest.mark.parametrize("password", ["pw\r\nX-Evil: 1", "pw\x00", "pw\x1b[2J", "p" * 256, ""])
def test_bad_trunk_passwords_are_refused_and_never_echoed(
    acme: Run, tmp_path: Path, password: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(password.encode())
    refused = no_unexpected(acme.fails(
        "trunk", "add", "t2", *TRUNK, "--uri", "sip:h", "--username", "u",
        "--password-file", str(secret),
    ))  # fmt: skip
    assert "trunk password" in refused
    assert "pw" not in refused and "ppp" not in refused


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sip:", "has no host"),
        ("sip:agent@pbx\r\nX-Evil: 1", "control character"),
        ("sip:agent@pbx:0", "port must be 1-65535"),
        ("sip:" + "a" * 300 + "@pbx", "at most 255"),
    ],
)
def test_agent_uri_is_parsed_at_campaign_create(acme: Run, uri: str, message: str) -> None:
    refused = acme.fails("campaign", "create", "c1", *CAMPAIGN, "--agent-uri", uri)
    assert message in no_unexpected(refused) and "agent URI" in refused
    assert acme.json("campaign", "list") == {"campaigns": []}


def test_good_uris_are_stored_as_given(acme: Run) -> None:
    uri = "sip:acct@carrier.example:5061;transport=tls"
    acme("trunk", "add", "t2", *TRUNK, "--uri", uri, "--outbound-proxy", "sip:[2001:db8::1];lr")
    assert trunk_row("t2").uri == uri
    _, out, _ = acme("trunk", "list")
    assert "[2001:db8::1]" not in out  # the proxy is not listed; the URI prints as given
    assert uri in out.replace("\n", "") or "carrier.example" in out
    acme("campaign", "create", "c1", *CAMPAIGN, "--agent-uri", "sip:agent@pbx.example:5070")


def test_names_are_whole_lines_only(acme: Run) -> None:
    """The name rule's `$` let a trailing newline through into names (and MQTT topics)."""
    assert "invalid account name 'x\\n'" in acme.fails("account", "create", "x\n")
    assert "invalid trunk name" in acme.fails("trunk", "add", "t\n", *TRUNK, "--uri", "sip:h")
    assert "invalid campaign name" in acme.fails("campaign", "create", "c\n", *CAMPAIGN)


# -- numbers finite and bounded, lengths checked ------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cps", "inf"], "cps must be a number from 0.01 to 1000 calls a second, got inf"),
        (["--cps", "nan"], "cps must be a number from 0.01 to 1000 calls a second, got nan"),
        (["--cps", "-inf"], "cps must be"),
        (["--cps", "1e9"], "cps must be"),
        (["--cps", "0"], "cps must be"),
        (["--cps", "1e-300"], "cps must be"),
        (["--max-concurrent", HUGE], f"max concurrent must be a whole number from 1 to 10000, got {HUGE}"),  # noqa: E501
        (["--max-concurrent", "0"], "max concurrent must be"),
        (["--retries", str(MAX_RETRIES + 1)], "retries must be a whole number from 0 to 99"),
        (["--retries", HUGE], "retries must be"),
        (["--retry-delay", "-1"], "retry delay must be"),
        (["--retry-delay", HUGE], "retry delay must be"),
        (["--max-call-seconds", HUGE], "max call seconds must be"),
        (["--max-call-seconds", "0"], "max call seconds must be"),
        (["--window", "99999999999999999999:00-10:00"], "bad window"),
        (["--timezone", "Z" * 65], "bad time zone"),
        (["--caller-id", "+1" + "5" * 40], "bad caller id"),
    ],
)  # fmt: skip
def test_campaign_numbers_are_finite_and_bounded(acme: Run, args: list[str], message: str) -> None:
    assert message in no_unexpected(acme.fails("campaign", "create", "c1", *CAMPAIGN, *args))
    assert acme.json("campaign", "list") == {"campaigns": []}  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cps", "inf"], "cps must be a number from 0.01 to 1000 calls a second, got inf"),
        (["--cps", "nan"], "cps must be"),
        (["--channels", HUGE], "channels must be a whole number from 1 to 10000"),
        (["--channels", "0"], "channels must be"),
    ],
)
def test_trunk_numbers_are_finite_and_bounded(acme: Run, args: list[str], message: str) -> None:
    refused = acme.fails("trunk", "add", "t2", *TRUNK, "--uri", "sip:h", *args)
    assert message in no_unexpected(refused)
    assert len(acme.json("trunk", "list")["trunks"]) == 1  # type: ignore[index]


def test_campaign_names_leave_room_for_the_call_id(acme: Run, database: str) -> None:
    """A 60-character name made every call_id overflow dialer_call.call_id (64) on
    PostgreSQL: the campaign was never dialled. Names are cut at 32 characters, and the
    longest call_id the worker can build from one fits the column."""
    refused = acme.fails("campaign", "create", "c" * 60, *CAMPAIGN)
    assert f"1-{MAX_CAMPAIGN_NAME} letters" in no_unexpected(refused)
    name = "c" * MAX_CAMPAIGN_NAME
    acme("campaign", "create", name, *CAMPAIGN, "--retries", str(MAX_RETRIES))
    # dialer.worker: f"{name}-{contact_id}-{attempt}-{uuid4().hex[:6]}"
    call_id = f"{name}-{2**63 - 1}-{MAX_RETRIES + 1}-abcdef"

    def record(conn: Any) -> str:
        campaign = store.campaign_by_name(conn, name)
        conn.execute(insert(store.CALL).values(
            call_id=call_id, campaign_id=campaign.id, account="acme", phone="+14155550101",
            direction="outbound", trunk_kind="platform",
            invite_at=datetime(2026, 1, 1),
        ))  # fmt: skip
        return str(conn.execute(select(store.CALL.c.call_id)).scalar_one())

    assert in_db(record) == call_id


def test_trunk_list_json_is_strict_json(acme: Run) -> None:
    """A rate written before rates were checked printed `Infinity`, which no JSON parser
    takes."""
    in_db(lambda c: c.execute(update(store.TRUNK).values(cps=float("inf"))))

    def strict(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    _, out, _ = acme("trunk", "list", "--json")
    assert json.loads(out, parse_constant=strict)["trunks"][0]["cps"] is None


@pytest.mark.parametrize(
    "args",
    [
        ["--lines", HUGE],
        ["--lines", "0"],
        ["--sip-port", "70000"],
        ["--metrics-port", "70000"],
        ["--drain-seconds", "nan"],
        ["--drain-seconds", "inf"],
        ["--drain-seconds", "-1"],
    ],
)
def test_worker_options_are_bounded(run: Run, args: list[str]) -> None:
    refused = run.fails("worker", *args)
    assert args[0] in no_unexpected(refused)


def test_billing_numbers_and_lengths(acme: Run) -> None:
    digits = "9" * 100_000  # int() of it raised "unexpected ValueError"
    refused = acme.fails("billing", "topup", "acme", "--counter", "telephony", "--minutes", digits)
    assert "bad minutes '9999" in no_unexpected(refused)
    for minutes in ("inf", "nan", "1e3", "-5", HUGE):
        no_unexpected(acme.fails(
            "billing", "topup", "acme", "--counter", "telephony", "--minutes", minutes
        ))  # fmt: skip
    no_unexpected(acme.fails("billing", "usage", "acme", "--period", "9" * 1000))


# -- errors echo a short cut of the input -------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["account", "create", "a" * 100_000],
        ["billing", "balance", "a" * 100_000],
        ["campaign", "create", "c" * 100_000, *CAMPAIGN],
        ["campaign", "create", "c1", *CAMPAIGN, "--caller-id", "5" * 100_000],
        ["campaign", "create", "c1", *CAMPAIGN, "--window", "9" * 100_000],
        ["campaign", "create", "c1", *CAMPAIGN, "--days", "x" * 100_000],
        ["campaign", "create", "c1", *CAMPAIGN, "--cps", "x" * 100_000],
        ["campaign", "create", "c1", *CAMPAIGN, "--agent-uri", "sip:" + "a" * 100_000],
        ["campaign", "start", "c" * 100_000],
        ["trunk", "add", "t2", *TRUNK, "--uri", "sip:" + "h" * 100_000],
        ["trunk", "add", "t2", "--account", "acme", "--kind", "k" * 100_000, "--uri", "sip:h"],
        ["cdr", "export", "c1", "--format", "x" * 100_000],
    ],
)
def test_errors_echo_a_short_cut_of_the_input(acme: Run, args: list[str]) -> None:
    refused = acme.fails(*args)
    assert len(refused) < 300, refused[:300]
    assert "x" * 100 not in refused and "5" * 100 not in refused


# -- trunk passwords ----------------------------------------------------------------------


def test_password_on_the_command_line_is_refused(acme: Run) -> None:
    refused = acme.fails(
        "trunk", "add", "t2", *TRUNK, "--uri", "sip:h", "--username", "u", "--password", "pw"
    )
    assert "--password-file FILE, $DIALER_TRUNK_PASSWORD or the prompt" in refused
    assert "'pw'" not in refused


def test_password_from_a_file_or_the_environment(
    acme: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret p@ss\n")
    acme("trunk", "add", "t2", *TRUNK, "--uri", "sip:h", "--username", "u",
         "--password-file", str(secret), "--register")  # fmt: skip
    assert trunk_row("t2").password == "s3cret p@ss"  # the file's last line break is not in it
    monkeypatch.setenv("DIALER_TRUNK_PASSWORD", "from-env")
    acme("trunk", "add", "t3", *TRUNK, "--uri", "sip:h", "--username", "u")
    assert trunk_row("t3").password == "from-env"
    acme("trunk", "add", "t4", *TRUNK, "--uri", "sip:h")  # no username: no password
    assert trunk_row("t4").password is None
    for args in (["--json"], []):
        _, out, err = acme("trunk", "list", *args)
        assert "s3cret" not in out + err and "from-env" not in out + err
    assert "cannot read --password-file" in acme.fails(
        "trunk", "add", "t5", *TRUNK, "--uri", "sip:h", "--username", "u",
        "--password-file", str(tmp_path / "none"),
    )  # fmt: skip
    assert "--password-file needs --username" in acme.fails(
        "trunk", "add", "t5", *TRUNK, "--uri", "sip:h", "--password-file", str(secret)
    )


@pytest.mark.parametrize("address", ["127.0.0.1\r\nX-Evil: 1", "", "a b", "h" * 300])
def test_the_sip_bind_address_is_an_address(
    run: Run, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """It goes into every line's transports and Contact URIs."""
    monkeypatch.setenv("DIALER_SIP__BIND_ADDRESS", address)
    refused = no_unexpected(run.fails("account", "list"))
    assert "environment DIALER_SIP__BIND_ADDRESS: sip.bind_address" in refused
    assert "\r" not in refused and "h" * 50 not in refused  # escaped, cut
    monkeypatch.setenv("DIALER_SIP__BIND_ADDRESS", "::1")
    monkeypatch.setenv("DIALER_DATABASE__URL", "sqlite:///nowhere/x.db")
    assert "sip.bind_address" not in run.fails("account", "list")
