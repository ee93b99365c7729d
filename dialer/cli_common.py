"""What every `dialer` command shares: the configuration, the ledger a command runs on,
the consoles, --json output, and how values and errors are written for the user."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from billing.ledger import Ledger
from dialer import db
from dialer.config import Settings, load_settings
from dialer.errors import ConfigError
from dialer.logs import configure_logging
from dialer.text import shorten

T = TypeVar("T")

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
MAX_ERROR_LINE = 400


@dataclass
class Options:
    config: str | None = None


OPTIONS = Options()


def take_config(value: str | None) -> None:
    """The --config option's callback, on the root and on every group and command, so the
    option works anywhere on the line; the last one given wins."""
    if value is None:
        return
    if not value:
        raise ConfigError("--config needs a file path")
    OPTIONS.config = value


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Config file (default: $DIALER_CONFIG or ./dialer.toml).",
        callback=take_config,
        expose_value=False,
        is_eager=True,
    ),
]


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
    """``work`` on the configured database, from a command's (synchronous) body."""
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


def iso(value: datetime | None) -> str:
    """A stored time (naive UTC) as INTERFACE.md writes times: ISO 8601 UTC with
    milliseconds, ``2026-11-03T09:15:02.120Z``; empty when it did not happen."""
    return "" if value is None else f"{value.isoformat(timespec='milliseconds')}Z"


def format_seconds(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    minutes, rest = divmod(abs(seconds), 60)
    return f"{sign}{minutes}:{rest:02d}"


def group(help: str) -> typer.Typer:
    """A command group (`dialer trunk ...`), added to the root with ``app.add_typer``."""
    return typer.Typer(help=help, no_args_is_help=True)
