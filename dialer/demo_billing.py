"""`dialer demo --billing-only`: the billing rules walked through on the real ledger.

Calls are metered by the real CallMeter from scripted event times (no SIP here yet);
every debit is a real ledger entry on the configured database.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from billing.errors import DuplicateAccount
from billing.ledger import BalanceSignal, Ledger
from billing.meter import CallMeter
from billing.period import Period, utcnow
from billing.storage import Database
from billing.tariff import Counter, TrunkKind
from dialer import db
from dialer.config import Settings


@dataclass(frozen=True)
class ScriptedCall:
    title: str
    trunk: TrunkKind
    phone: str
    events: tuple[tuple[str, float], ...]  # (meter method, monotonic seconds)


CALLS = (
    ScriptedCall(
        "40 s with the bot on the platform trunk",
        TrunkKind.PLATFORM,
        "+14155550101",
        (("answered", 100.0), ("hangup", 140.0)),
    ),
    ScriptedCall(
        "customer's own trunk: 10 s bot, 120 s with an agent, 8 s bot again",
        TrunkKind.CUSTOMER,
        "+14155550102",
        (("answered", 200.0), ("agent_started", 210.0), ("agent_ended", 330.0), ("hangup", 338.0)),
    ),
)


async def run_demo(cfg: Settings, out: Console) -> None:
    database = Database(cfg.database.url, create=True)
    try:
        await db.upgrade(database)
        ledger = Ledger(database, cfg.billing.make_tariff())
        signals: list[BalanceSignal] = []

        async def remember(signal: BalanceSignal) -> None:
            signals.append(signal)

        ledger.subscribe(remember)
        account = await _fresh_account(ledger)
        out.rule(f"[b]Minute billing walk-through[/b] on {database.shown}")
        out.print(f"created account [b]{account}[/b] (every counter starts at 0)")
        gate = await ledger.may_dial(account, TrunkKind.PLATFORM)
        out.print(f"may it dial on the platform trunk? [b]{gate.allowed}[/b]: {gate.reason()}")

        for counter in Counter:
            await ledger.buy_package(account, counter, 1)
        out.print("bought 1 minute of telephony and 1 minute of speech")
        signals.clear()
        await _show_balance(ledger, account, out)

        run_id = uuid.uuid4().hex[:8]
        for n, call in enumerate(CALLS, start=1):
            out.rule(f"call {n}: {call.title}")
            meter = CallMeter(ledger.tariff, call.trunk)
            for method, at in call.events:
                debits = getattr(meter, method)(at)
                for debit in debits:
                    result = await ledger.debit(
                        account,
                        debit.counter,
                        debit.seconds,
                        call_id=f"demo-{run_id}-{n}",
                        increment=debit.increment,
                        campaign="demo-campaign",
                        contact=call.phone,
                    )
                    out.print(
                        f"  t={at - call.events[0][1]:5.1f}s {method:<13} debit "
                        f"{debit.counter.value} increment {debit.increment} "
                        f"({debit.seconds} s): balance {result.balance_seconds} s"
                    )
                if not debits:
                    out.print(f"  t={at - call.events[0][1]:5.1f}s {method}")
            billed = ", ".join(f"{c.value} {meter.billed_seconds(c)} s" for c in Counter)
            out.print(f"  billed: {billed} (agent time {meter.agent_ms() / 1000:.0f} s)")
            for signal in signals:
                out.print(
                    f"  [yellow]{signal.kind.value}[/yellow]: {signal.counter.value} at "
                    f"{signal.balance_seconds} s. The call was not cut; the worker pauses every "
                    "campaign of the account (reason: balance)"
                )
            signals.clear()

        gate = await ledger.may_dial(account, TrunkKind.PLATFORM)
        out.rule("after the calls")
        out.print(f"may it dial now? [b]{gate.allowed}[/b]: {gate.reason()}")
        await _show_balance(ledger, account, out)

        result = await ledger.buy_package(account, Counter.SPEECH, 1)
        out.print(
            f"bought 1 more minute of speech: the debt is paid off first, balance now "
            f"{result.balance_seconds} s"
        )
        for signal in signals:
            out.print(
                f"  [green]{signal.kind.value}[/green]: {signal.counter.value}. Campaigns paused "
                "for balance stay paused until someone resumes them"
            )
        gate = await ledger.may_dial(account, TrunkKind.PLATFORM)
        out.print(f"may it dial now? [b]{gate.allowed}[/b]: {gate.reason()}")

        report = await ledger.usage(account, Period.containing(utcnow()))
        out.rule(f"usage in {report.period}")
        table = Table("campaign", "unique contacts", *(c.value for c in Counter))
        for row in report.campaigns:
            table.add_row(
                row.campaign,
                str(row.unique_contacts),
                *(f"{row.billed_seconds[c]} s" for c in Counter),
            )
        out.print(table)
        exe = _command_name()
        out.print(f"try: {exe} billing balance {account}   {exe} billing usage {account} --json")
    finally:
        await database.dispose()


def _command_name() -> str:
    """How the user reached us (./.venv/bin/dialer after ./dev demo), for the hint."""
    invoked = Path(sys.argv[0])
    if invoked.name == "dialer" and invoked.parent != Path(shutil.which("dialer") or "").parent:
        relative = os.path.relpath(invoked)
        return str(invoked) if relative.startswith("..") else relative
    return "dialer"


async def _fresh_account(ledger: Ledger) -> str:
    existing = {a.name for a in await ledger.list_accounts()}
    n = 1
    while f"demo-{n}" in existing:
        n += 1
    while True:
        try:
            return (await ledger.create_account(f"demo-{n}")).name
        except DuplicateAccount:  # another demo raced us to it
            n += 1


async def _show_balance(ledger: Ledger, account: str, out: Console) -> None:
    balances = await ledger.balances(account)
    shown = ", ".join(f"{c.value} {balances[c]} s" for c in Counter)
    out.print(f"balance: {shown}")
