"""Opening the database and migrating it (alembic, run in-process on our own engine)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.storage import DatabaseUnavailable, make_engine, normalise_url

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaNotReady(DatabaseUnavailable):
    """The database is reachable but not at the schema this code needs."""


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return normalise_url(url).render_as_string(hide_password=True)


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Migrate to the newest schema. Returns (revision before, revision after)."""

    def run(sync_conn: Connection) -> str | None:
        before = MigrationContext.configure(sync_conn).get_current_revision()
        cfg = alembic_config()
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")
        return before

    try:
        async with engine.begin() as conn:
            before = await conn.run_sync(run)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise DatabaseUnavailable(
            f"cannot open database {engine.url.render_as_string(hide_password=True)}: "
            f"{_first_line(exc)}"
        ) from None
    return before, head_revision()


async def check_schema(engine: AsyncEngine) -> None:
    """Raise a message that says what to run when the schema is missing or old."""

    def current(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    shown = engine.url.render_as_string(hide_password=True)
    try:
        async with engine.connect() as conn:
            revision = await conn.run_sync(current)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise DatabaseUnavailable(f"cannot open database {shown}: {_first_line(exc)}") from None
    if revision is None:
        raise SchemaNotReady(f"database {shown} is not migrated: run `dialer db upgrade`")
    if revision != head_revision():
        raise SchemaNotReady(
            f"database {shown} is at schema {revision}, this version needs {head_revision()}:"
            " run `dialer db upgrade`"
        )


async def open_database(url: str, *, create: bool = False) -> AsyncEngine:
    """An engine on a migrated database (or, with ``create``, one that may be new)."""
    engine = make_engine(url, create=create)
    if not create:
        try:
            await check_schema(engine)
        except BaseException:
            await engine.dispose()
            raise
    return engine


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__
