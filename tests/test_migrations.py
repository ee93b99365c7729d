"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

import billing.models  # noqa: F401
from billing.storage import Database
from dialer import db


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    database = Database(db_url)

    def diff(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))

    try:
        await db.check_schema(database)  # at head
        assert await database.run(diff, write=False) == []
        before, after = await db.upgrade(database)  # idempotent
        assert before == after == db.head_revision()
    finally:
        await database.dispose()
