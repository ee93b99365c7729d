"""The commands campaign managers give, one layer for the CLI and MQTT.

Both edges call these and get the same documents and the same refusals (typed errors:
DialerError, BillingError), so a rule like "start is refused while a counter the trunk
charges is not positive" holds however the command arrives.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from billing.ledger import Ledger, account_id, parse_minutes
from billing.period import utcnow
from billing.storage import Database
from billing.tariff import Counter, parse_counter
from dialer import db, store
from dialer.campaign_state import Action
from dialer.campaigns import campaign_status, change_state
from dialer.errors import DialerError
from dialer.number_policy import NumberPolicy

CAMPAIGN_ACTIONS = ("start", "pause", "resume", "stop", "status")
COUNTERS = tuple(c.value for c in Counter)


async def campaign_command(
    ledger: Ledger, campaign: str, action: str, *, account: str | None = None
) -> dict[str, Any]:
    """start | pause | resume | stop | status; ``account`` (from an MQTT topic) must own
    the campaign."""
    if action not in CAMPAIGN_ACTIONS:
        raise DialerError(f"unknown action {action!r} (one of {', '.join(CAMPAIGN_ACTIONS)})")
    status = await campaign_status(ledger.database, campaign)
    if account is not None and status["account"] != account:
        raise DialerError(f"unknown campaign {campaign!r}")  # never tell it exists elsewhere
    if action != "status":
        await change_state(ledger.database, ledger.tariff, campaign, Action(action))
        status = await campaign_status(ledger.database, campaign)
    return status


async def topup(
    ledger: Ledger, account: str, counter: str, minutes: object, reference: str | None = None
) -> dict[str, Any]:
    which = parse_counter(counter)
    whole = parse_minutes(minutes)
    result = await ledger.buy_package(account, which, whole, reference=reference)
    return {
        "account": account,
        "counter": which.value,
        "minutes": whole,
        "balance_seconds": result.balance_seconds,
        "replayed": result.replayed,
        "restored": result.signal is not None,
    }


async def balance(ledger: Ledger, account: str) -> dict[str, Any]:
    balances = await ledger.balances(account)
    return {
        "account": account,
        "counters": {c.value: {"balance_seconds": balances[c]} for c in Counter},
    }


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """Create or migrate the database at ``url``; returns (revision before, after)."""
    db.private_sqlite_file(url, create=True)
    async with Database(url, create=True) as database:
        return await db.upgrade(database)


def _merged(current: NumberPolicy, countries: str | None, types: str | None) -> NumberPolicy:
    """What is given replaces that half; the other half stays as it is."""
    given = NumberPolicy.parse(countries, types)
    return NumberPolicy(
        given.countries if countries is not None else current.countries,
        given.types if types is not None else current.types,
    )


async def account_policy(
    ledger: Ledger, account: str, countries: str | None = None, types: str | None = None
) -> NumberPolicy:
    """The numbers ``account`` may dial; ``countries``/``types`` given: changed first."""

    def change(conn: Connection) -> NumberPolicy:
        account_id(conn, account)  # an unknown account is an error, not the defaults
        policy = _merged(store.account_policy(conn, account), countries, types)
        if countries is not None or types is not None:
            store.set_account_policy(conn, account, policy, utcnow())
        return policy

    result: NumberPolicy = await ledger.database.run(change)
    return result


async def trunk_policy(
    ledger: Ledger, trunk: str, countries: str | None = None, types: str | None = None
) -> NumberPolicy:
    """The numbers ``trunk`` may carry; ``countries``/``types`` given: changed first."""

    def change(conn: Connection) -> NumberPolicy:
        policy = _merged(store.trunk_policy(store.trunk_by_name(conn, trunk)), countries, types)
        if countries is not None or types is not None:
            store.set_trunk_policy(conn, trunk, policy)
        return policy

    result: NumberPolicy = await ledger.database.run(change)
    return result
