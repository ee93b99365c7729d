"""CLI: trunks, campaigns, call records, do-not-call lists, the worker."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from dialer import service
from dialer.campaign_state import FINAL_STATES, Action
from dialer.campaigns import (
    CDR_COLUMNS,
    CampaignSpec,
    ImportReport,
    add_trunk,
    call_records,
    campaign_status,
    check_name,
    create_campaign,
    import_contacts,
    import_dnc,
    list_campaigns,
    list_trunks,
)
from dialer.cli_common import (
    JsonOpt,
    emit_json,
    group,
    iso,
    open_ledger,
    run,
    settings,
    stderr,
    stdout,
)
from dialer.cli_policy import trunk_policy
from dialer.errors import DialerError
from dialer.text import shorten

trunk_app = group("SIP trunks.")
campaign_app = group("Campaigns.")
cdr_app = group("Call records.")
dnc_app = group("Do-not-call lists.")

MAX_DRAIN = 3600.0
PASSWORD_ENV = "DIALER_TRUNK_PASSWORD"
MAX_PASSWORD_FILE = 4096


def trunk_password(file: Path | None, username: str | None) -> str | None:
    """The trunk password from --password-file, else $DIALER_TRUNK_PASSWORD, else a hidden
    prompt (stdin a terminal, a --username given); never from the command line, where
    every local user sees it in `ps`. No --username: no password (the environment
    variable may be set for another trunk)."""
    if username is None:
        if file is not None:
            raise DialerError("--password-file needs --username")
        return None
    if file is not None:
        try:
            with file.open("rb") as f:
                raw = f.read(MAX_PASSWORD_FILE + 1)
        except OSError as exc:
            raise DialerError(
                f"cannot read --password-file {shorten(file)}: {exc.strerror}"
            ) from None
        if len(raw) > MAX_PASSWORD_FILE:
            raise DialerError(f"--password-file {shorten(file)} is over {MAX_PASSWORD_FILE} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DialerError(f"--password-file {shorten(file)} is not UTF-8") from None
        # the one line break an editor or `echo` leaves at the end is not part of it
        return text.removesuffix("\n").removesuffix("\r")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    if sys.stdin.isatty():
        return str(typer.prompt(f"password for {username}", hide_input=True, err=True))
    return None


def _refuse_password_on_argv(value: str | None) -> None:
    if value is not None:
        raise typer.BadParameter(
            f"a password on the command line is visible to every local user (ps); use "
            f"--password-file FILE, ${PASSWORD_ENV} or the prompt (stdin a terminal)",
            param_hint="'--password'",
        )


@trunk_app.command("add")
def trunk_add(
    name: str,
    account: Annotated[str, typer.Option("--account")],
    kind: Annotated[str, typer.Option("--kind", help="platform | customer")],
    uri: Annotated[str, typer.Option("--uri", help="sip:host[:port][;transport=tcp]")],
    username: Annotated[str | None, typer.Option("--username")] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(
            "--password-file",
            help=f"File holding the password (else ${PASSWORD_ENV}, else a prompt).",
        ),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option("--password", hidden=True, callback=_refuse_password_on_argv),
    ] = None,
    register: Annotated[bool, typer.Option("--register")] = False,
    channels: Annotated[int, typer.Option("--channels")] = 30,
    cps: Annotated[float, typer.Option("--cps")] = 10.0,
    proxy: Annotated[str | None, typer.Option("--outbound-proxy")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a SIP trunk (the platform's own, or a customer's own)."""
    password = trunk_password(password_file, username)
    added = run(lambda ledger: add_trunk(
        ledger.database, name=name, account=account, kind=kind, uri=uri, username=username,
        password=password, register=register, channels=channels, cps=cps, outbound_proxy=proxy,
    ))  # fmt: skip
    if as_json:
        # `account create --json`'s shape: the new object's name under its kind
        emit_json({"trunk": added.pop("name"), **added})
        return
    stdout.print(f"trunk {name} added ({kind}, {escape(uri)})", highlight=False)


@trunk_app.command("list")
def trunk_list(as_json: JsonOpt = False) -> None:
    """List trunks (passwords are never shown)."""
    trunks = run(lambda ledger: list_trunks(ledger.database))
    if as_json:
        emit_json({"trunks": trunks})
        return
    table = Table("trunk", "account", "kind", "uri", "channels", "cps")
    for t in trunks:
        table.add_row(
            t["name"], t["account"], t["kind"], escape(t["uri"]), str(t["channels"]), str(t["cps"])
        )
    stdout.print(table)


trunk_app.command("policy")(trunk_policy)


@campaign_app.command("create")
def campaign_create(
    name: str,
    account: Annotated[str, typer.Option("--account")],
    trunk: Annotated[str, typer.Option("--trunk")],
    script: Annotated[str | None, typer.Option("--script")] = None,
    caller_id: Annotated[str | None, typer.Option("--caller-id")] = None,
    max_concurrent: Annotated[int, typer.Option("--max-concurrent")] = 4,
    cps: Annotated[float, typer.Option("--cps")] = 1.0,
    window: Annotated[str, typer.Option("--window", help="HH:MM-HH:MM")] = "00:00-24:00",
    days: Annotated[str, typer.Option("--days", help="e.g. mon-fri")] = "all",
    timezone: Annotated[str, typer.Option("--timezone")] = "UTC",
    retries: Annotated[int, typer.Option("--retries")] = 2,
    retry_delay: Annotated[int, typer.Option("--retry-delay", help="seconds")] = 300,
    agent_uri: Annotated[str | None, typer.Option("--agent-uri")] = None,
    max_call_seconds: Annotated[int, typer.Option("--max-call-seconds")] = 600,
) -> None:
    """Create a campaign (state: draft)."""
    spec = CampaignSpec(
        name=name, account=account, trunk=trunk, script=script, caller_id=caller_id,
        max_concurrent=max_concurrent, cps=cps, window=window, days=days, timezone=timezone,
        retries=retries, retry_delay=retry_delay, agent_uri=agent_uri,
        max_call_seconds=max_call_seconds, prompts_dir=settings().scripts.prompts_dir,
    )  # fmt: skip
    run(lambda ledger: create_campaign(ledger.database, spec))
    stdout.print(f"campaign {name} created (draft)")


def _print_report(report: ImportReport, what: str, as_json: bool) -> None:
    if as_json:
        emit_json({"imported": report.imported, "already_there": report.already_there,
                   "problems": report.problems})  # fmt: skip
    else:
        stdout.print(f"{report.imported} {what} imported, {report.already_there} already there")
    for problem in report.problems:
        stderr.print(f"skipped {problem}", highlight=False)


@campaign_app.command("import")
def campaign_import(campaign: str, file: Path, as_json: JsonOpt = False) -> None:
    """Import contacts from a CSV (header row; column `phone` required, `timezone` optional)."""
    check_name("campaign", campaign)
    report = run(lambda ledger: import_contacts(ledger.database, campaign, file))
    _print_report(report, "contacts", as_json)


def _state_command(action: Action) -> Any:
    def command(campaign: str, as_json: JsonOpt = False) -> None:
        check_name("campaign", campaign)
        status = run(lambda ledger: service.campaign_command(ledger, campaign, action.value))
        if as_json:
            emit_json({"campaign": campaign, "state": status["state"],
                       "pause_reason": status["pause_reason"]})  # fmt: skip
        else:
            reason = f" ({status['pause_reason']})" if status["pause_reason"] else ""
            stdout.print(f"campaign {campaign}: {status['state']}{reason}")

    command.__doc__ = f"{action.value.capitalize()} a campaign."
    return command


for _action in (Action.START, Action.PAUSE, Action.RESUME, Action.STOP):
    campaign_app.command(_action.value)(_state_command(_action))


@campaign_app.command("status")
def campaign_status_cmd(
    campaign: str,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Live view until it ends (Ctrl-C).")
    ] = False,
) -> None:
    """Campaign state, contacts, calls and billed time."""
    check_name("campaign", campaign)
    if watch:
        _watch(campaign)
        return
    status = run(lambda ledger: campaign_status(ledger.database, campaign))
    if as_json:
        emit_json(status)
    else:
        stdout.print(status_table(status))


def status_table(status: dict[str, Any]) -> Table:
    reason = f" ({status['pause_reason']})" if status["pause_reason"] else ""
    title = escape(f"{status['campaign']} [{status['state']}{reason}]")
    table = Table(title=title, show_header=False)
    contacts, calls, billed = status["contacts"], status["calls"], status["billed_seconds"]
    table.add_row("contacts", " ".join(f"{k} {v}" for k, v in contacts.items()))
    table.add_row("calls", " ".join(f"{k} {v}" for k, v in calls.items()))
    table.add_row("billed", f"telephony {billed['telephony']} s, speech {billed['speech']} s")
    return table


def _watch(campaign: str) -> None:
    cfg = settings()

    async def loop() -> None:
        async with open_ledger(cfg) as ledger:
            progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"))  # fmt: skip
            task = progress.add_task("contacts done", total=1)
            with Live(console=stdout, refresh_per_second=4) as live:
                while True:
                    status = await campaign_status(ledger.database, campaign)
                    progress.update(task, total=max(1, status["contacts"]["total"]),
                                    completed=status["contacts"]["done"])  # fmt: skip
                    grid = Table.grid()
                    grid.add_row(status_table(status))
                    grid.add_row(progress)
                    live.update(grid)
                    if status["state"] in FINAL_STATES:
                        return
                    await asyncio.sleep(0.5)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(loop())


@campaign_app.command("list")
def campaign_list(as_json: JsonOpt = False) -> None:
    """List campaigns."""
    campaigns = run(lambda ledger: list_campaigns(ledger.database))
    if as_json:
        emit_json({"campaigns": campaigns})
        return
    table = Table("campaign", "account", "state")
    for c in campaigns:
        reason = f" ({c['pause_reason']})" if c["pause_reason"] else ""
        table.add_row(c["campaign"], c["account"], c["state"] + reason)
    stdout.print(table)


def _cell(value: Any) -> str:
    """A CSV cell: times as `iso` writes them, nothing for None."""
    return iso(value) if isinstance(value, datetime) or value is None else str(value)


@cdr_app.command("export")
def cdr_export(
    campaign: str,
    fmt: Annotated[str, typer.Option("--format", help="csv | json")] = "csv",
    output: Annotated[Path | None, typer.Option("--output")] = None,
) -> None:
    """Export a campaign's call records (times ISO 8601 UTC)."""
    check_name("campaign", campaign)
    if fmt not in ("csv", "json"):
        raise typer.BadParameter(f"--format must be csv or json, not '{shorten(fmt)}'")
    rows = run(lambda ledger: call_records(ledger.database, campaign))
    if fmt == "json":
        text = json.dumps([{k: iso(v) if k.endswith("_at") else v for k, v in r.items()}
                           for r in rows]) + "\n"  # fmt: skip
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CDR_COLUMNS)
        for r in rows:
            writer.writerow([_cell(r[c]) for c in CDR_COLUMNS])
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        tmp = output.with_name(output.name + ".part")
        tmp.write_text(text)
        tmp.replace(output)  # never a half-written file


@dnc_app.command("import")
def dnc_import(account: str, file: Path, as_json: JsonOpt = False) -> None:
    """Add numbers (CSV, column `phone`) to an account's do-not-call list."""
    check_name("account", account)
    report = run(lambda ledger: import_dnc(ledger.database, account, file))
    _print_report(report, "numbers", as_json)


def worker(
    lines: Annotated[int | None, typer.Option("--lines", min=1, max=256)] = None,
    sip_port: Annotated[int | None, typer.Option("--sip-port", min=0, max=65535)] = None,
    drain: Annotated[float, typer.Option("--drain-seconds", min=0, max=MAX_DRAIN)] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535, help="serve /metrics and /health here"),
    ] = None,
) -> None:
    """Run campaigns (long-running). SIGTERM: no new calls; calls up finish, up to
    --drain-seconds, then are hung up and settled."""
    from dialer.runtime import run_worker

    if not math.isfinite(drain):  # nan passes click's range check
        raise typer.BadParameter("must be a number of seconds", param_hint="'--drain-seconds'")

    cfg = settings()
    if metrics_port is not None:
        cfg = cfg.model_copy(update={"ops": cfg.ops.model_copy(update={"port": metrics_port})})
    stop = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_worker(cfg, stop, lines=lines, sip_port=sip_port, drain_seconds=drain)

    started = time.monotonic()
    asyncio.run(main())
    stdout.print(f"worker stopped after {time.monotonic() - started:.0f} s")
