"""Campaign operations shared by the CLI, the worker (and later MQTT)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from billing.ledger import ACCOUNT_NAME, account_id, gate
from billing.period import utcnow
from billing.storage import Database
from billing.tariff import Tariff, TrunkKind, parse_trunk_kind
from dialer import store
from dialer.campaign_state import (
    Action,
    CampaignState,
    PauseReason,
    Status,
    transition,
)
from dialer.contacts import normalise_phone, parse_contacts, read_csv
from dialer.errors import DialerError
from dialer.retry import RetryPolicy
from dialer.script import read_script
from dialer.windows import CallingWindow, format_days, parse_zone


def check_name(what: str, name: str) -> str:
    """Trunk and campaign names follow the account names' rule (they go into MQTT topics)."""
    if not ACCOUNT_NAME.match(name):
        raise DialerError(f"invalid {what} name {name!r}: 1-64 letters, digits, '_', '.', '-'")
    return name


def status_of(row: Any) -> Status:
    reason = PauseReason(row.pause_reason) if row.pause_reason else None
    return Status(CampaignState(row.state), reason)


async def add_trunk(
    db: Database,
    *,
    name: str,
    account: str,
    kind: str,
    uri: str,
    username: str | None = None,
    password: str | None = None,
    register: bool = False,
    channels: int = 30,
    cps: float = 10.0,
    outbound_proxy: str | None = None,
) -> None:
    check_name("trunk", name)
    parse_trunk_kind(kind)
    for label, value in (("uri", uri), ("outbound proxy", outbound_proxy)):
        if value is not None and not value.startswith(("sip:", "sips:")):
            raise DialerError(f"trunk {label} must be a sip: or sips: URI, got {value!r}")
    if channels < 1 or cps <= 0:
        raise DialerError("channels must be >= 1 and cps > 0")
    if register and not username:
        raise DialerError("--register needs --username and --password")

    def add(conn: Connection) -> None:
        account_id(conn, account)
        store.insert_row(
            conn,
            store.TRUNK,
            {
                "name": name, "account": account, "kind": kind, "uri": uri,
                "username": username, "password": password, "registers": register,
                "channels": channels, "cps": cps, "outbound_proxy": outbound_proxy,
                "created_at": utcnow(),
            },
            f"trunk {name!r}",
        )  # fmt: skip

    await db.run(add)


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    account: str
    trunk: str
    script: str | None = None
    caller_id: str | None = None
    max_concurrent: int = 4
    cps: float = 1.0
    window: str = "00:00-24:00"
    days: str = "all"
    timezone: str = "UTC"
    retries: int = 2
    retry_delay: int = 300
    agent_uri: str | None = None
    max_call_seconds: int = 600


async def create_campaign(db: Database, spec: CampaignSpec) -> None:
    check_name("campaign", spec.name)
    window = CallingWindow.parse(spec.window, spec.days)
    parse_zone(spec.timezone)
    if spec.max_concurrent < 1 or spec.cps <= 0 or spec.max_call_seconds < 1:
        raise DialerError("max concurrent must be >= 1, cps > 0, max call seconds >= 1")
    if spec.retries < 0:
        raise DialerError(f"retries must be >= 0, got {spec.retries}")
    if spec.agent_uri is not None and not spec.agent_uri.startswith(("sip:", "sips:")):
        raise DialerError(f"agent URI must be a sip: URI, got {spec.agent_uri!r}")
    script_path, script_text = None, None
    if spec.script is not None:
        # validated now (errors name block and line), kept as text: what was checked runs
        script_path, script_text = await asyncio.to_thread(read_script, spec.script)
    caller = normalise_phone(spec.caller_id) if spec.caller_id else None
    retry = RetryPolicy(max_attempts=spec.retries + 1, delay_seconds=spec.retry_delay)

    def add(conn: Connection) -> None:
        account_id(conn, spec.account)
        trunk = store.trunk_by_name(conn, spec.trunk)
        if trunk.account != spec.account:
            raise DialerError(f"trunk {spec.trunk!r} belongs to account {trunk.account!r}")
        now = utcnow()
        store.insert_row(
            conn,
            store.CAMPAIGN,
            {
                "name": spec.name, "account": spec.account, "trunk_id": trunk.id,
                "script": script_path, "script_text": script_text,
                "caller_id": caller, "window": str(window),
                "days": format_days(window.days), "timezone": spec.timezone,
                "max_concurrent": spec.max_concurrent, "cps": spec.cps,
                "retry": retry.to_json(), "agent_uri": spec.agent_uri,
                "max_call_seconds": spec.max_call_seconds, "state": "draft",
                "created_at": now, "updated_at": now,
            },
            f"campaign {spec.name!r}",
        )  # fmt: skip

    await db.run(add)


@dataclass
class ImportReport:
    imported: int
    already_there: int
    problems: list[str] = field(default_factory=list)


async def import_contacts(db: Database, campaign: str, path: Path) -> ImportReport:
    def fallback(conn: Connection) -> str:
        return str(store.campaign_by_name(conn, campaign).timezone)

    zone = await db.run(fallback, write=False)
    parsed = parse_contacts(path, zone)

    def add(conn: Connection) -> int:
        row = store.campaign_by_name(conn, campaign, lock=True)  # not completed meanwhile
        if row.state in ("completed", "stopped"):
            raise DialerError(f"campaign {campaign!r} is {row.state}: no more contacts")
        return store.insert_contacts(
            conn,
            row.id,
            [
                {"phone": c.phone, "timezone": c.timezone, "attributes": c.attributes}
                for c in parsed.contacts
            ],
        )

    imported = await db.run(add)
    return ImportReport(imported, len(parsed.contacts) - imported, parsed.problems)


async def import_dnc(db: Database, account: str, path: Path) -> ImportReport:
    problems: list[str] = []
    phones: list[str] = []
    for line, row in read_csv(path):
        try:
            phones.append(normalise_phone(row.get("phone", "")))
        except DialerError as exc:
            problems.append(f"line {line}: {exc}")

    def add(conn: Connection) -> int:
        account_id(conn, account)
        return store.add_dnc(conn, account, phones, utcnow())

    added = await db.run(add)
    return ImportReport(added, len(set(phones)) - added, problems)


async def change_state(db: Database, tariff: Tariff, campaign: str, action: Action) -> Status:
    """start | pause | resume | stop, with the balance gate for start and resume."""

    def change(conn: Connection) -> Status:
        row = store.campaign_by_name(conn, campaign, lock=True)
        trunk = store.trunk_by_id(conn, row.trunk_id)
        decision = gate(conn, account_id(conn, row.account), TrunkKind(trunk.kind), tariff)
        new = transition(
            status_of(row), action, balance_ok=decision.allowed, balance_reason=decision.reason()
        )
        if action is Action.START and store.unfinished(conn, row.id) == 0:
            raise DialerError(f"campaign {campaign!r} has no contacts to call: import some first")
        store.set_status(conn, row.id, new, utcnow())
        return new

    return await db.run(change)


async def pause_for_balance(db: Database, account: str) -> list[str]:
    """Every running (or user-paused) campaign of the account -> paused (balance)."""

    def pause(conn: Connection) -> list[str]:
        paused = []
        for row in store.campaigns_of_account(conn, account, lock=True):
            status = status_of(row)
            if status.state in (CampaignState.RUNNING, CampaignState.PAUSED):
                new = transition(status, Action.PAUSE_BALANCE)
                if new != status:
                    store.set_status(conn, row.id, new, utcnow())
                    paused.append(row.name)
        return paused

    return await db.run(pause)


async def campaign_status(db: Database, campaign: str) -> dict[str, Any]:
    def read(conn: Connection) -> dict[str, Any]:
        row = store.campaign_by_name(conn, campaign)
        counts = store.contact_counts(conn, row.id)
        return {
            "campaign": row.name,
            "account": row.account,
            "state": row.state,
            "pause_reason": row.pause_reason,
            "contacts": {
                "total": counts["total"],
                "pending": counts["pending"],
                "in_progress": counts["in_progress"],
                "done": counts["done"],
            },
            "calls": store.call_counts(conn, row.id),
            "billed_seconds": store.billed_totals(conn, row.id),
        }

    return await db.run(read, write=False)
