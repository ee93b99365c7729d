"""Dialer tables: trunks, campaigns, contacts, call records (CDR), do-not-call list,
the workers running.

Accounts live in the billing ledger; these tables name them (``account``), and the
dialer asks billing about them, never its tables. Times are naive UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


class Trunk(SQLModel, table=True):
    __tablename__ = "dialer_trunk"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    account: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    kind: str = Field(sa_column=Column(String(16), nullable=False))  # platform | customer
    uri: str = Field(sa_column=Column(String(255), nullable=False))
    outbound_proxy: str | None = Field(default=None, sa_column=Column(String(255)))
    username: str | None = Field(default=None, sa_column=Column(String(128)))
    password: str | None = Field(default=None, sa_column=Column(String(255)))
    registers: bool = False
    channels: int = 30
    cps: float = Field(default=10.0, sa_column=Column(Float, nullable=False))
    #: the shared calls-per-second bucket (every worker draws from it); None: full
    pace_tokens: float | None = Field(default=None, sa_column=Column(Float))
    pace_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    #: numbers it may carry (dialer.number_policy): "US,CA" or None (any country)...
    allow_countries: str | None = Field(default=None, sa_column=Column(String(1200)))
    #: ... and "mobile,fixed_line" or None (the default types)
    allow_types: str | None = Field(default=None, sa_column=Column(String(255)))
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class AccountPolicy(SQLModel, table=True):
    """An account's number policy (dialer.number_policy); no row: the defaults."""

    __tablename__ = "dialer_account_policy"

    account: str = Field(sa_column=Column(String(64), primary_key=True))
    allow_countries: str | None = Field(default=None, sa_column=Column(String(1200)))
    allow_types: str | None = Field(default=None, sa_column=Column(String(255)))
    updated_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class Campaign(SQLModel, table=True):
    __tablename__ = "dialer_campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    account: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    trunk_id: int = Field(sa_column=Column(ForeignKey("dialer_trunk.id"), nullable=False))
    script: str | None = Field(default=None, sa_column=Column(String(500)))  # its path
    script_text: str | None = Field(default=None, sa_column=Column(Text))  # as validated
    caller_id: str | None = Field(default=None, sa_column=Column(String(32)))
    window: str = Field(default="00:00-24:00", sa_column=Column(String(16), nullable=False))
    days: str = Field(default="mon,tue,wed,thu,fri,sat,sun", sa_column=Column(String(32)))
    timezone: str = Field(default="UTC", sa_column=Column(String(64), nullable=False))
    max_concurrent: int = 4
    cps: float = Field(default=1.0, sa_column=Column(Float, nullable=False))
    pace_tokens: float | None = Field(default=None, sa_column=Column(Float))
    pace_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    retry: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    agent_uri: str | None = Field(default=None, sa_column=Column(String(255)))
    max_call_seconds: int = 600
    state: str = Field(default="draft", sa_column=Column(String(16), nullable=False))
    pause_reason: str | None = Field(default=None, sa_column=Column(String(16)))
    #: why a running campaign cannot dial now (set and cleared by the workers)
    blocked_reason: str | None = Field(default=None, sa_column=Column(String(255)))
    created_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class Contact(SQLModel, table=True):
    __tablename__ = "dialer_contact"
    __table_args__ = (
        UniqueConstraint("campaign_id", "phone", name="uq_dialer_contact_phone"),
        Index("ix_dialer_contact_due", "campaign_id", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(sa_column=Column(ForeignKey("dialer_campaign.id"), nullable=False))
    phone: str = Field(sa_column=Column(String(32), nullable=False))
    timezone: str = Field(sa_column=Column(String(64), nullable=False))
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    state: str = Field(default="pending", sa_column=Column(String(16), nullable=False))
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    lease_owner: str | None = Field(default=None, sa_column=Column(String(64)))
    lease_until: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    last_disposition: str | None = Field(default=None, sa_column=Column(String(32)))
    #: why it was finished without a call (number policy, a bad attribute)
    last_reason: str | None = Field(default=None, sa_column=Column(String(255)))


class CampaignPrompt(SQLModel, table=True):
    """A script's pre-recorded prompt, kept with the campaign as its text is: the host
    file is read once, at create; workers play this copy (checked by its hash)."""

    __tablename__ = "dialer_campaign_prompt"

    campaign_id: int = Field(sa_column=Column(ForeignKey("dialer_campaign.id"), primary_key=True))
    name: str = Field(sa_column=Column(String(255), primary_key=True))  # as in the script
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CallRecord(SQLModel, table=True):
    """One call attempt (CDR); the columns of INTERFACE.md plus the transfer segments."""

    __tablename__ = "dialer_call"
    __table_args__ = (Index("ix_dialer_call_campaign", "campaign_id", "invite_at"),)

    call_id: str = Field(sa_column=Column(String(64), primary_key=True))
    campaign_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("dialer_campaign.id"))
    )
    account: str = Field(sa_column=Column(String(64), nullable=False))
    contact_id: int | None = Field(default=None, sa_column=Column(ForeignKey("dialer_contact.id")))
    phone: str = Field(sa_column=Column(String(64), nullable=False))
    attempt: int = 1
    direction: str = Field(default="outbound", sa_column=Column(String(16), nullable=False))
    trunk_kind: str = Field(default="platform", sa_column=Column(String(16), nullable=False))
    line: str | None = Field(default=None, sa_column=Column(String(32)))
    invite_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    ringing_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    answered_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime()))
    sip_status: int | None = None
    disposition: str | None = Field(default=None, sa_column=Column(String(32)))
    hangup_by: str | None = Field(default=None, sa_column=Column(String(16)))
    amd_reason: str | None = Field(default=None, sa_column=Column(String(255)))
    agent_seconds: float = 0.0
    billed_telephony_seconds: int = 0
    billed_speech_seconds: int = 0
    segments: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))


class DncEntry(SQLModel, table=True):
    __tablename__ = "dialer_dnc"
    __table_args__ = (UniqueConstraint("account", "phone", name="uq_dialer_dnc"),)

    id: int | None = Field(default=None, primary_key=True)
    account: str = Field(sa_column=Column(String(64), nullable=False))
    phone: str = Field(sa_column=Column(String(32), nullable=False))
    added_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))


class WorkerPresence(SQLModel, table=True):
    """A running worker, announced by itself and kept fresh by its heartbeat
    (dialer.liveness). ``run`` tells one start of an id from the next; ``beats`` is what
    other workers watch (the times are the worker's own clock: for people to read, never
    compared across hosts). The row goes when the worker stops cleanly, or when another
    worker has found it dead and settled its calls."""

    __tablename__ = "dialer_worker"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    run: str = Field(sa_column=Column(String(32), nullable=False))
    host: str = Field(sa_column=Column(String(255), nullable=False))
    pid: int = Field(sa_column=Column(Integer, nullable=False))
    version: str = Field(sa_column=Column(String(32), nullable=False))
    #: silent longer than this (seconds), it is dead: its own setting, announced here
    dead_after: float = Field(sa_column=Column(Float, nullable=False))
    beats: int = Field(sa_column=Column(Integer, nullable=False))
    started_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(DateTime(), nullable=False))
