"""The database the ledger (and later the dialer) runs its transactions on.

Transactions are plain functions of a SQLAlchemy ``Connection`` (Core statements, no
I/O of their own), handed to ``Database.run``. How they run depends on the backend:

* PostgreSQL: on the async engine (asyncpg), via ``AsyncConnection.run_sync``. Writers
  rely on single atomic ``UPDATE ... RETURNING`` statements and row locks.
* SQLite: on the blocking pysqlite driver, one whole transaction per hop to a worker
  thread. Measured here (docs/benchmarks.md): aiosqlite costs ~0.27 ms per statement in
  thread hand-offs, which capped a debit at ~300/s; one hop per transaction is several
  times faster. Write transactions start with ``BEGIN IMMEDIATE`` (SQLAlchemy's SQLite
  dialect drops ``FOR UPDATE``, and a deferred BEGIN would let two writers read the same
  balance); read transactions use a plain deferred BEGIN, in WAL mode so they never
  block the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from billing.errors import DatabaseUnavailable as DatabaseUnavailable

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 30_000
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "sslpassword"})
SQLITE_READERS = 4
CONNECT_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 30
#: PostgreSQL errors after which the same transaction may simply be run again:
#: serialization failure, deadlock, read-only (a failover in progress), statement
#: cancelled or timed out, lock not available, and the connection/shutdown classes
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "25006", "57014", "55P03"})
_TRANSIENT_CLASSES = ("08", "57P")
_SQLITE_TRANSIENT = ("database is locked", "database is busy")

_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def normalise_url(url: str) -> URL:
    """Accept ``sqlite:///FILE`` and ``postgresql://...`` (any driver suffix) and pick ours."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # never echo it: it may hold a password
        raise DatabaseUnavailable(
            "database url is not a valid URL: use sqlite:///FILE or postgresql://user@host/db"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseUnavailable(
            f"database url uses {parsed.drivername!r}; use sqlite:///FILE or postgresql://..."
        )
    return parsed.set(drivername=driver)


def describe(url: str | URL) -> str:
    """The URL without its password, for messages and logs."""
    parsed = normalise_url(url) if isinstance(url, str) else url
    query = {k: ("***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


class Database:
    """One database, whichever backend; ``run`` executes a transaction function on it."""

    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        pool_size: int = 5,
        command_timeout: float | None = None,
    ) -> None:
        """``command_timeout`` (PostgreSQL): a statement not answered within it fails as
        an outage (for the worker, whose writes are retried; not for migrations or
        reports, which may legitimately run long)."""
        self.url = normalise_url(url)
        self.shown = describe(self.url)
        self.dialect = self.url.get_backend_name()
        self._async: AsyncEngine | None = None
        self._sync: Engine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        if self.dialect == "sqlite":
            self._open_sqlite(create)
        else:
            self._async = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                pool_timeout=POOL_TIMEOUT_SECONDS,
                # a server that stops answering (partition, power loss) must not hang a
                # transaction forever: it fails and is retried like any outage
                connect_args={"timeout": CONNECT_TIMEOUT_SECONDS,
                              "command_timeout": command_timeout},
            )  # fmt: skip

    def _open_sqlite(self, create: bool) -> None:
        database = self.url.database
        if database in (None, "", ":memory:"):
            raise DatabaseUnavailable(
                "use a SQLite file (sqlite:///FILE), not an in-memory database"
            )
        path = Path(database)
        if not create and not path.exists():
            raise DatabaseUnavailable(
                f"database file {str(path)!r} does not exist: run `dialer db upgrade` first"
            )
        if create and not path.parent.exists():
            raise DatabaseUnavailable(f"cannot create database {str(path)!r}: no such folder")
        self._sync = create_engine(
            self.url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=SQLITE_READERS + 1,
            max_overflow=0,
        )
        _configure_sqlite(self._sync)
        # One writer thread: SQLite has one writer at a time anyway.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="sqlite-reader")

    async def run(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction: committed if it returns, rolled back if it raises.

        Failing to connect raises DatabaseUnavailable; errors of ``work`` itself pass through.
        """
        if self._async is not None:
            conn = self._async.connect()
            try:
                await conn.start()
            except (DBAPIError, OSError, ValueError, OverflowError, PoolTimeout) as exc:
                raise self._unavailable(exc) from None
            try:
                if not write:
                    # one snapshot for every query of a report
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                    return await conn.run_sync(work)
                async with conn.begin():
                    return await conn.run_sync(work)
            except DBAPIError as exc:
                # the server went away (restart, failover): SQLAlchemy has dropped the
                # connection from the pool; callers see one kind of outage and may retry
                if exc.connection_invalidated:
                    raise self._lost(exc) from None
                if _transient(exc):
                    raise self._busy(exc) from None
                raise
            except OSError as exc:
                raise self._lost(exc) from None
            finally:
                with contextlib.suppress(DBAPIError, OSError):
                    await conn.close()
        assert self._writer is not None and self._readers is not None
        pool = self._writer if write else self._readers
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, self._sqlite_transaction, work, write)

    def _sqlite_transaction(self, work: Callable[[Connection], T], write: bool) -> T:
        assert self._sync is not None
        try:
            conn = self._sync.connect().execution_options(sqlite_immediate=write)
        except (DBAPIError, OSError, ValueError) as exc:
            raise self._unavailable(exc) from None
        try:
            with conn, conn.begin():
                return work(conn)
        except OperationalError as exc:
            if any(m in str(exc.orig).lower() for m in _SQLITE_TRANSIENT):
                raise self._busy(exc) from None
            raise

    def _busy(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"database {self.shown} could not complete a transaction (it is retried): "
            f"{first_line(exc)}"
        )

    def _lost(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"lost the connection to database {self.shown}: {first_line(exc)}"
        )

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"cannot open database {self.shown}: {first_line(exc)}")

    async def dispose(self) -> None:
        if self._async is not None:
            await self._async.dispose()
        if self._sync is not None:
            self._sync.dispose()
        for pool in (self._writer, self._readers):
            if pool is not None:
                pool.shutdown(wait=True)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", True)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _transient(exc: DBAPIError) -> bool:
    inner = exc.orig
    code = str(getattr(inner, "sqlstate", None) or getattr(inner, "pgcode", None) or "")
    if not code:  # asyncpg's wrapped exception keeps the original as __cause__
        cause = getattr(inner, "__cause__", None)
        code = str(getattr(cause, "sqlstate", None) or "")
    return code in _TRANSIENT_SQLSTATES or code.startswith(_TRANSIENT_CLASSES)


def first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__
