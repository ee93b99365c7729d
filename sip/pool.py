"""The line pool (orchestrator side): N line processes, one asyncio resource.

    async with LinePool(PoolConfig(lines=4, trunks=[...])) as pool:
        await pool.dial("c1", "+15550001", "main", ring_timeout=30)
        while True:
            match await pool.next_event():  # typed events (sip.events); PoolClosed at the end
                case Answered(call_id=call_id): ...

* Each line is ``python -m sip.line`` with its own SIP port and RTP port range.
* ``dial`` places the call on the line with the most free slots; a line that refuses
  because it is full (an inbound call or agent leg took the slot meanwhile) makes the
  pool try the next one. When no line can take it, PoolFull.
* Commands for a call go to the line that carries it. Events of every line come out of
  ``next_event()`` in order, each stamped with its ``line``; a message that is not a
  valid event is logged and dropped.
* A line that dies (EOF on its pipe or exit) is noticed at once: each of its calls gets
  an ``Interrupted`` event, the pool a ``LineDied``, and a new process takes its place
  (same ports; ``LineRestarted`` once it is up).
* Closing the pool shuts every line down: each hangs up its calls (BYE, or CANCEL for
  unanswered ones) before it exits; a line that does not exit in time is killed.
* ``reconfigure(trunks)`` (trunks added or changed while running): a line process takes
  its trunks once, at ``configure`` (pjsua accounts, registrations), so each line is
  replaced by one with the new set, on the same ports: an idle line at once, a busy one
  takes no new call and is replaced when its last call ends. No call up is dropped;
  while lines drain, the pool has fewer free slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import structlog

from sip.endpoint import MAX_CALLS
from sip.errors import (
    DialOutcomeUnknown,
    DialRefused,
    PoolClosed,
    PoolError,
    PoolFull,
    UnknownCall,
)
from sip.events import (
    Accepted,
    Error,
    Failed,
    Hangup,
    Interrupted,
    LineDied,
    LineEvent,
    LineRestarted,
    Ready,
    Refused,
    decode,
)
from sip.lines import STOP_TIMEOUT, _Line, spawn
from sip.logs import current_settings
from sip.protocol import (
    Configure,
    Dial,
    LineConfig,
    Play,
    ProtocolError,
    StopPlay,
    Transfer,
    TrunkConfig,
)
from sip.protocol import Hangup as HangupCommand

log = structlog.get_logger("sip.pool")

START_TIMEOUT = 20.0
ACK_TIMEOUT = 10.0
RESTART_DELAY = 0.5
PORT_WAIT = 10.0  # a line's SIP port still held (a dead worker's line on its way out)
PORT_RETRY = 0.25


@dataclass(frozen=True)
class PoolConfig:
    lines: int = 4
    bind_address: str = "127.0.0.1"
    sip_port: int = 5060  # line i listens on sip_port + i (0: any free port)
    rtp_port: int = 20000  # line i uses rtp_port + i * rtp_port_range ...
    rtp_port_range: int = 100
    trunks: tuple[TrunkConfig, ...] = ()
    codecs: tuple[str, ...] = ("PCMU/8000", "PCMA/8000", "G722/16000")
    inbound_reject_status: int = 603
    tcp: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_port: int = 0  # line i listens for TLS on tls_port + i (0: any free port)
    log_level: int | None = None  # pjsip's own (LineConfig.log_level)
    measure_audio: bool = False
    allow_from: tuple[str, ...] = ()  # SIP sources besides the trunks (LineConfig)
    filter_sources: bool = True
    user_agent: str = "campaign-dialer"

    def line_config(self, index: int) -> LineConfig:
        logs = current_settings()  # lines log like this process (they share its stderr)
        return LineConfig(
            name=f"line{index}",
            bind_address=self.bind_address,
            sip_port=self.sip_port + index if self.sip_port else 0,
            rtp_port=self.rtp_port + index * self.rtp_port_range,
            rtp_port_range=self.rtp_port_range,
            tcp=self.tcp,
            tls_cert_file=self.tls_cert_file,
            tls_key_file=self.tls_key_file,
            tls_port=self.tls_port + index if self.tls_port else None,
            codecs=list(self.codecs),
            inbound_reject_status=self.inbound_reject_status,
            trunks=list(self.trunks),
            log_level=self.log_level,
            log_format=logs.format,
            log_threshold=logs.level,
            measure_audio=self.measure_audio,
            allow_from=list(self.allow_from),
            filter_sources=self.filter_sources,
            user_agent=self.user_agent,
        )


class LinePool:
    def __init__(self, config: PoolConfig) -> None:
        if config.lines < 1:
            raise PoolError("a pool needs at least one line")
        self.config = config
        self._lines = [_Line(i, config.line_config(i)) for i in range(config.lines)]
        self._events: deque[LineEvent] = deque()
        self._arrived = asyncio.Event()  # set when an event is queued, or at the close
        self._closed = False
        self._call_line: dict[str, _Line] = {}
        self._dialing: set[str] = set()
        self._closing = False
        self._restarting: set[asyncio.Task[None]] = set()
        self.line_deaths = 0  # line processes that died under us (metrics, tests)
        self.bad_messages = 0  # messages from lines that were not valid events (dropped)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> LinePool:
        try:
            await asyncio.gather(*(self._start(line) for line in self._lines))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def reconfigure(self, trunks: tuple[TrunkConfig, ...]) -> None:
        """Carry these trunks from now on (see the module's notes: lines are replaced,
        busy ones once their calls end)."""
        self.config = replace(self.config, trunks=tuple(trunks))
        for line in self._lines:
            line.config = self.config.line_config(line.index)
            line.stale = True
        self._rotate()

    def _rotate(self) -> None:
        """Replace the stale lines that carry nothing now."""
        if self._closing:
            return
        for line in self._lines:
            idle = not line.calls and line.pending == 0
            if line.stale and line.alive and not line.restarting and idle:
                line.alive = False  # no dial picks it from here on
                line.restarting = True
                task = asyncio.create_task(self._replace(line))
                self._restarting.add(task)
                task.add_done_callback(self._restarting.discard)

    async def _replace(self, line: _Line) -> None:
        line.ask_to_stop()
        await line.wait_exit()  # its ports are free again
        try:
            await self._start(line)
        except (PoolError, OSError) as exc:
            log.error("line replacement failed; retrying", line=line.name, error=str(exc))
            line.restarting = False
            if not self._closing:
                await self._restart(line)
            return
        line.restarting = False
        log.info("line replaced with the new trunks", line=line.name,
                 trunks=[t.name for t in line.config.trunks])  # fmt: skip
        self._rotate()  # trunks changed again meanwhile

    async def _start(self, line: _Line) -> None:
        """Start the line. Its SIP port still in use (the lines of a worker killed just
        before this one started take a moment to exit) is waited for, up to PORT_WAIT."""
        deadline = time.monotonic() + PORT_WAIT
        restarting, waited = line.restarting, False
        try:
            while True:
                try:
                    return await self._start_once(line)
                except PoolError as exc:
                    held = "Address already in use" in str(exc) and line.config.sip_port
                    if not held or time.monotonic() >= deadline:
                        raise
                if not waited:
                    log.warning("SIP port in use: waiting for it", line=line.name,
                                port=line.config.sip_port, up_to_seconds=PORT_WAIT)  # fmt: skip
                    waited = True
                line.restarting = True  # the failed process's exit starts no replacement
                await asyncio.sleep(PORT_RETRY)
        finally:
            line.restarting = restarting

    async def _start_once(self, line: _Line) -> None:
        line.stale = False  # the config sent below is the current one
        line.process = await spawn()
        line.ready = asyncio.get_running_loop().create_future()
        line.free = line.pending = 0
        line.outbox = []
        line.reader = asyncio.create_task(self._read(line), name=f"pool-{line.name}")
        self._send(line, Configure(line=line.config))
        try:
            ready = await asyncio.wait_for(asyncio.shield(line.ready), START_TIMEOUT)
        except (TimeoutError, PoolError) as exc:
            if line.process.returncode is None:  # never leave a half-started line behind
                line.process.kill()
            if isinstance(exc, PoolError):
                raise
            raise PoolError(f"{line.name} did not start within {START_TIMEOUT:.0f} s") from None
        line.sip_port = ready.sip_port
        line.alive = True
        log.info("line up", line=line.name, sip_port=line.sip_port, pid=line.process.pid)

    async def close(self) -> None:
        """Shut every line down (each hangs up its calls first); kill what will not stop."""
        self._closing = True
        for task in self._restarting:
            task.cancel()
        for line in self._lines:
            line.ask_to_stop()
        await asyncio.gather(*(line.wait_exit() for line in self._lines))
        self._closed = True
        self._arrived.set()

    # -- commands -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return sum(max(0, line.room) for line in self._lines)

    @property
    def lines_up(self) -> tuple[int, int]:
        """(lines alive, lines in all): health checks."""
        return sum(1 for line in self._lines if line.alive), len(self._lines)

    @property
    def sip_ports(self) -> list[int]:
        return [line.sip_port for line in self._lines]

    def pids(self) -> list[int | None]:
        return [line.process.pid if line.process else None for line in self._lines]

    async def dial(
        self,
        call_id: str,
        to: str,
        trunk: str,
        *,
        ring_timeout: float = 30.0,
        caller_id: str | None = None,
        headers: dict[str, str] | None = None,
        listen: list[str] | None = None,
    ) -> str:
        """Place a call; returns the name of the line carrying it. ``listen``: phrases to
        recognise in the callee's audio (``speech`` events follow the answer)."""
        if self._closing:
            raise PoolError("the pool is shutting down")
        if call_id in self._call_line or call_id in self._dialing:
            raise DialRefused(f"call {call_id!r} is already up")
        self._dialing.add(call_id)
        try:
            return await self._place(call_id, to, trunk, ring_timeout, caller_id, headers, listen)
        finally:
            self._dialing.discard(call_id)

    async def _place(
        self,
        call_id: str,
        to: str,
        trunk: str,
        ring_timeout: float,
        caller_id: str | None,
        headers: dict[str, str] | None,
        listen: list[str] | None,
    ) -> str:
        command = Dial(
            call_id=call_id,
            to=to,
            trunk=trunk,
            ring_timeout=ring_timeout,
            caller_id=caller_id,
            headers=headers or {},
            listen=listen,
        )
        tried: set[int] = set()
        while True:
            candidates = [ln for ln in self._lines if ln.index not in tried and ln.room > 0]
            if not candidates:
                raise PoolFull(f"no free line slot for call {call_id!r}")
            line = max(candidates, key=lambda ln: (ln.room, -ln.index))
            tried.add(line.index)
            future: asyncio.Future[Accepted | Refused] = asyncio.get_running_loop().create_future()
            line.acks[call_id] = future
            line.pending += 1
            try:
                self._send(line, command)
                async with asyncio.timeout(ACK_TIMEOUT):
                    reply = await future
            except TimeoutError:
                # It may still place the call later: a line that does not answer within
                # ACK_TIMEOUT is broken. Kill it (its calls are reported interrupted, a new
                # line starts) rather than risk the same call on two lines.
                log.error("line did not acknowledge a dial; killing it", line=line.name)
                if line.process is not None and line.process.returncode is None:
                    line.process.kill()
                raise DialOutcomeUnknown(
                    f"call {call_id!r}: {line.name} did not answer (killed); the INVITE "
                    "may have left"
                ) from None
            finally:
                line.pending -= 1
                line.acks.pop(call_id, None)
                self._rotate()
            if isinstance(reply, Accepted):
                return line.name
            if not reply.retry:
                raise DialRefused(f"call {call_id!r}: {reply.reason}")

    async def hangup(self, call_id: str, reason: str | None = None) -> None:
        self._send(self._carrier(call_id), HangupCommand(call_id=call_id, reason=reason))

    async def play(self, call_id: str, wav: str) -> None:
        self._send(self._carrier(call_id), Play(call_id=call_id, wav=wav))

    async def stop_play(self, call_id: str) -> None:
        self._send(self._carrier(call_id), StopPlay(call_id=call_id))

    async def transfer(
        self, call_id: str, agent_uri: str, mode: str = "bridge", ring_timeout: float = 30.0
    ) -> None:
        self._send(
            self._carrier(call_id),
            Transfer(call_id=call_id, agent_uri=agent_uri, mode=mode, ring_timeout=ring_timeout),
        )

    def _carrier(self, call_id: str) -> _Line:
        line = self._call_line.get(call_id)
        if line is None:
            raise UnknownCall(f"no call {call_id!r} is up")
        return line

    def _send(self, line: _Line, message: Any) -> None:
        line.send(message)

    def _forget(self, line: _Line, call_id: str) -> None:
        line.calls.discard(call_id)
        if self._call_line.get(call_id) is line:
            del self._call_line[call_id]
        if line.stale and not line.calls:
            self._rotate()

    # -- events ---------------------------------------------------------------------------

    async def next_event(self, within: float | None = None) -> LineEvent:
        """The next event of any line, in arrival order. TimeoutError if none comes
        ``within`` seconds; PoolClosed once the pool is closed and its events are read."""
        if within is None:
            return await self._next()
        async with asyncio.timeout(within):
            return await self._next()

    async def _next(self) -> LineEvent:
        while not self._events:
            if self._closed:
                raise PoolClosed("the pool is closed")
            self._arrived.clear()
            await self._arrived.wait()
        return self._events.popleft()

    def _put(self, event: LineEvent) -> None:
        self._events.append(event)
        self._arrived.set()

    async def _read(self, line: _Line) -> None:
        process = line.process
        assert process is not None and process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                break
            try:
                event = decode(raw)
            except ProtocolError as exc:
                self.bad_messages += 1
                log.error("bad message from line", line=line.name, error=str(exc))
                continue
            self._on_event(line, event)
        await process.wait()
        if process is line.process:  # not an old process a restart already replaced
            self._on_exit(line, process.returncode)

    def _on_event(self, line: _Line, event: LineEvent) -> None:
        if event.free is not None:
            line.free = event.free
        if isinstance(event, Ready):
            if line.ready is not None and not line.ready.done():
                line.ready.set_result(event)
            return
        if isinstance(event, Accepted | Refused) and event.call_id in line.acks:
            if isinstance(event, Accepted):  # from now on the call is this line's
                line.calls.add(event.call_id)
                self._call_line[event.call_id] = line
            if not line.acks[event.call_id].done():
                line.acks[event.call_id].set_result(event)
            if isinstance(event, Refused):
                return  # dial() decides: another line, or an error to its caller
        if isinstance(event, Error) and line.ready is not None and not line.ready.done():
            line.ready.set_exception(PoolError(f"{line.name}: {event.message}"))
            return
        if isinstance(event, Failed | Hangup | Refused):
            self._forget(line, event.call_id)
        self._put(event.model_copy(update={"line": line.name}))

    def _on_exit(self, line: _Line, code: int | None) -> None:
        line.alive = False
        if line.ready is not None and not line.ready.done():
            line.ready.set_exception(PoolError(f"{line.name} exited with code {code} at start"))
        for call_id, future in line.acks.items():
            if not future.done():
                future.set_result(Refused(call_id=call_id, reason=f"{line.name} died", retry=True))
        now, mono = time.time(), time.monotonic()
        for call_id in sorted(line.calls):
            self._put(Interrupted(call_id=call_id, line=line.name, at=now, mono=mono))
            if self._call_line.get(call_id) is line:
                del self._call_line[call_id]
        line.calls.clear()
        if self._closing or line.restarting:
            return  # a restart loop is already at work on this line
        log.error("line died; starting a replacement", line=line.name, exit_code=code)
        self.line_deaths += 1
        self._put(LineDied(line=line.name, exit_code=code, at=now, mono=mono))
        task = asyncio.create_task(self._restart(line))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, line: _Line) -> None:
        line.restarting = True
        try:
            while not self._closing:
                await asyncio.sleep(RESTART_DELAY * min(2**line.restarts, 60))
                line.restarts += 1
                try:
                    await self._start(line)
                except (PoolError, OSError) as exc:
                    log.error("line restart failed", line=line.name, error=str(exc))
                    continue
                line.restarts = 0
                self._put(LineRestarted(line=line.name, at=time.time(), mono=time.monotonic()))
                return
        finally:
            line.restarting = False


__all__ = [
    "MAX_CALLS",
    "STOP_TIMEOUT",
    "DialOutcomeUnknown",
    "DialRefused",
    "LinePool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolFull",
    "UnknownCall",
]
