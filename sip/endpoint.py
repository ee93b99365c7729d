"""Bootstrap of the one pjsua2 Endpoint a process may have (PJSUA2_NOTES.md).

Everything here runs on the process's SIP thread: the Endpoint is created with
``threadCnt = 0`` and ``mainThreadOnly = True``, so that thread alone polls pjsip
(``libHandleEvents``) and every SIP callback runs on it. There is no sound card: the
null audio device drives the conference bridge clock.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from sip.errors import SipSetupError

MAX_CALLS = 4  # PJSUA_MAX_CALLS in the only wheel that installs here; larger is clamped
MAX_ACCOUNTS = 8  # PJSUA_MAX_ACC: one more aborts the process (assertion)
PJ_ETOOMANY = 70010
USER_AGENT = "campaign-dialer"


@dataclass
class Transports:
    udp_port: int
    tcp: bool
    tls_port: int | None


def move_c_stdout_to_stderr() -> int:
    """pjlib prints to the C stdout; keep the pipe protocol's stdout clean.

    Returns a new descriptor on the original stdout, for the protocol.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return protocol_fd


def create_endpoint(
    ep: Any = None,
    log_level: int = 0,
    media_clock_rate: int = 16000,
    user_agent: str = USER_AGENT,
    log_writer: Any = None,
) -> Any:
    """libCreate + libInit on ``ep`` (a pj.Endpoint subclass with callbacks, or a new one).

    ``log_writer`` (a pj.LogWriter) gets pjsip's log up to ``log_level``; pjsua2 deletes
    it in ``libDestroy``, so the caller hands it over with ``__disown__()``.
    """
    ep = ep if ep is not None else pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = MAX_CALLS
    cfg.uaConfig.userAgent = user_agent
    cfg.uaConfig.mwiUnsolicitedEnabled = False  # no unsolicited NOTIFY is ever of use here
    cfg.logConfig.level = log_level
    cfg.logConfig.consoleLevel = log_level  # pjsua hands the writer only these levels
    if log_writer is not None:
        cfg.logConfig.writer = log_writer
        cfg.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        cfg.logConfig.msgLogging = log_level >= 5  # whole SIP messages: trace levels only
    cfg.medConfig.noVad = True
    cfg.medConfig.clockRate = media_clock_rate
    cfg.medConfig.sndClockRate = media_clock_rate
    ep.libInit(cfg)
    return ep


def add_transports(
    ep: Any,
    bind_address: str,
    port: int,
    *,
    tcp: bool = True,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    tls_port: int | None = None,
) -> Transports:
    """UDP (and TCP on the same port number; TLS when a certificate is configured)."""
    udp = pj.TransportConfig()
    udp.boundAddress = bind_address
    udp.port = port
    try:
        udp_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, udp)
        actual = int(ep.transportGetInfo(udp_id).localName.rsplit(":", 1)[1])
        if tcp:
            tcp_cfg = pj.TransportConfig()
            tcp_cfg.boundAddress = bind_address
            tcp_cfg.port = actual
            ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, tcp_cfg)
        actual_tls = None
        if tls_cert_file:
            tls_cfg = pj.TransportConfig()
            tls_cfg.boundAddress = bind_address
            tls_cfg.port = tls_port or 0  # 0: any free port (never a neighbour's SIP port)
            tls_cfg.tlsConfig.certFile = tls_cert_file
            tls_cfg.tlsConfig.privKeyFile = tls_key_file or tls_cert_file
            tls_id = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls_cfg)
            actual_tls = int(ep.transportGetInfo(tls_id).localName.rsplit(":", 1)[1])
    except pj.Error as exc:
        raise SipSetupError(
            f"cannot open SIP transport on {bind_address}:{port}: {exc.reason}"
        ) from None
    return Transports(udp_port=actual, tcp=tcp, tls_port=actual_tls)


def set_codec_priorities(ep: Any, codecs: list[str]) -> None:
    """Only the configured codecs, in the configured order (speex by default clipped audio)."""
    known = {c.codecId: c for c in ep.codecEnum2()}
    wanted: list[str] = []
    for name in codecs:
        match = [cid for cid in known if cid.lower().startswith(name.lower())]
        if not match:
            raise SipSetupError(f"codec {name!r} is not available (have: {', '.join(known)})")
        wanted.extend(m for m in match if m not in wanted)
    for cid in known:
        ep.codecSetPriority(cid, 0)
    for rank, cid in enumerate(wanted):
        ep.codecSetPriority(cid, 254 - rank)


def collect_like_python() -> None:
    """Python's automatic collection, run by hand on the SIP thread (it is disabled).

    Cheap when there is nothing to do: a look at the allocation counters.
    """
    young, middle, old = gc.get_count()
    threshold0, threshold1, threshold2 = gc.get_threshold()
    if young < threshold0:
        return
    if middle < threshold1:
        gc.collect(0)
    elif old < threshold2:
        gc.collect(1)
    else:
        gc.collect(2)


def media_transport(rtp_port: int, port_range: int, bind_address: str) -> Any:
    """RTP bound to the SIP address: otherwise pjmedia advertises the host's default IP."""
    cfg = pj.TransportConfig()
    cfg.boundAddress = bind_address
    cfg.port = rtp_port
    cfg.portRange = port_range
    return cfg


def destroy_endpoint(ep: Any, *holders: list[Any] | set[Any] | dict[Any, Any]) -> None:
    """The shutdown order of the notes: no call, account or media object may outlive it."""
    with contextlib.suppress(pj.Error):
        ep.audDevManager().setNoDev()
    for holder in holders:
        holder.clear()
    gc.collect()
    ep.libDestroy()
    gc.enable()
