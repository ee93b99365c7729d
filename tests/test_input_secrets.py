"""Trunk passwords at rest and on the way in: the SQLite file and its
side files private, the password asked for on a terminal without echo, never printed."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clitools import Run
from conftest import migrate

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask most shells have (022): files would be created 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def read_until(fd: int, marker: bytes | None) -> bytes:
    """Read the terminal until ``marker`` shows (None: until the child is gone); a child
    that stops writing for 60 s fails the test instead of hanging it."""
    seen = b""
    while marker is None or marker not in seen:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, f"the child stopped writing: {seen!r}"
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child has gone
            chunk = b""
        if not chunk:
            assert marker is None, seen
            return seen
        seen += chunk
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_sqlite_database_is_private(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    path = tmp_path / "dialer.db"
    monkeypatch.setenv("DIALER_DATABASE__URL", f"sqlite:///{path}")
    run("db", "upgrade")
    assert mode(path) == 0o600
    run("account", "create", "acme")
    secret = tmp_path / "secret"
    secret.write_text("hunter2")
    run("trunk", "add", "t", "--account", "acme", "--kind", "platform", "--uri", "sip:h",
        "--username", "u", "--password-file", str(secret))  # fmt: skip
    with sqlite3.connect(path) as reader:  # keep the WAL open to look at it
        reader.execute("SELECT count(*) FROM dialer_trunk").fetchone()
        side = [Path(f"{path}{s}") for s in ("-wal", "-shm") if Path(f"{path}{s}").exists()]
        assert side and all(mode(p) == 0o600 for p in side), [oct(mode(p)) for p in side]


def test_an_older_world_readable_database_is_narrowed(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    path = tmp_path / "dialer.db"
    url = f"sqlite:///{path}"
    asyncio.run(migrate(url))  # as an older version did: 0644
    os.chmod(path, 0o644)
    assert mode(path) == 0o644
    monkeypatch.setenv("DIALER_DATABASE__URL", url)
    run("account", "list")
    assert mode(path) == 0o640  # others lose read; the group may be how operators share it


def test_the_password_prompt_does_not_echo(tmp_path: Path, loose_umask: None) -> None:
    """stdin a terminal, a --username and no other source: a hidden prompt."""
    db = tmp_path / "dialer.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALER_")}
    env["DIALER_DATABASE__URL"] = f"sqlite:///{db}"
    env["DIALER_LOGGING__LEVEL"] = "debug"  # nor in the debug log
    asyncio.run(migrate(env["DIALER_DATABASE__URL"]))
    subprocess.run([sys.executable, "-m", "dialer", "account", "create", "acme"], env=env,
                   cwd=tmp_path, check=True, capture_output=True)  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "dialer", "trunk", "add", "t",
                  "--account", "acme", "--kind", "customer", "--uri", "sip:pbx.example",
                  "--username", "alice", "--register"], env)  # fmt: skip
    try:
        seen = read_until(fd, b"password for alice")
        # getpass turns echo off with TCSAFLUSH, which drops input typed before: wait for it
        for _ in range(1200):  # at most a minute
            if not termios.tcgetattr(fd)[3] & termios.ECHO:
                break
            time.sleep(0.05)
        os.write(fd, b"pr0mpted secret\n")
        seen += read_until(fd, None)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # never a child left waiting
        raise
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"trunk t added" in seen
    assert b"pr0mpted" not in seen  # neither echoed nor logged
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT password FROM dialer_trunk").fetchone() == ("pr0mpted secret",)
