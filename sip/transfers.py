"""The transfer part of a line's SIP engine: to an agent by a second call bridged to the
caller (the bot stays in the media path and takes the caller back when the agent leg
ends), or by REFER (the far end dials the agent; our call ends when it answers).

Runs on the SIP thread (rules in sip.engine).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pjsua2 as pj

from sip.callbacks import _Call, _Record
from sip.media import MediaMixin
from sip.protocol import Transfer


class TransferMixin(MediaMixin):
    def _transfer(self, record: _Record, cmd: Transfer) -> None:
        if not record.answered or record.transfer_mode is not None:
            why = "the call is not answered" if not record.answered else "a transfer is under way"
            self._emit("error", call_id=record.call_id, message=f"cannot transfer: {why}")
            return
        record.agent_deadline = time.monotonic() + cmd.ring_timeout
        record.transfer_mode = cmd.mode
        record.agent_ringing = record.agent_answered = False
        if cmd.mode == "refer":
            record.call.xfer(cmd.agent_uri, pj.CallOpParam(True))
            return
        if self.free_slots <= 0:
            record.transfer_mode = None
            self._emit(
                "agent_failed", call_id=record.call_id, status=503, reason="no free line slot"
            )
            return
        self._allow_agent(cmd.agent_uri)
        self._drop_retired()
        agent = _Call(self, record.account, "agent")
        agent.record = record
        record.agent = agent
        self._live.add(agent)
        try:
            agent.makeCall(cmd.agent_uri, pj.CallOpParam(True))
        except pj.Error as exc:
            record.agent = None
            record.transfer_mode = None
            self._live.discard(agent)
            self._retired.append(agent)
            self._emit("agent_failed", call_id=record.call_id, status=0, reason=exc.info())

    def _on_agent_state(self, call: _Call, record: _Record | None, ci: Any) -> None:
        state = ci.state
        current = record is not None and record.agent is call and not record.finished
        if state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._retire(call)
        if not current or record is None:
            return
        if state == pj.PJSIP_INV_STATE_EARLY and not record.agent_ringing:
            record.agent_ringing = True
            self._emit("agent_ringing", call_id=record.call_id, status=ci.lastStatusCode)
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not record.agent_answered:
            record.agent_answered = True
            self._emit("agent_answered", call_id=record.call_id, mode="bridge")
            if record.agent_audio is not None:
                self._bridge(record)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            answered = record.agent_answered
            self._unbridge(record)
            record.agent = None
            record.transfer_mode = None
            if answered:
                self._emit("agent_ended", call_id=record.call_id)
            else:
                self._emit(
                    "agent_failed",
                    call_id=record.call_id,
                    status=ci.lastStatusCode,
                    reason=ci.lastReason,
                )

    def _give_up_transfer(self, record: _Record) -> None:
        """No agent within the transfer's ring timeout (or no final NOTIFY): the caller
        stays with the bot."""
        if record.transfer_mode == "bridge" and record.agent is not None:
            agent, record.agent = record.agent, None
            with contextlib.suppress(pj.Error):
                agent.hangup(pj.CallOpParam(True))  # CANCEL; its DISCONNECTED is ignored
        record.transfer_mode = None
        self._emit(
            "agent_failed",
            call_id=record.call_id,
            status=408,
            reason="agent did not answer in time",
        )

    def _on_transfer_status(self, call: _Call, status: int, reason: str, final: bool) -> None:
        record = call.record
        if record is None or record.finished or record.transfer_mode != "refer":
            return
        if not final:
            if 180 <= status < 200 and not record.agent_ringing:
                record.agent_ringing = True
                self._emit("agent_ringing", call_id=record.call_id, status=status)
            return
        record.transfer_mode = None
        if 200 <= status < 300:
            self._emit("agent_answered", call_id=record.call_id, mode="refer")
            self._hangup(record, "transfer")
        else:
            self._emit("agent_failed", call_id=record.call_id, status=status, reason=reason)
