"""structlog, configured once: JSON lines off a terminal (or when asked), console on one.

Logs go to stderr: stdout belongs to command output (``--json``). Context such as
account, campaign and call id is bound with ``bind_contextvars`` and reaches every line.
Secrets never reach a line: keys that name one are masked, and passwords inside URLs
are hidden. The configuration itself lives in sip.logs, shared with the line processes
(which must not import the dialer); the worker's settings reach them through the pool.
"""

from __future__ import annotations

from typing import Any, TextIO

import structlog

from sip.logs import MASK, SECRET_KEYS, redact_secrets, redact_text
from sip.logs import configure as _configure

__all__ = [
    "MASK",
    "SECRET_KEYS",
    "configure_logging",
    "get_logger",
    "redact_secrets",
    "redact_text",
]


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    _configure(fmt, level, stream)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger().bind(**context)
