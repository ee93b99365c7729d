"""The CLI's edge: each package's error root as one line and its exit code, the command
tree built from the group apps alone, --config anywhere, `trunk add --json`."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import Run

import billing
import dialer
import sip
from billing.errors import BillingError, DatabaseUnavailable, StorageError, UnknownAccount
from dialer import cli_amd
from dialer.errors import ConfigError, DialerError
from sip.errors import PlanError, SipError, SipSetupError
from sip.pool import PoolError

pytestmark = pytest.mark.usefixtures("isolated")

SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def _raising(error: BaseException) -> object:
    def classify(*_: object) -> None:
        raise error

    return classify


@pytest.mark.parametrize(
    "error",
    [
        DialerError("campaign 'x' refused"),
        ConfigError("config file a.toml: billing.period: bad"),
        BillingError("minutes must be a whole positive number"),
        UnknownAccount("ghost"),
        StorageError("database is read-only"),
        DatabaseUnavailable("database cli.db is not migrated: run `dialer db upgrade`"),
        PlanError("plan.toml: numbers: bad"),
        SipSetupError("port 5060 taken"),
        PoolError("line0 exited with code 1 at start"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_each_error_root_is_one_line_and_exit_1(
    run: Run, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(cli_amd, "classify", _raising(error))
    assert run.fails("amd", "classify", "x.wav", code=1) == f"error: {error}"


def test_a_message_of_several_lines_is_printed_on_one(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_amd, "classify", _raising(DialerError("first\nsecond\x1b[2J")))
    assert run.fails("amd", "classify", "x.wav", code=1) == r"error: first second\x1b[2J"


def test_a_bug_is_one_line_and_exit_70(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_amd, "classify", _raising(RuntimeError("boom")))
    assert run.fails("amd", "classify", "x.wav", code=70) == (
        "error: unexpected RuntimeError: boom (run with DIALER_LOGGING__LEVEL=debug for details)"
    )


def test_ctrl_c_exits_130(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_amd, "classify", _raising(KeyboardInterrupt()))
    assert run("amd", "classify", "x.wav", ok=False)[:2] == (130, "")


def test_usage_errors_exit_2(run: Run) -> None:
    assert run.fails("amd", "classify", code=2).startswith("error: Missing argument")
    assert run.fails("no-such-command", code=2) == "error: No such command 'no-such-command'."


def _exceptions_of(package: object) -> list[type[BaseException]]:
    found = []
    for module in pkgutil.iter_modules(package.__path__):  # type: ignore[attr-defined]
        if module.ispkg or module.name == "__main__":  # alembic scripts; runs the CLI
            continue
        loaded = importlib.import_module(f"{package.__name__}.{module.name}")  # type: ignore[attr-defined]
        found += [
            cls
            for _, cls in inspect.getmembers(loaded, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == loaded.__name__
        ]
    return found


@pytest.mark.parametrize(
    ("package", "root"), [(dialer, DialerError), (billing, BillingError), (sip, SipError)]
)
def test_one_error_root_per_package(package: object, root: type[Exception]) -> None:
    errors = _exceptions_of(package)
    assert root in errors
    assert [e.__name__ for e in errors if not issubclass(e, root)] == []
    assert len({e.__name__ for e in errors}) == len(errors)  # one ConfigError, not two


def test_storage_errors_are_not_rule_refusals() -> None:
    assert issubclass(DatabaseUnavailable, StorageError)
    assert not issubclass(UnknownAccount, StorageError)


def test_the_command_tree_needs_no_import_order() -> None:
    """Every group is in the tree as soon as dialer.cli is imported (a fresh process)."""
    names = subprocess.run(
        [sys.executable, "-c", "import typer; from dialer.cli import app; "
         "print(' '.join(sorted(typer.main.get_command(app).commands)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert names == sorted(
        ["account", "amd", "billing", "campaign", "cdr", "db", "demo", "dnc", "events", "sim",
         "trunk", "worker"]
    )  # fmt: skip


def test_config_is_taken_on_the_root_a_group_and_a_command(run: Run) -> None:
    for name in ("a", "b", "c"):
        Path(f"{name}.toml").write_text(f'[database]\nurl = "sqlite:///{name}.db"\n')
    run("--config", "a.toml", "db", "upgrade")
    run("db", "--config", "b.toml", "upgrade")
    run("--config", "a.toml", "db", "upgrade", "--config=c.toml")  # the last one wins
    assert sorted(p.name for p in Path().glob("*.db")) == ["a.db", "b.db", "c.db"]
    assert run.fails("account", "list", "--config", code=1) == "error: --config needs a file path"
    assert run.fails("--config", "", "account", "list", code=1) == (
        "error: --config needs a file path"
    )


@SQLITE_ONLY
def test_trunk_add_json(run: Run, database: str, tmp_path: Path) -> None:
    run("account", "create", "acme")
    secret = tmp_path / "secret"
    secret.write_text("hunter2\n")
    _, out, _ = run(
        "trunk", "add", "own", "--account", "acme", "--kind", "customer", "--uri",
        "sip:pbx.example:5080", "--username", "u", "--password-file", str(secret),
        "--register", "--channels", "5", "--cps", "2.5", "--json",
    )  # fmt: skip
    added = json.loads(out)  # one JSON document, nothing else on stdout
    assert added == {"trunk": "own", "account": "acme", "kind": "customer",
                     "uri": "sip:pbx.example:5080", "register": True, "channels": 5,
                     "cps": 2.5}  # fmt: skip
    assert "hunter2" not in out
    # the same fields as `trunk list --json` shows for it
    (listed,) = run.json("trunk", "list")["trunks"]  # type: ignore[index]
    assert {"trunk": listed.pop("name"), **listed} == added

    refused = run.fails("trunk", "add", "own", "--account", "acme", "--kind", "customer",
                        "--uri", "sip:x", "--json", code=1)  # fmt: skip
    assert refused == "error: trunk 'own' already exists"
