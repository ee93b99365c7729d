"""structlog, configured once: JSON lines off a terminal (or when asked), console on one.

Logs go to stderr: stdout belongs to command output (``--json``). Context such as
account, campaign and call id is bound with ``bind_contextvars`` and reaches every line.
Secrets never reach a line: keys that name one are masked, and passwords inside URLs
are hidden.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

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


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
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


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
