"""Alembic environment. Run through dialer.db.upgrade(), which hands us a connection."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import billing.models  # noqa: F401  (registers the ledger tables)
import dialer.models  # noqa: F401  (and the dialer tables)

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `dialer db upgrade`, not the alembic command")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
