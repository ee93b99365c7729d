"""The `dialer` command line. Every data command takes --json: one JSON document on
stdout and nothing else there. Every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import structlog
import typer
from rich.console import Console
from rich.table import Table

from billing.errors import BillingError
from billing.ledger import Ledger, UsageReport
from billing.period import Period, utcnow
from billing.storage import Database, describe, first_line
from billing.tariff import Counter
from dialer import db, service
from dialer.campaigns import check_name, check_text
from dialer.config import ConfigError, Settings, load_settings
from dialer.errors import DialerError
from dialer.logs import configure_logging, redact_text
from dialer.text import shorten
from sip.errors import PlanError, SipSetupError

T = TypeVar("T")

app = typer.Typer(
    name="dialer",
    help="Outbound campaign dialer worker with exact minute billing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
account_app = typer.Typer(help="Accounts.", no_args_is_help=True)
billing_app = typer.Typer(help="Minute balances, top-ups and usage.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")
app.add_typer(billing_app, name="billing")

stdout = Console(soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@dataclass
class Options:
    config: str | None = None


OPTIONS = Options()


@app.callback()
def _root(
    config: Annotated[
        str | None,
        typer.Option("--config", help="Config file (default: $DIALER_CONFIG or ./dialer.toml)."),
    ] = None,
) -> None:
    if config:
        OPTIONS.config = config


def settings() -> Settings:
    loaded = load_settings(OPTIONS.config)
    configure_logging(loaded.logging.format, loaded.logging.level)
    return loaded


@asynccontextmanager
async def open_ledger(cfg: Settings) -> AsyncIterator[Ledger]:
    database = await db.open_database(cfg.database.url)
    try:
        yield Ledger(database, cfg.billing.make_tariff())
    finally:
        await database.dispose()


def run(work: Callable[[Ledger], Awaitable[T]]) -> T:
    cfg = settings()

    async def main() -> T:
        async with open_ledger(cfg) as ledger:
            return await work(ledger)

    return asyncio.run(main())


def emit_json(document: Any) -> None:
    # strict JSON: a non-finite float (a row written before rates were checked) is null,
    # never the `Infinity`/`NaN` that JSON parsers refuse
    sys.stdout.write(json.dumps(_finite(document), ensure_ascii=False, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def error_line(message: object) -> str:
    """The one line an error prints: controls escaped, and cut, so that no input
    echoed by a message deep in the core can flood the terminal or forge a line."""
    return shorten(" ".join(str(message).splitlines()), MAX_ERROR_LINE)


MAX_ERROR_LINE = 400


def iso(value: Any) -> str:
    return f"{value.isoformat(timespec='milliseconds')}Z"


# -- db --------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Create or migrate the database to the newest schema."""
    cfg = settings()

    async def main() -> tuple[str | None, str]:
        db.private_sqlite_file(cfg.database.url, create=True)
        async with Database(cfg.database.url, create=True) as database:
            return await db.upgrade(database)

    before, after = asyncio.run(main())
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


def format_seconds(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    minutes, rest = divmod(abs(seconds), 60)
    return f"{sign}{minutes}:{rest:02d}"


# -- QA: simulated SIP endpoints ----------------------------------------------------------


@app.command("sim")
def sim(
    plan: Annotated[Path, typer.Option("--plan", help="TOML plan: how each number behaves.")],
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="SIP port (UDP and TCP).")
    ] = 5070,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on.")] = "127.0.0.1",
    rtp_port: Annotated[
        int, typer.Option("--rtp-port", min=1024, max=65000, help="First RTP port.")
    ] = 40000,
) -> None:
    """Simulated callees and agents on pjsua2 for QA (plan format: `sip/sim.py`).

    Prints one JSON line per call event on stdout; stops on SIGINT or SIGTERM.
    """
    from sip.endpoint import move_c_stdout_to_stderr
    from sip.sim import SimFarm, load_plan

    settings()
    loaded = load_plan(plan)
    # pjlib prints to the C stdout: keep stdout for the JSON lines only
    out = os.fdopen(move_c_stdout_to_stderr(), "w", buffering=1)

    def report(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")

    farm = SimFarm(loaded, port=port, bind_address=bind, rtp_port=rtp_port, report=report)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    farm.start()
    try:
        stop.wait()
    finally:
        farm.stop()


# -- demo ------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    billing_only: Annotated[
        bool, typer.Option("--billing-only", help="Only the billing walk-through (no SIP).")
    ] = False,
) -> None:
    """The product in one run: simulated callees, the worker, two campaigns, every rule."""
    cfg = settings()
    if billing_only:
        from dialer.demo_billing import run_demo as walk_through

        asyncio.run(walk_through(cfg, stdout))
        return
    from dialer.demo import run_demo

    asyncio.run(run_demo(cfg, stdout))


# -- entry point -----------------------------------------------------------------------------


def _split_config(argv: list[str]) -> Iterator[str]:
    """Accept --config anywhere on the line, not only before the subcommand."""
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            OPTIONS.config = next(it, None) or ""
            if not OPTIONS.config:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--config="):
            OPTIONS.config = arg.split("=", 1)[1]
        else:
            yield arg


def main(argv: list[str] | None = None) -> int:
    import dialer.cli_amd
    import dialer.cli_campaigns
    import dialer.cli_events
    import dialer.cli_policy  # noqa: F401

    args = list(sys.argv[1:] if argv is None else argv)
    configure_logging()  # until the configuration is read: stderr, never stdout
    try:
        args = list(_split_config(args))
        command = typer.main.get_command(app)
        result = command.main(args, prog_name="dialer", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as usage:
        message = usage.format_message()
        if message:  # empty: no subcommand given, the help was printed
            print(f"error: {error_line(message)}", file=sys.stderr)
        return int(getattr(usage, "exit_code", 2))
    except (BillingError, ConfigError, DialerError, PlanError, SipSetupError) as refused:
        print(f"error: {error_line(refused)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as bug:  # the edge: never a traceback for the user, but never silent
        structlog.get_logger().debug("unexpected error", exc_info=True)
        print(
            f"error: unexpected {type(bug).__name__}: {error_line(redact_text(first_line(bug)))} "
            "(run with DIALER_LOGGING__LEVEL=debug for details)",
            file=sys.stderr,
        )
        return 70
