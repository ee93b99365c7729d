"""Opening the database and migrating it (alembic, run in-process on our connection)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from billing.storage import Database, DatabaseUnavailable, normalise_url
from dialer.errors import DialerError

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaNotReady(DatabaseUnavailable, DialerError):
    """The database is reachable but not at the schema this code needs: the storage
    failure every `except DatabaseUnavailable` expects, and one of the dialer's errors."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def upgrade(database: Database) -> tuple[str | None, str]:
    """Migrate to the newest schema in one transaction. Returns (before, after)."""

    def run(conn: Connection) -> str | None:
        before = current_revision(conn)
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        return before

    return await database.run(run), head_revision()


async def check_schema(database: Database) -> None:
    """Raise a message that says what to run when the schema is missing or old."""
    revision = await database.run(current_revision, write=False)
    if revision is None:
        raise SchemaNotReady(f"database {database.shown} is not migrated: run `dialer db upgrade`")
    if revision != head_revision():
        raise SchemaNotReady(
            f"database {database.shown} is at schema {revision}, this version needs "
            f"{head_revision()}: run `dialer db upgrade`"
        )


#: SQLite writes these next to the database; it creates them with the database's mode
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_sqlite_file(url: str, *, create: bool = False) -> None:
    """A SQLite database holds trunk passwords and phone numbers. A new one (``create``)
    is made 0600 before SQLite opens it; SQLite gives its -wal, -shm and -journal files
    the database's mode. An existing one that others may read (0644 from an older
    version) loses those bits; its group bits stay: a group may be how operators share it.
    Nothing for PostgreSQL."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if create and path.parent.is_dir():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            info = file.lstat()  # a symlink is left alone: chmod would follow it
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o007:
                os.chmod(file, stat.S_IMODE(info.st_mode) & 0o770)


async def open_database(
    url: str, *, create: bool = False, command_timeout: float | None = None
) -> Database:
    """A database at the current schema (or, with ``create``, one that may be new)."""
    private_sqlite_file(url, create=create)
    database = Database(url, create=create, command_timeout=command_timeout)
    if not create:
        try:
            await check_schema(database)
        except BaseException:
            await database.dispose()
            raise
    return database
