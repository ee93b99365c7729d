"""The media part of a line's SIP engine: the calls' audio, taps, players, the bridge
between a caller and an agent, and RTP pinning (sip.rtpguard) and watching.

Runs on the SIP thread (rules in sip.engine); taps are the fixed pool made at start.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pjsua2 as pj

from sip.callbacks import _Call, _Player, _Record
from sip.enginebase import TAP_CLOCK_RATE, EngineBase
from sip.rtpguard import close_ports, host_port, local_ports, pin

WATCH_PINNED_TURNS = 25  # ~0.25 s


class MediaMixin(EngineBase):
    def _on_media_state(self, call: _Call) -> None:
        record = call.record
        if record is None or record.finished:
            return
        try:
            audio = call.getAudioMedia(-1)  # the first active audio (cheaper than getInfo)
        except pj.Error:
            return  # no active audio (yet, or on hold)
        if call.role == "agent":
            record.agent_audio = audio
            if record.agent_answered:
                self._bridge(record)
        else:
            record.audio = audio
            self._attach_tap(record)
            if record.pending_wav and record.answered:
                self._play(record, record.pending_wav)

    def _on_sdp_created(self, call: _Call, sdp: str) -> None:
        """The call's first SDP: its RTP sockets were just bound and nobody should send
        to them before the answer says who the callee is. Later SDPs (re-INVITEs) find
        the call pinned already."""
        if call.role == "inbound" or call.rtp_state != "open":
            return
        ports = local_ports(sdp)
        if ports and close_ports(ports):
            call.rtp_state = "closed"

    def _pin_media(self, call: _Call, media: int, info: Any) -> None:
        """SDP negotiated, pjmedia's stream not created yet: only the negotiated address
        may send RTP from now on (again after a re-INVITE that changes it)."""
        if call.role == "inbound":
            return
        remote_text = str(info.remoteRtpAddress)
        call.rtp_remote, call.rtp_media = remote_text, media
        try:
            local = call.getMedTransportInfo(media)
        except pj.Error:
            local = None
        remote = host_port(remote_text)
        ports = (host_port(local.localRtpName), host_port(local.localRtcpName)) if local else ()
        if remote is not None and len(ports) == 2 and ports[0] and ports[1]:
            rtcp = host_port(str(info.remoteRtcpAddress)) or (remote[0], remote[1] + 1)
            if pin(ports[0][1], ports[1][1], remote, rtcp):
                call.rtp_state = "pinned"
                return
        call.rtp_state = "watched"
        record = call.record
        self._emit(
            "error",
            call_id=record.call_id if record else None,
            security="rtp",
            message=f"cannot restrict RTP to {remote_text}: only watching where it comes from",
        )

    def _watch_media(self) -> None:
        """Where did the last RTP come from? Only a call the kernel filter could not pin
        (or a socket pjmedia re-created) can hear a stranger; from then on its tap is deaf
        (frames within the turn before may have passed). Every turn for a call that is
        only watched; every WATCH_PINNED_TURNS for pinned ones (the check is defence in
        depth there, and per turn it cost more than the filters: measured)."""
        self._watch_turn = (self._watch_turn + 1) % WATCH_PINNED_TURNS
        for record in self._records.values():
            for call in (record.call, record.agent):
                if call is None or call.rtp_remote is None or call.rtp_foreign:
                    continue
                if call.rtp_state == "pinned" and self._watch_turn:
                    continue
                try:
                    source = call.getMedTransportInfo(call.rtp_media).srcRtpName
                except pj.Error:
                    continue
                if not source or source == call.rtp_remote:
                    continue
                call.rtp_foreign = True
                if call is record.call and record.tap is not None:
                    record.tap.blocked = True
                leg = "the callee's" if call is record.call else "the agent's"
                self._emit(
                    "error",
                    call_id=record.call_id,
                    security="rtp",
                    message=f"RTP from {source} on {leg} leg, negotiated {call.rtp_remote}: "
                    "its audio is ignored",
                )

    # -- taps -----------------------------------------------------------------------------

    def _attach_tap(self, record: _Record) -> None:
        # A Python tap costs ~0.7% of a core per call (a callback every 20 ms): only when
        # someone listens (the call asked for it, or measure_audio for QA).
        if record.listen is None and not self.config.measure_audio:
            return
        if not record.answered:
            return  # early media (ringback, 183 announcements) is not the callee answering
        if record.tap is None and self._idle_taps and record.audio is not None:
            tap = self._idle_taps.pop()
            tap.frames = tap.voiced = 0
            tap.blocked = record.call.rtp_foreign
            tap.call_id = record.call_id
            record.tap = tap
            tap.consumer = self.consumer if record.listen is not None else None
            if tap.consumer is not None and record.listen is not None:
                with contextlib.suppress(Exception):
                    tap.consumer.call_started(record.call_id, TAP_CLOCK_RATE, record.listen)
            record.audio.startTransmit(tap)

    def _detach_tap(self, record: _Record) -> None:
        tap = record.tap
        if tap is None:
            return
        record.tap = None
        record.rx_frames += tap.frames
        record.rx_voiced += tap.voiced
        tap.call_id = None
        consumer, tap.consumer = tap.consumer, None
        if record.audio is not None:
            with contextlib.suppress(pj.Error):
                record.audio.stopTransmit(tap)
        self._idle_taps.append(tap)
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.call_ended(record.call_id)

    def _release_media(self, record: _Record) -> None:
        self._stop_play(record)
        self._detach_tap(record)
        record.audio = None
        record.agent_audio = None

    # -- players --------------------------------------------------------------------------

    def _play(self, record: _Record, wav: str) -> None:
        if record.bridged:
            self._emit(
                "error", call_id=record.call_id, message="cannot play: the caller is with an agent"
            )
            return
        if record.audio is None or not record.answered:
            record.pending_wav = wav  # plays as soon as the call has audio
            return
        record.pending_wav = None
        self._stop_play(record)
        player = _Player(self, record.call_id, wav)
        try:
            player.createPlayer(wav, pj.PJMEDIA_FILE_NO_LOOP)
        except pj.Error as exc:
            self._emit("error", call_id=record.call_id, message=f"cannot play {wav}: {exc.reason}")
            return
        self._players.add(player)
        record.player = player
        if not record.bridged:
            player.startTransmit(record.audio)

    def _stop_play(self, record: _Record) -> None:
        record.pending_wav = None
        player, record.player = record.player, None
        if player is not None:
            if record.audio is not None:
                with contextlib.suppress(pj.Error):
                    player.stopTransmit(record.audio)
            self._players.discard(player)

    def _play_done(self, player: _Player) -> None:
        record = self._records.get(player.call_id)
        if record is not None and record.player is player:
            self._stop_play(record)
            self._emit("play_done", call_id=player.call_id, wav=player.wav)

    # -- the conference bridge: caller and agent ------------------------------------------

    def _bridge(self, record: _Record) -> None:
        if record.bridged or record.audio is None or record.agent_audio is None:
            return
        self._stop_play(record)  # the bot stops talking
        self._detach_tap(record)  # and stops listening: speech is not in use
        record.audio.startTransmit(record.agent_audio)
        record.agent_audio.startTransmit(record.audio)
        record.bridged = True

    def _unbridge(self, record: _Record) -> None:
        if not record.bridged:
            return
        record.bridged = False
        with contextlib.suppress(pj.Error):
            record.audio.stopTransmit(record.agent_audio)
        with contextlib.suppress(pj.Error):
            record.agent_audio.stopTransmit(record.audio)
        record.agent_audio = None
        self._attach_tap(record)  # the caller is back with the bot
