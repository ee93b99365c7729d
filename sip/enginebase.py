"""The state of a line's SIP engine and what every part of it uses (rules in sip.engine).

Every reference the engine holds to a pjsua2 object is one of the attributes set here.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sip.callbacks import FrameConsumer, _Account, _Call, _Player, _Record, _Tap
from sip.endpoint import MAX_ACCOUNTS, MAX_CALLS
from sip.errors import SipSetupError
from sip.pjlog import LogWriter
from sip.protocol import LineConfig, event
from sip.sockfilter import Network, attach, own_sockets, resolve_ipv4, sip_udp_program, tcp_program
from sip.uri import bare_host

MAX_AGENT_SOURCES = 64
TAP_CLOCK_RATE = 16000  # the conference bridge's, so the taps'

Emit = Callable[[list[dict[str, Any]]], None]


class EngineBase:
    """Mixed into SipEngine with the media, transfer and start-up parts (sip.media,
    sip.transfers, sip.startup); the hooks below are what the pjsua2 callbacks call."""

    def __init__(
        self, config: LineConfig, emit: Emit, consumer: FrameConsumer | None = None
    ) -> None:
        if len(config.trunks) > MAX_ACCOUNTS - 1:
            raise SipSetupError(f"a line carries at most {MAX_ACCOUNTS - 1} trunks")
        self.config = config
        self._emit_raw = emit
        self.consumer = consumer
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.sip_port = 0
        # SIP-thread state
        self._ep: Any = None
        self._accounts: dict[str, _Account] = {}
        self._local_account: _Account | None = None
        self._records: dict[str, _Record] = {}
        self._live: set[_Call] = set()
        self._retired: list[_Call] = []
        self._idle_taps: list[_Tap] = []
        self._all_taps: list[_Tap] = []
        self._players: set[_Player] = set()
        self._to_reject: list[_Call] = []  # inbound calls, rejected on the next turn
        self._watch_turn = 0
        self._sip_sources: list[Network] = []  # who may send us SIP requests
        self._agent_sources: list[Network] = []
        self._filtered_ports: list[tuple[int, socket.SocketKind]] = []
        self._outbox: list[dict[str, Any]] = []
        self._log_writer: LogWriter | None = None  # owned by the Endpoint once handed over

    if TYPE_CHECKING:  # implemented by the parts of SipEngine

        def _on_call_state(self, call: _Call, wall: float, mono: float) -> None: ...
        def _on_sdp_created(self, call: _Call, sdp: str) -> None: ...
        def _pin_media(self, call: _Call, media: int, info: Any) -> None: ...
        def _on_media_state(self, call: _Call) -> None: ...
        def _on_transfer_status(
            self, call: _Call, status: int, reason: str, final: bool
        ) -> None: ...
        def _on_incoming(self, account: _Account, pj_call_id: int) -> None: ...

    @property
    def _taps_wanted(self) -> bool:
        return self.consumer is not None or self.config.measure_audio

    @property
    def free_slots(self) -> int:
        return MAX_CALLS - len(self._live)

    def _emit(self, name: str, **fields: Any) -> None:
        fields.setdefault("at", time.time())
        fields.setdefault("mono", time.monotonic())  # what billing runs on: no clock steps
        self._outbox.append(event(name, free=self.free_slots, **fields))

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._emit_raw(batch)

    # -- calls ----------------------------------------------------------------------------

    def _retire(self, call: _Call) -> None:
        if call in self._live:
            self._live.discard(call)
            self._retired.append(call)

    def _drop_retired(self) -> None:
        """Dropped here, outside their callbacks, on this thread, cycles cut first.

        Never while another live call holds the same pjsua slot: pjsua2's ~Call clears
        the slot's user data and hangs up whatever call is in it (pjproject #3856), so a
        slot reused during the last poll (inbound INVITEs arrive in bursts) would lose
        the new call's callbacks and leave it in ``_live`` for good (measured: a flood of
        200 INVITEs left all 4 slots dead). A retired call waits for its slot to free up.
        So this runs right before anything can reuse a slot (makeCall, the next poll):
        under load a slot is almost never free at the start of a turn, and waiting for
        that piled up thousands of retired calls (measured: +16 MiB per line, pool
        throughput 92% -> 79% of bare pjsua2).
        """
        if not self._retired:
            return
        busy = {call.getId() for call in self._live}
        waiting: list[_Call] = []
        for call in self._retired:
            if call.getId() in busy:
                waiting.append(call)
            else:
                call.record = None
        self._retired = waiting

    def _hangup(self, record: _Record, by: str) -> None:
        if record.hangup_by is None:
            record.hangup_by = by
        prm = pj.CallOpParam(True)
        with contextlib.suppress(pj.Error):  # already disconnecting
            record.call.hangup(prm)

    # -- who may send us SIP (sip.sockfilter) -------------------------------------------

    def _allow_agent(self, uri: str) -> None:
        """Agents we dial send their BYE and re-INVITEs from their own address."""
        new = [n for n in resolve_ipv4(bare_host(uri)) if n not in self._agent_sources]
        if new:
            self._agent_sources = (self._agent_sources + new)[-MAX_AGENT_SOURCES:]
            self._apply_source_filter()

    def _apply_source_filter(self) -> None:
        if not self.config.filter_sources:
            return
        sources = list(dict.fromkeys(self._sip_sources + self._agent_sources))
        address = self.config.bind_address
        for port, kind in self._filtered_ports:
            program = (
                sip_udp_program(sources) if kind == socket.SOCK_DGRAM else tcp_program(sources)
            )
            socks = own_sockets(port, kind, address if address != "0.0.0.0" else None)
            if not socks:
                raise SipSetupError(f"cannot find the SIP socket on port {port} to filter it")
            for sock in socks:
                try:
                    attach(sock, program)
                finally:
                    sock.close()
