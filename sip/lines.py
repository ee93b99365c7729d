"""One line process as the pool (sip.pool) sees it: its state, its pipe, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import structlog

from sip.errors import PoolError
from sip.events import Accepted, Ready, Refused
from sip.protocol import PARENT_ENV, LineConfig, Shutdown, encode

log = structlog.get_logger("sip.pool")

STOP_TIMEOUT = 10.0


@dataclass
class _Line:
    index: int
    config: LineConfig
    process: asyncio.subprocess.Process | None = None
    free: int = 0
    pending: int = 0  # dials sent, not yet accepted or refused
    calls: set[str] = field(default_factory=set)
    acks: dict[str, asyncio.Future[Accepted | Refused]] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    ready: asyncio.Future[Ready] | None = None
    reader: asyncio.Task[None] | None = None
    alive: bool = False
    sip_port: int = 0
    restarts: int = 0
    restarting: bool = False
    stale: bool = False  # runs an older trunk set: no new calls, replaced once idle

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def room(self) -> int:
        return self.free - self.pending if self.alive and not self.stale else 0

    def send(self, message: Any) -> None:
        """Queue a command; one write per line per loop iteration carries all queued ones
        (measured: a pipe write per command was the orchestrator's largest cost)."""
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            raise PoolError(f"{self.name} is not running")
        self.outbox.append(encode(message))
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        data, self.outbox = b"".join(self.outbox), []
        process = self.process
        stdin = process.stdin if process is not None else None
        if data and stdin is not None and not stdin.is_closing():
            stdin.write(data)

    def ask_to_stop(self) -> None:
        """Shutdown, then EOF: the line hangs up its calls and exits."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(PoolError):
                self.send(Shutdown())
            self.flush()
            if process.stdin is not None:
                process.stdin.close()

    async def wait_exit(self) -> None:
        """Until its process has exited (killed after STOP_TIMEOUT) and its pipe is read."""
        process = self.process
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("line did not stop; killing it", line=self.name)
            process.kill()
            await process.wait()
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


async def spawn() -> asyncio.subprocess.Process:
    """A new line process (``python -m sip.line``), waiting for its configuration."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sip.line",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        limit=1 << 20,
        start_new_session=True,  # a Ctrl-C to the orchestrator is not a kill of its lines
        # its parent's pid: a line outlives no worker (sip.line)
        env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())},
    )
