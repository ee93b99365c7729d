"""The commands campaign managers give, one layer for the CLI and MQTT.

Both edges call these and get the same documents and the same refusals (typed errors:
DialerError, BillingError), so a rule like "start is refused while a counter the trunk
charges is not positive" holds however the command arrives.
"""

from __future__ import annotations

from typing import Any

from billing.ledger import Ledger, parse_minutes
from billing.tariff import Counter, parse_counter
from dialer.campaign_state import Action
from dialer.campaigns import campaign_status, change_state
from dialer.errors import DialerError

CAMPAIGN_ACTIONS = ("start", "pause", "resume", "stop", "status")
BILLING_ACTIONS = ("topup", "balance")
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
