"""Campaign operations shared by the CLI, the worker (and later MQTT)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
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
    FINAL_STATES,
    Action,
    CampaignState,
    PauseReason,
    Status,
    transition,
)
from dialer.contacts import normalise_phone, parse_contacts, read_csv
from dialer.errors import DialerError
from dialer.prompts import Prompt
from dialer.retry import RetryPolicy
from dialer.script import read_script
from dialer.text import has_controls, shorten
from dialer.windows import CallingWindow, format_days, parse_zone
from sip import uri as sip_uri

#: A call's id is NAME-CONTACT_ID-ATTEMPT-XXXXXX (dialer.worker) in a 64-character column:
#: 32 + 1 + 19 (any 64-bit id) + 1 + 3 (attempts <= MAX_RETRIES + 1) + 1 + 6 = 63. A longer
#: name made every call_id overflow on PostgreSQL, and the campaign was never dialled.
MAX_CAMPAIGN_NAME = 32
MAX_NAME = 64  # accounts and trunks: their columns, and MQTT topic levels
MAX_CHANNELS = 10_000
MIN_CPS = 0.01  # a call every 100 s
MAX_CPS = 1_000.0
MAX_RETRIES = 99
MAX_RETRY_DELAY = 30 * 86_400  # seconds
MAX_CALL_SECONDS = 86_400
MAX_SCRIPT_PATH = 500  # dialer_campaign.script
MAX_CALLER_ID = 32  # dialer_campaign.caller_id


def check_name(what: str, name: str, max_length: int = MAX_NAME) -> str:
    """Trunk and campaign names follow the account names' rule (they go into MQTT topics)."""
    # fullmatch: the rule's `$` would let a trailing newline through
    if len(name) > max_length or not ACCOUNT_NAME.fullmatch(name):
        raise DialerError(
            f"invalid {what} name '{shorten(name)}': 1-{max_length} letters, digits, '_', '.',"
            " '-', starting with a letter or digit"
        )
    return name


def check_int(what: str, value: int, low: int, high: int) -> int:
    """A whole number in [low, high]: the columns are 32-bit on PostgreSQL, and a huge one
    overflowed them as an "unexpected" error."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DialerError(f"{what} must be a whole number from {low} to {high}, got {value}")
    return value


def check_rate(what: str, value: float, high: float) -> float:
    """A finite rate in [MIN_CPS, high]: inf stopped the pacing with an OverflowError every
    round, nan bypassed it (every comparison with nan is false), and 1e-300 is a campaign
    that never dials while it says `running`."""
    if not math.isfinite(value) or not MIN_CPS <= value <= high:
        raise DialerError(
            f"{what} must be a number from {MIN_CPS:g} to {high:g} calls a second, got {value}"
        )
    return float(value)


def check_text(what: str, value: str, max_length: int) -> str:
    """A short option (window, days, zone, kind...): bounded, no control characters, so a
    message quoting it stays one short line."""
    if len(value) > max_length or has_controls(value):
        raise DialerError(
            f"bad {what} '{shorten(value)}': at most {max_length} characters, no control characters"
        )
    return value


def check_sip(check: Callable[..., str], value: str, *args: Any) -> str:
    """One of sip.uri's checks, its ValueError as the dialer's refusal."""
    try:
        return check(value, *args)
    except ValueError as exc:
        raise DialerError(str(exc)) from None


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
) -> dict[str, Any]:
    """Check and store a trunk; returns it as `trunk_document` shows it."""
    check_name("trunk", name)
    check_name("account", account)
    parse_trunk_kind(check_text("trunk kind", kind, 16))
    check_sip(sip_uri.check_sip_uri, uri, "trunk URI")
    if outbound_proxy is not None:
        check_sip(sip_uri.check_sip_uri, outbound_proxy, "trunk outbound proxy")
    if username is not None:
        check_sip(sip_uri.check_user, username, "trunk username")
    if password is not None:
        check_sip(sip_uri.check_text, password, "trunk password", sip_uri.MAX_PASSWORD)
        if username is None:
            raise DialerError("a trunk password needs --username")
    check_int("channels", channels, 1, MAX_CHANNELS)
    check_rate("cps", cps, MAX_CPS)
    if register and not username:
        raise DialerError("--register needs --username and a password")

    def add(conn: Connection) -> dict[str, Any]:
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
        return trunk_document(store.trunk_by_name(conn, name))

    added: dict[str, Any] = await db.run(add)
    return added


def trunk_document(row: Any) -> dict[str, Any]:
    """A trunk as `trunk list --json` shows it: never its username or password."""
    return {"name": row.name, "account": row.account, "kind": row.kind, "uri": row.uri,
            "register": row.registers, "channels": row.channels, "cps": row.cps}  # fmt: skip


async def list_trunks(db: Database) -> list[dict[str, Any]]:
    def read(conn: Connection) -> list[dict[str, Any]]:
        return [trunk_document(row) for row in store.trunks(conn)]

    found: list[dict[str, Any]] = await db.run(read, write=False)
    return found


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
    prompts_dir: str | None = None  # the script's `say.wav` folder (default: the script's)


async def create_campaign(db: Database, spec: CampaignSpec) -> None:
    check_name("campaign", spec.name, MAX_CAMPAIGN_NAME)
    check_name("account", spec.account)
    check_name("trunk", spec.trunk)
    window = CallingWindow.parse(
        check_text("window", spec.window, 32), check_text("days", spec.days, 64)
    )
    parse_zone(check_text("time zone", spec.timezone, 64))
    check_int("max concurrent", spec.max_concurrent, 1, MAX_CHANNELS)
    check_rate("cps", spec.cps, MAX_CPS)
    check_int("retries", spec.retries, 0, MAX_RETRIES)
    check_int("retry delay", spec.retry_delay, 0, MAX_RETRY_DELAY)
    check_int("max call seconds", spec.max_call_seconds, 1, MAX_CALL_SECONDS)
    if spec.agent_uri is not None:
        check_sip(sip_uri.check_sip_uri, spec.agent_uri, "agent URI")
    caller = None
    if spec.caller_id:
        caller = normalise_phone(check_text("caller id", spec.caller_id, MAX_CALLER_ID))
    script_path, script_text = None, None
    prompts: dict[str, Prompt] = {}
    if spec.script is not None:
        # validated now (errors name block and line), kept as text with its prompts' bytes:
        # what was checked runs, and no host file is read again
        check_text("script path", spec.script, MAX_SCRIPT_PATH)
        script_path, script_text, prompts = await asyncio.to_thread(
            read_script, spec.script, spec.prompts_dir
        )
        check_text("script path", script_path, MAX_SCRIPT_PATH)  # stored resolved
    retry = RetryPolicy(max_attempts=spec.retries + 1, delay_seconds=spec.retry_delay)

    def add(conn: Connection) -> None:
        account_id(conn, spec.account)
        trunk = store.trunk_by_name(conn, spec.trunk)
        if trunk.account != spec.account:
            raise DialerError(f"trunk {spec.trunk!r} belongs to account {trunk.account!r}")
        now = utcnow()
        campaign_id = store.insert_row(
            conn,
            store.CAMPAIGN,
            {
                "name": spec.name, "account": spec.account, "trunk_id": trunk.id,
                "script": script_path, "script_text": script_text,
                "caller_id": caller, "window": str(window),
                "days": format_days(window.days), "timezone": spec.timezone,
                "max_concurrent": spec.max_concurrent, "cps": spec.cps,
                "retry": retry.to_json(), "agent_uri": spec.agent_uri,
                "max_call_seconds": spec.max_call_seconds, "state": CampaignState.DRAFT.value,
                "created_at": now, "updated_at": now,
            },
            f"campaign {spec.name!r}",
        )  # fmt: skip
        store.insert_prompts(
            conn, campaign_id, {name: (p.sha256, p.content) for name, p in prompts.items()}
        )

    await db.run(add)


@dataclass
class ImportReport:
    imported: int
    already_there: int
    problems: list[str] = field(default_factory=list)


async def import_contacts(db: Database, campaign: str, path: Path) -> ImportReport:
    def fallback(conn: Connection) -> tuple[str, Any]:
        row = store.campaign_by_name(conn, campaign)
        return str(row.timezone), store.number_refusal(conn, row.account, row.trunk_id)

    zone, refuse = await db.run(fallback, write=False)
    parsed = parse_contacts(path, zone, refuse)

    def add(conn: Connection) -> int:
        row = store.campaign_by_name(conn, campaign, lock=True)  # not completed meanwhile
        if row.state in FINAL_STATES:
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
            "blocked": row.blocked_reason if row.state == CampaignState.RUNNING else None,
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


async def list_campaigns(db: Database) -> list[dict[str, Any]]:
    def read(conn: Connection) -> list[dict[str, Any]]:
        return [{"campaign": r.name, "account": r.account, "state": r.state,
                 "pause_reason": r.pause_reason} for r in store.campaigns(conn)]  # fmt: skip

    found: list[dict[str, Any]] = await db.run(read, write=False)
    return found


#: the call record as `cdr export` writes it (INTERFACE.md): CSV header, same keys in JSON
CDR_COLUMNS = (
    "call_id", "campaign", "account", "phone", "attempt", "direction", "invite_at",
    "ringing_at", "answered_at", "ended_at", "sip_status", "disposition", "hangup_by",
    "amd_reason", "agent_seconds", "billed_telephony_seconds", "billed_speech_seconds",
)  # fmt: skip


async def call_records(db: Database, campaign: str) -> list[dict[str, Any]]:
    """A campaign's calls in INVITE order: the CDR columns and the call's ``segments``."""

    def read(conn: Connection) -> list[dict[str, Any]]:
        row = store.campaign_by_name(conn, campaign)
        return [
            {col: getattr(r, col) for col in CDR_COLUMNS} | {"segments": r.segments}
            for r in store.calls_of(conn, row.id)
        ]

    found: list[dict[str, Any]] = await db.run(read, write=False)
    return found
