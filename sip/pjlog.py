"""pjsip's own log into structlog (sip.logs.PjsipLog), from the first line pjlib prints.

pjsua2 takes a LogWriter only in ``libInit``; ``libCreate`` already logs ("pjlib 2.15.1
for POSIX initialized", ...) through pjlib's default writer, the C stdout. So before
``libCreate`` pjlib's own log function and level are set through ctypes (the wheel
exports ``pj_log_set_log_func``/``pj_log_set_level``); ``libInit`` then replaces them
with pjsua's, which calls the LogWriter.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

Sink = Callable[[int, str], None]

# Only the sender ("pjsua_core.c"): structlog adds the time, and the level is mapped.
DECOR = pj.PJ_LOG_HAS_SENDER

_LOG_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_lock = threading.Lock()
_early_sink: Sink | None = None


@_LOG_FUNC  # type: ignore[untyped-decorator]
def _early(level: int, data: bytes | None, length: int) -> None:
    # pjlib keeps this pointer: a module-level function, alive as long as the process
    sink = _early_sink
    with contextlib.suppress(Exception):  # never raise into C
        if sink is not None and data is not None:
            sink(level, data[:length].decode("utf-8", "replace"))


def _pjlib() -> Any:
    import pjsua2._pjsua2 as ext  # the extension holds pjlib, linked in

    return ctypes.CDLL(ext.__file__)


def log_early(sink: Sink, level: int) -> None:
    """Route pjlib's log to ``sink`` until ``libInit``, producing only ``level`` and
    below. Call before ``libCreate``."""
    global _early_sink
    with _lock:
        _early_sink = sink
        lib = _pjlib()
        lib.pj_log_set_level(ctypes.c_int(level))
        lib.pj_log_set_decor(ctypes.c_uint(DECOR))
        lib.pj_log_set_log_func(_early)


class LogWriter(pj.LogWriter):  # type: ignore[misc]
    """The Endpoint's LogWriter. With ``mainThreadOnly`` pjsua2 queues other threads'
    entries for the SIP thread, but nothing here relies on it: the sink is thread-safe
    and never raises."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink

    def write(self, entry: Any) -> None:
        with contextlib.suppress(Exception):  # never raise into C++
            self._sink(entry.level, entry.msg)
