"""structlog for the worker and its line processes: one configuration, secrets masked.

The worker configures it from its ``[logging]`` settings (dialer.logs) and hands the
resolved format and level down to every line (LineConfig), whose stderr is the worker's:
so every line on that stderr has one format. pjsip's own log reaches it too, through
``PjsipLog`` (the line's pjsua2 LogWriter calls it), at a level mapped from pjsip's.

Secrets never reach a line: keys that name one are masked, and passwords inside URLs
are hidden. Nothing here imports pjsua2 or the dialer.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import structlog

Format = Literal["json", "console"]
Level = Literal["debug", "info", "warning", "error"]

SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|api[_-]?key|credential", re.I)
# user:PASSWORD@ (the user may be empty) and ?password=... in URLs, wherever they appear
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)", re.I)
QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pass|secret|token)=)[^&\s;]*", re.I)
MASK = "***"


def redact_text(text: str) -> str:
    text = URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
    return QUERY_SECRET.sub(rf"\g<head>{MASK}", text)


def _redact(key: str, value: Any) -> Any:
    if SECRET_KEYS.search(key) and value is not None:
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(key, v) for v in value]
    return value


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Runs after exceptions are formatted, so their text is covered too."""
    for key, value in list(event.items()):
        event[key] = _redact(key, value)
    return event


@dataclass(frozen=True)
class LogSettings:
    """What a line process needs to log like the process that started it."""

    format: Format = "json"
    level: Level = "info"


_current: LogSettings | None = None


def current_settings() -> LogSettings:
    """The settings of the last ``configure`` in this process (format resolved); never
    configured: what ``configure()`` would choose (console on a terminal, JSON off one)."""
    if _current is not None:
        return _current
    return LogSettings("console" if sys.stderr.isatty() else "json", "info")


def configure(
    fmt: str = "auto", level: str = "info", stream: TextIO | None = None, **context: Any
) -> None:
    """JSON lines off a terminal (or when asked), console on one; to stderr by default.

    ``context`` goes on every line of the process, whatever thread logs (a line's name).
    """
    global _current
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([_Constant(context)] if context else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _current = LogSettings("json" if use_json else "console", level.lower())  # type: ignore[arg-type]


class _Constant:
    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in self._context.items():
            event.setdefault(key, value)
        return event


# -- pjsip's own log ------------------------------------------------------------------------

# pjsip's levels: 0 fatal, 1 error, 2 warning, 3 info, 4 debug, 5 trace, 6 more. Its level
# 3 is chatty (every call state change, every account operation): debug here, like 4-6.
_PJSIP_METHODS = ("error", "error", "warning")


def pjsip_method(pjsip_level: int) -> str:
    return _PJSIP_METHODS[pjsip_level] if 0 <= pjsip_level < 3 else "debug"


def pjsip_produced(level: str) -> int:
    """The pjsip levels worth producing at this structlog level: what would be dropped
    anyway is never formatted by pjsip (4: its info and debug, not the SIP traces)."""
    return 4 if level == "debug" else 2


class PjsipLog:
    """Turns pjsip's log entries (decorated with the sender only) into structlog lines.

    Called from pjsip, on whichever thread logs: it must never raise (an exception would
    cross into C++) and stays cheap: a level check before any formatting.
    """

    def __init__(self, **context: Any) -> None:
        self._log = structlog.get_logger().bind(logger="pjsip", **context)
        self._debug = current_settings().level == "debug"

    def __call__(self, pjsip_level: int, message: str) -> None:
        with contextlib.suppress(Exception):  # a log line is never worth crashing a line
            method = pjsip_method(pjsip_level)
            if method == "debug" and not self._debug:
                return
            sender, _, text = message.strip().partition(" ")
            first, _, rest = (text.strip() or sender).replace("\r", "").partition("\n")
            # one record, one line on stderr: the rest (a packet, a dump) as a list
            more = {"more": rest.splitlines()} if rest else {}
            getattr(self._log, method)(first, sender=sender, pjsip_level=pjsip_level, **more)
