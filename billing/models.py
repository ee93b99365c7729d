"""Ledger tables. Entries are append-only; the balance row is a materialised sum of them.

Times are naive UTC (the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


class Account(SQLModel, table=True):
    __tablename__ = "billing_account"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class CounterBalance(SQLModel, table=True):
    """Materialised balance per (account, counter), updated in the entry's transaction."""

    __tablename__ = "billing_balance"

    account_id: int = Field(foreign_key="billing_account.id", primary_key=True)
    counter: str = Field(sa_column=Column(String(16), primary_key=True))
    balance_seconds: int = Field(sa_column=Column(BigInteger, nullable=False))


class LedgerEntry(SQLModel, table=True):
    """One movement of seconds: + for a package bought, - for a debited increment."""

    __tablename__ = "billing_entry"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_billing_entry_key"),
        Index("ix_billing_entry_account_time", "account_id", "created_at"),
    )

    # BIGINT on PostgreSQL; INTEGER on SQLite, where only that spelling is the rowid alias.
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    account_id: int = Field(foreign_key="billing_account.id", nullable=False)
    counter: str = Field(sa_column=Column(String(16), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # "package" | "debit"
    seconds: int = Field(sa_column=Column(BigInteger, nullable=False))
    idempotency_key: str = Field(sa_column=Column(String(255), nullable=False))
    call_id: str | None = Field(default=None, sa_column=Column(String(128)))
    increment: int | None = None
    campaign: str | None = Field(default=None, sa_column=Column(String(128)))
    contact: str | None = Field(default=None, sa_column=Column(String(64)))
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class Package(SQLModel, table=True):
    """A minute package bought; its seconds reach the balance through its ledger entry."""

    __tablename__ = "billing_package"

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="billing_account.id", nullable=False)
    counter: str = Field(sa_column=Column(String(16), nullable=False))
    minutes: int = Field(nullable=False)
    entry_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("billing_entry.id"), nullable=False, unique=True)
    )
    bought_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
