"""Baseline for the pool benchmark: one bare pjsua2 process, no pool, no pipe, no asyncio.

It only makes calls (4 at a time) to TARGET, holds each HOLD seconds after the answer,
hangs up, and starts the next, for DURATION seconds; then prints a JSON summary.

    python bench/bare_pjsua2.py TARGET_URI SIP_PORT RTP_PORT HOLD DURATION START_AT
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from typing import Any

import pjsua2 as pj

CALLS = 4


class BareCall(pj.Call):  # type: ignore[misc]
    def __init__(self, account: Any) -> None:
        super().__init__(account)
        self.started = time.time()
        self.answered_at: float | None = None
        self.hung = False
        self.done = False

    def onCallState(self, prm: Any) -> None:
        state = self.getInfo().state
        if state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.time()
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.done = True


def run_calls(
    ep: Any, account: Any, target: str, hold: float, start_at: float, duration: float
) -> tuple[int, list[float]]:
    """In its own frame: no Call may stay referenced once it returns (libDestroy aborts)."""
    while time.time() < start_at:
        ep.libHandleEvents(10)
    end = start_at + duration
    slots: list[BareCall | None] = [None] * CALLS
    retired: list[BareCall] = []
    completed = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    while True:
        now = time.time()
        retired.clear()
        for i, call in enumerate(slots):
            if call is None:
                if now < end:
                    fresh = BareCall(account)
                    try:
                        fresh.makeCall(target, pj.CallOpParam(True))
                    except pj.Error as exc:  # e.g. the slot is not free yet: next turn
                        errors[exc.reason] = errors.get(exc.reason, 0) + 1
                        retired.append(fresh)
                        continue
                    slots[i] = fresh
            elif call.done:
                if call.answered_at is not None:
                    completed += 1
                    latencies.append(call.answered_at - call.started)
                retired.append(call)  # dropped next turn, outside any callback
                slots[i] = None
            elif not call.hung and call.answered_at and now - call.answered_at >= hold:
                call.hung = True
                with contextlib.suppress(pj.Error):  # the far end may have hung up first
                    call.hangup(pj.CallOpParam(True))
        if now >= end and all(c is None or c.done for c in slots):
            break
        if now >= end + 5:  # a call stuck in a retransmission timer: do not wait 32 s
            ep.hangupAllCalls()
            break
        ep.libHandleEvents(5)
    if errors:
        print(f"makeCall errors: {errors}", file=sys.stderr)
    return completed, latencies


def main() -> None:
    result_fd = os.dup(1)  # pjlib prints to the C stdout; the summary goes to the real one
    os.dup2(2, 1)
    target, sip_port, rtp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold, duration, start_at = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = CALLS
    cfg.logConfig.level = 0
    cfg.logConfig.consoleLevel = 0
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = sip_port
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 200 if codec.codecId.startswith("PCMU") else 0)
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:bare@127.0.0.1:{sip_port}"
    acfg.mediaConfig.transportConfig.port = rtp_port
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.lockCodecEnabled = False
    account = pj.Account()
    account.create(acfg)

    completed, latencies = run_calls(ep, account, target, hold, start_at, duration)
    settle = time.time() + 0.5
    while time.time() < settle:
        ep.libHandleEvents(10)
    summary = json.dumps({"completed": completed, "latencies": latencies}) + "\n"
    os.write(result_fd, summary.encode())
    account.shutdown()
    del account
    gc.collect()
    ep.libDestroy()


if __name__ == "__main__":
    main()
