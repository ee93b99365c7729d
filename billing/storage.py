"""The SQL engine the ledger needs: async, and serialising writers on SQLite.

SQLAlchemy's SQLite dialect drops ``FOR UPDATE``, and pysqlite's deferred BEGIN lets
two writers read the same balance. So every SQLite transaction starts with
``BEGIN IMMEDIATE`` (one writer at a time, the others wait up to the busy timeout),
in WAL mode so readers are not blocked. PostgreSQL needs nothing special: the ledger's
writes are single atomic ``UPDATE ... RETURNING`` statements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from billing.errors import BillingError

SQLITE_BUSY_TIMEOUT_MS = 30_000

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


class DatabaseUnavailable(BillingError):
    """The database cannot be opened; the message says what to do."""


def normalise_url(url: str) -> URL:
    """Accept plain ``sqlite:///`` and ``postgresql://`` URLs and pick the async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"database url {url!r} is not a valid URL") from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise DatabaseUnavailable(
            f"database url uses {parsed.drivername!r}; use sqlite:///FILE or postgresql://..."
        )
    return parsed.set(drivername=driver)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory database or another backend."""
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def make_engine(url: str, *, create: bool = False, **engine_kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``.

    ``create=False`` refuses a SQLite file that does not exist yet instead of silently
    creating an empty one (only ``dialer db upgrade`` should create it).
    """
    parsed = normalise_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        if not create and not path.exists():
            raise DatabaseUnavailable(
                f"database file {str(path)!r} does not exist: run `dialer db upgrade` first"
            )
        if create and not path.parent.exists():
            raise DatabaseUnavailable(f"cannot create database {str(path)!r}: no such folder")
        engine_kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    engine = create_async_engine(parsed, **engine_kwargs)
    if parsed.drivername.startswith("sqlite"):
        _serialise_sqlite_writers(engine)
    return engine


def _serialise_sqlite_writers(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
