"""What a transaction's caller sees when the database misbehaves: one kind of error,
DatabaseUnavailable, for everything worth retrying (the worker retries those and goes
on); real bugs pass through unchanged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

import billing.storage
from billing.storage import Database, DatabaseUnavailable


def raising(code: str) -> object:
    def work(conn: Connection) -> None:
        conn.execute(text(f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{code}'; END $$"))

    return work


@pytest.mark.parametrize("code", ["40P01", "40001", "25006", "57014", "55P03"])
async def test_transient_postgresql_errors_are_outages(pg_url: str, code: str) -> None:
    """Deadlock, serialization failure, read-only (failover), cancelled, lock not
    available: the same transaction may simply run again."""
    async with Database(pg_url) as database:
        with pytest.raises(DatabaseUnavailable, match="retried"):
            await database.run(raising(code))  # type: ignore[arg-type]
        assert await database.run(lambda c: c.execute(text("SELECT 1")).scalar()) == 1


async def test_a_real_error_is_not_an_outage(pg_url: str) -> None:
    async with Database(pg_url) as database:
        with pytest.raises(IntegrityError):
            await database.run(raising("23505"))  # type: ignore[arg-type]


async def test_a_connection_killed_under_a_transaction(pg_url: str) -> None:
    async with Database(pg_url) as database:
        with pytest.raises(DatabaseUnavailable, match="lost the connection"):
            await database.run(
                lambda c: c.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            )
        # the dead connection left the pool: the next transaction works
        assert await database.run(lambda c: c.execute(text("SELECT 1")).scalar()) == 1


async def test_sqlite_locked_past_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(billing.storage, "SQLITE_BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "locked.db"
    async with Database(f"sqlite:///{path}", create=True) as database:
        await database.run(lambda c: c.execute(text("CREATE TABLE t (x INTEGER)")))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(DatabaseUnavailable, match="database is locked"):
                await database.run(lambda c: c.execute(text("INSERT INTO t VALUES (1)")))
        finally:
            other.close()
        await database.run(lambda c: c.execute(text("INSERT INTO t VALUES (1)")))


async def test_no_free_connection_in_the_pool(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pooled connection busy past the pool timeout (a server that stopped
    answering holds them): an outage, retried like the others."""
    monkeypatch.setattr(billing.storage, "POOL_TIMEOUT_SECONDS", 0.3)
    async with Database(pg_url, pool_size=1) as database:  # 1 + 1 overflow

        def slow(conn: Connection) -> None:
            conn.execute(text("SELECT pg_sleep(1.5)"))

        holders = [asyncio.create_task(database.run(slow)) for _ in range(2)]
        await asyncio.sleep(0.2)
        with pytest.raises(DatabaseUnavailable):
            await database.run(lambda c: c.execute(text("SELECT 1")))
        await asyncio.gather(*holders)


async def test_a_server_that_stops_answering(pg_url: str) -> None:
    """The worker's database has a command timeout: a statement never answered fails
    as an outage instead of hanging the transaction forever."""
    async with Database(pg_url, command_timeout=0.5) as database:
        with pytest.raises(DatabaseUnavailable):
            await database.run(lambda c: c.execute(text("SELECT pg_sleep(5)")))
        assert await database.run(lambda c: c.execute(text("SELECT 1")).scalar()) == 1
