"""Shared fixtures: real SQLite files and real PostgreSQL databases, the CLI runner.

PostgreSQL is the local server (127.0.0.1:5432, database `test`). If it is down we start
it; if it still cannot be reached the tests FAIL (never skip): the ledger's locking is
only proven on PostgreSQL. Each test gets its own database, copied from a migrated
template, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from clitools import Run

from billing.storage import Database
from dialer import db
from dialer.cli import OPTIONS
from dialer.logs import configure_logging

ADMIN_DSN = os.environ.get(
    "DIALER_TEST_PG_DSN", "postgresql://postgres:postgres@127.0.0.1:5432/test"
)


def _pg_url(database: str) -> str:
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{database}".replace("postgresql://", "postgresql+asyncpg://", 1)


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def migrate(url: str) -> None:
    async with Database(url, create=True) as database:
        await db.upgrade(database)


def _pg_reachable() -> bool:
    try:
        asyncio.run(_admin("SELECT 1"))
        return True
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


def _start_postgres() -> None:
    versions = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))
    if not versions:
        return
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    if os.geteuid() != 0:
        command.insert(0, "sudo")
    subprocess.run(command, check=False, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pg_server() -> None:
    """The local PostgreSQL server, started if it is down; unreachable = fail, never skip."""
    if not _pg_reachable():
        _start_postgres()
        deadline = time.monotonic() + 30
        while not _pg_reachable() and time.monotonic() < deadline:
            time.sleep(0.5)
    if not _pg_reachable():
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_DSN} even after trying to start it; "
            "run ./dev setup"
        )


@pytest.fixture(scope="session")
def pg_template(pg_server: None) -> Iterator[str]:
    """A migrated template database."""
    name = f"dialer_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))

    asyncio.run(migrate(_pg_url(name)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"dialer_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _pg_url(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_empty_url(pg_server: None) -> Iterator[str]:
    """A fresh PostgreSQL database with no schema."""
    name = f"dialer_empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield _pg_url(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(migrate(url))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each ledger test runs on real SQLite and on real PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture(scope="session")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 s 440 Hz tone, 16 kHz mono WAV (sox)."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "1", "sine", "440",
         "vol", "0.5"],
        check=True,
    )  # fmt: skip
    return path


# -- the CLI, in process ------------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("DIALER_"):
            monkeypatch.delenv(key)
    OPTIONS.config = None


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    yield Run(capsys)
    # the CLI pointed the logs at this test's captured stderr, closed after it: point
    # them back, or the next test's first log line fails
    configure_logging(stream=sys.__stderr__)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, run: Run) -> str:
    """An upgraded, empty database, chosen by environment override."""
    url = (
        f"sqlite:///{Path.cwd() / 'cli.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("pg_empty_url"))
    )
    monkeypatch.setenv("DIALER_DATABASE__URL", url)
    run("db", "upgrade")
    return url


# -- markers by what a test needs (pyproject.toml) ----------------------------------------

SERVERS = {"sip", "postgres", "mqtt"}
# fixtures that run a program (sox, festival): a test using one is not pure
PROGRAMS = {"tone_wav", "samples"}
# tests with no server that are still not pure, by node id (a prefix of it)
NOT_PURE = {
    "test_ledger_concurrency.py::": "eight processes",
    "test_cli.py::test_console_script_prints_one_error_line": "the console script",
    "test_input_secrets.py::test_the_password_prompt_does_not_echo": "a process on a pty",
    "test_worker_faults.py::": "seconds of worker rounds each",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`postgres` for the tests that reach the server (its fixtures, or the "postgresql"
    side of a parametrised backend); `sip` and `mqtt` come from the modules' pytestmark;
    `pure` for the rest unless it runs a program."""
    modules = {item.nodeid.removeprefix("tests/").split("::")[0]: item.module for item in items
               if isinstance(item, pytest.Function)}  # fmt: skip
    for prefix in NOT_PURE:  # a renamed test would turn pure unnoticed
        module, _, name = prefix.partition("::")
        if module in modules and name and not hasattr(modules[module], name):
            raise pytest.UsageError(f"NOT_PURE names no test: {prefix}")
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "pg_server" in fixtures or "postgresql" in params:
            item.add_marker(pytest.mark.postgres)
        needs = {mark.name for mark in item.iter_markers()}
        node = item.nodeid.removeprefix("tests/")
        named = any(node.startswith(prefix) for prefix in NOT_PURE)
        if not needs & (SERVERS | {"pure"}) and not fixtures & PROGRAMS and not named:
            item.add_marker(pytest.mark.pure)
