"""A line process: ``python -m sip.line``. One pjsua2 Endpoint (4 calls), driven over
its stdin/stdout by the pipe protocol (sip.protocol). Started and supervised by
sip.pool.LinePool; it exits when its stdin closes, hanging up its calls first.

The first message must be ``configure`` (it carries trunk credentials, which is why
they come over the pipe and not on the command line, where ``ps`` would show them).
It also says how to log: structlog lines on stderr like the orchestrator's, each with
the line's name; pjsip's own log among them (sip.logs).

A line outlives no worker: when its orchestrator dies (even by SIGKILL) it gets SIGTERM
from the kernel (``PR_SET_PDEATHSIG``) or sees its stdin close, whichever comes first, and
hangs up its calls and exits within ORPHAN_STOP_SECONDS, so the SIP port is free for the
restarted worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Any

from sip.endpoint import move_c_stdout_to_stderr
from sip.errors import SipSetupError
from sip.logs import configure as configure_logs
from sip.protocol import (
    MAX_LINE_BYTES,
    PARENT_ENV,
    Configure,
    ProtocolError,
    Shutdown,
    decode_command,
    encode,
    event,
)

PR_SET_PDEATHSIG = 1
ORPHAN_STOP_SECONDS = 0.5


class _Writer:
    """Protocol output on the saved stdout descriptor. Called from the SIP thread (event
    batches) and the asyncio thread (command errors): one lock, whole messages."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> None:
        self.batch([message])

    def batch(self, messages: list[dict[str, Any]]) -> None:
        data = memoryview(b"".join(encode(m) for m in messages))
        with self._lock, contextlib.suppress(BrokenPipeError):  # gone: stdin EOF stops us
            while data:
                data = data[os.write(self._fd, data) :]


async def serve(protocol_fd: int, parent: int | None = None) -> int:
    from sip.engine import SipEngine  # imports pjsua2: after stdout was moved
    from sip.listener import Listener

    loop = asyncio.get_running_loop()
    write = _Writer(protocol_fd)
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES * 2)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    first = await reader.readline()
    try:
        configure = decode_command(first) if first else None
    except ProtocolError as exc:
        write(event("error", message=str(exc)))
        return 2
    if not isinstance(configure, Configure):
        write(event("error", message="the first command must be configure"))
        return 2
    line = configure.line
    configure_logs(line.log_format, line.log_threshold, line=line.name)

    listener = Listener(write.batch)
    engine = SipEngine(configure.line, write.batch, consumer=listener)
    try:
        await loop.run_in_executor(None, engine.start)
    except SipSetupError as exc:
        await asyncio.sleep(0)  # let queued events out first
        write(event("error", message=str(exc)))
        return 3

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reading = asyncio.ensure_future(_pump(reader, engine, write))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    # stopped by anything but the pool's shutdown command (which it always sends before
    # closing our stdin): stdin's EOF or the SIGTERM of PR_SET_PDEATHSIG, the worker is
    # gone. (getppid() would not do: the signal comes when the worker's forking thread
    # exits, while its other threads may still be our parent, and the EOF can come first)
    shut_down = reading.done() and not reading.cancelled() and reading.result() is True
    reading.cancel()
    stopping.cancel()
    if parent is not None and not shut_down:
        # nobody reads our events now, and the worker's restart wants our ports.
        # The BYEs (CANCELs) leave first thing; the rest of a clean stop (~1.4 s, mostly
        # pjsua's teardown, holding the GIL) is cut short by the kernel: SIGALRM's default
        # action ends the process whatever Python is doing
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, ORPHAN_STOP_SECONDS)
    await loop.run_in_executor(None, engine.stop)
    await loop.run_in_executor(None, listener.close)
    await asyncio.sleep(0.05)  # flush the last events queued by the SIP thread
    return 0


async def _pump(reader: asyncio.StreamReader, engine: Any, write: _Writer) -> bool:
    """Commands to the engine until shutdown (True) or the end of stdin (False)."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than the limit
            write(event("error", message=f"message longer than {MAX_LINE_BYTES} bytes"))
            continue
        if not line:
            return False  # the orchestrator closed the pipe
        if not line.strip():
            continue
        try:
            command = decode_command(line)
        except ProtocolError as exc:
            write(event("error", message=str(exc)))
            continue
        if isinstance(command, Shutdown):
            return True
        if isinstance(command, Configure):
            write(event("error", message="already configured"))
            continue
        engine.submit(command)


def die_with_parent() -> bool:
    """Ask for SIGTERM when the parent dies (Linux). The signal follows the exit of the
    parent's THREAD that started us: the pool starts lines from its event loop's thread,
    which lives as long as the worker. False: not available here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def main() -> None:
    given = os.environ.get(PARENT_ENV, "")
    parent = int(given) if given.isdigit() else None
    die_with_parent()
    if parent is not None and os.getppid() != parent:
        sys.exit(0)  # the worker died before the request took effect: nobody to serve
    protocol_fd = move_c_stdout_to_stderr()
    configure_logs("json", "info")  # until the configuration says otherwise
    sys.exit(asyncio.run(serve(protocol_fd, parent)))


if __name__ == "__main__":
    main()
