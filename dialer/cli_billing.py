"""CLI: the database schema, accounts, minute balances, top-ups and usage."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from billing.ledger import UsageReport
from billing.period import Period, utcnow
from billing.storage import describe
from billing.tariff import Counter
from dialer import service
from dialer.campaigns import check_name, check_text
from dialer.cli_common import (
    JsonOpt,
    emit_json,
    format_seconds,
    group,
    iso,
    run,
    settings,
    stdout,
)
from dialer.cli_policy import account_policy
from dialer.errors import DialerError

db_app = group("Database schema.")
account_app = group("Accounts.")
billing_app = group("Minute balances, top-ups and usage.")


# -- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Create or migrate the database to the newest schema."""
    cfg = settings()
    before, after = asyncio.run(service.upgrade_database(cfg.database.url))
    shown = describe(cfg.database.url)
    if as_json:
        emit_json({"database": shown, "from_revision": before, "revision": after})
    elif before == after:
        stdout.print(f"database {shown} is up to date (schema {after})")
    else:
        stdout.print(f"database {shown} migrated from {before or 'empty'} to {after}")


# -- accounts --------------------------------------------------------------------------------


@account_app.command("create")
def account_create(name: str, as_json: JsonOpt = False) -> None:
    """Create an account with zero balance on every counter."""
    check_name("account", name)
    info = run(lambda ledger: ledger.create_account(name))
    if as_json:
        emit_json({"account": info.name, "created_at": iso(info.created_at)})
    else:
        stdout.print(f"account {info.name} created")


@account_app.command("list")
def account_list(as_json: JsonOpt = False) -> None:
    """List accounts."""
    accounts = run(lambda ledger: ledger.list_accounts())
    if as_json:
        emit_json(
            {"accounts": [{"name": a.name, "created_at": iso(a.created_at)} for a in accounts]}
        )
        return
    table = Table("account", "created (UTC)")
    for a in accounts:
        table.add_row(a.name, a.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    stdout.print(table if accounts else "no accounts yet: `dialer account create NAME`")


account_app.command("policy")(account_policy)


# -- billing ---------------------------------------------------------------------------------


@billing_app.command("topup")
def billing_topup(
    account: str,
    counter: Annotated[str, typer.Option("--counter", help="telephony or speech")],
    minutes: Annotated[str, typer.Option("--minutes", help="Whole positive minutes.")],
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Purchase reference; repeating it buys nothing twice."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Buy a minute package: pays off a negative balance first, then accumulates."""
    check_name("account", account)
    check_text("counter", counter, 16)
    check_text("minutes", minutes, 16)  # int() of 100k digits fails before any rule
    structlog.contextvars.bind_contextvars(account=account)
    result = run(lambda ledger: service.topup(ledger, account, counter, minutes, reference))
    structlog.get_logger().debug(
        "package bought", counter=result["counter"], minutes=result["minutes"],
        replayed=result["replayed"],
    )  # fmt: skip
    if as_json:
        emit_json(result)
        return
    note = " (already recorded under this reference: nothing added)" if result["replayed"] else ""
    stdout.print(
        f"{account}: +{result['minutes']} min {result['counter']}{note}; balance now "
        f"{format_seconds(result['balance_seconds'])}"
    )
    if result["restored"]:
        stdout.print(
            "balance positive again; campaigns paused for balance stay paused until resumed"
        )


@billing_app.command("balance")
def billing_balance(account: str, as_json: JsonOpt = False) -> None:
    """Show the balance of every counter."""
    check_name("account", account)
    document = run(lambda ledger: service.balance(ledger, account))
    if as_json:
        emit_json(document)
        return
    table = Table("counter", "balance", "seconds", title=f"account {account}")
    for name, counter in document["counters"].items():
        seconds = counter["balance_seconds"]
        table.add_row(name, format_seconds(seconds), str(seconds))
    stdout.print(table)


@billing_app.command("usage")
def billing_usage(
    account: str,
    period: Annotated[
        str | None, typer.Option("--period", help="YYYY-MM (default: this month, UTC).")
    ] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Usage in a billing period: unique contacts reached and billed time per counter."""
    check_name("account", account)
    if campaign is not None:
        check_name("campaign", campaign)
    which = (
        Period.parse(check_text("period", period, 16))
        if period is not None
        else Period.containing(utcnow())
    )
    report = run(lambda ledger: ledger.usage(account, which, campaign))
    if as_json:
        emit_json(usage_document(report))
        return
    stdout.print(
        f"account {account}, period {report.period}: {report.unique_contacts} unique contacts"
    )
    table = Table("campaign", "contacts", *(c.value for c in Counter))
    for row in report.campaigns:
        table.add_row(
            row.campaign,
            str(row.unique_contacts),
            *(format_seconds(row.billed_seconds[c]) for c in Counter),
        )
    table.add_row(
        "[b]total[/b]",
        str(report.unique_contacts),
        *(format_seconds(report.billed_seconds[c]) for c in Counter),
    )
    stdout.print(table)


@billing_app.command("audit")
def billing_audit(account: str, as_json: JsonOpt = False) -> None:
    """Check that every balance equals the sum of its ledger entries."""
    check_name("account", account)
    lines = run(lambda ledger: ledger.audit(account))
    if as_json:
        emit_json(
            {
                "account": account,
                "consistent": all(line.consistent for line in lines),
                "counters": {
                    line.counter.value: {
                        "balance_seconds": line.balance_seconds,
                        "sum_of_entries": line.sum_of_entries,
                    }
                    for line in lines
                },
            }
        )
    else:
        for line in lines:
            mark = "ok" if line.consistent else "MISMATCH"
            stdout.print(
                f"{line.counter.value}: balance {line.balance_seconds} s, entries sum "
                f"{line.sum_of_entries} s: {mark}"
            )
    if not all(line.consistent for line in lines):
        raise DialerError(f"account {account}: balance differs from the sum of its entries")


def usage_document(report: UsageReport) -> dict[str, Any]:
    return {
        "account": report.account,
        "period": str(report.period),
        "unique_contacts": report.unique_contacts,
        "billed_seconds": {c.value: report.billed_seconds[c] for c in Counter},
        "campaigns": [
            {
                "campaign": row.campaign,
                "unique_contacts": row.unique_contacts,
                "billed_seconds": {c.value: row.billed_seconds[c] for c in Counter},
            }
            for row in report.campaigns
        ],
    }
