"""The `dialer` command line. Every data command takes --json: one JSON document on
stdout and nothing else there. Every error is one line on stderr and a non-zero exit:
usage 2, a refusal of the core (a package's error root) 1, Ctrl-C 130, a bug 70.

Each command group is its own Typer app in its module (cli_billing, cli_campaigns,
cli_amd), added here; what they share is in cli_common."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from typer.core import TyperGroup

from billing.errors import BillingError
from billing.storage import first_line
from dialer.cli_amd import amd_app
from dialer.cli_billing import account_app, billing_app, db_app
from dialer.cli_campaigns import campaign_app, cdr_app, dnc_app, trunk_app, worker
from dialer.cli_common import OPTIONS as OPTIONS
from dialer.cli_common import ConfigOpt, error_line, settings, stdout
from dialer.cli_events import events
from dialer.errors import DialerError
from dialer.logs import configure_logging, redact_text
from sip.errors import SipError

#: the refusals the core raises, one root per package (sip's two until it has one root)
REFUSALS = (DialerError, BillingError, SipError)  # the package roots

app = typer.Typer(
    name="dialer",
    help="Outbound campaign dialer worker with exact minute billing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(db_app, name="db")
app.add_typer(account_app, name="account")
app.add_typer(billing_app, name="billing")
app.add_typer(amd_app, name="amd")
app.add_typer(trunk_app, name="trunk")
app.add_typer(campaign_app, name="campaign")
app.add_typer(cdr_app, name="cdr")
app.add_typer(dnc_app, name="dnc")


@app.callback()
def _root(config: ConfigOpt = None) -> None:
    pass  # --config's own callback takes the value (see `command`)


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


app.command("worker")(worker)
app.command("events")(events)


# -- entry point -----------------------------------------------------------------------------


@functools.cache
def command() -> typer.core.TyperGroup:
    """The click command tree, with the root's --config on every group and command too,
    so it is taken anywhere on the line (Typer adds its completion options the same way).
    Built once per process (40 ms; the app does not change)."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    config = next(p for p in root.params if p.name == "config")

    def share(group: TyperGroup) -> None:
        for sub in group.commands.values():
            sub.params.append(config)
            if isinstance(sub, TyperGroup):
                share(sub)

    share(root)
    return root


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    configure_logging()  # until the configuration is read: stderr, never stdout
    try:
        result = command().main(args, prog_name="dialer", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as usage:
        if getattr(usage, "option_name", None) == "--config":  # `--config` with no path
            print("error: --config needs a file path", file=sys.stderr)
            return 1
        message = usage.format_message()
        if message:  # empty: no subcommand given, the help was printed
            print(f"error: {error_line(message)}", file=sys.stderr)
        return int(getattr(usage, "exit_code", 2))
    except REFUSALS as refused:
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
