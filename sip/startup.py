"""The start-up part of a line's SIP engine: the Endpoint, its transports and the filter
on who may send them SIP (sip.sockfilter), the accounts (one per trunk and a local one),
and the pool of taps.

Runs on the SIP thread (rules in sip.engine).
"""

from __future__ import annotations

import socket

import pjsua2 as pj

from sip.audio import vector_bytes
from sip.callbacks import _Account, _Endpoint, _Tap
from sip.endpoint import (
    MAX_CALLS,
    add_transports,
    create_endpoint,
    media_transport,
    set_codec_priorities,
)
from sip.enginebase import TAP_CLOCK_RATE, EngineBase
from sip.errors import SipSetupError
from sip.logs import PjsipLog, pjsip_produced
from sip.pjlog import LogWriter, log_early
from sip.protocol import TrunkConfig
from sip.sockfilter import Network, parse_networks, resolve_ipv4
from sip.uri import bare_host, host_of, registrar_uri


class StartupMixin(EngineBase):
    def _setup(self) -> None:
        vector_bytes(pj.ByteVector())  # choose the frame reader here, not on the clock thread
        cfg = self.config
        self._ep = _Endpoint(self)
        # pjsip's own log: through structlog from libCreate on, never raw on stderr
        level = cfg.log_level if cfg.log_level is not None else pjsip_produced(cfg.log_threshold)
        pjsip_log = PjsipLog(line=cfg.name)
        log_early(pjsip_log, level)
        self._log_writer = LogWriter(pjsip_log)
        self._log_writer.__disown__()  # libDestroy deletes it: Python must not as well
        ep = create_endpoint(self._ep, level, TAP_CLOCK_RATE, cfg.user_agent, self._log_writer)
        transports = add_transports(
            ep,
            cfg.bind_address,
            cfg.sip_port,
            tcp=cfg.tcp,
            tls_cert_file=cfg.tls_cert_file,
            tls_key_file=cfg.tls_key_file,
            tls_port=cfg.tls_port,
        )
        self.sip_port = transports.udp_port
        self._filtered_ports = [(self.sip_port, socket.SOCK_DGRAM)]
        if transports.tcp:
            self._filtered_ports.append((self.sip_port, socket.SOCK_STREAM))
        if transports.tls_port:
            self._filtered_ports.append((transports.tls_port, socket.SOCK_STREAM))
        self._sip_sources = self._configured_sources()
        self._apply_source_filter()
        ep.libStart()
        ep.audDevManager().setNullDev()
        set_codec_priorities(ep, cfg.codecs)
        self._local_account = self._make_account(None)
        for trunk in cfg.trunks:
            self._accounts[trunk.name] = self._make_account(trunk)
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.init(pj.PJMEDIA_FORMAT_PCM, TAP_CLOCK_RATE, 1, 20_000, 16)
        # A tap in the bridge is called every 20 ms even unconnected: none unless wanted.
        for n in range(MAX_CALLS if self._taps_wanted else 0):
            tap = _Tap(self.consumer, cfg.measure_audio)
            tap.createPort(f"tap{n}", fmt)
            self._all_taps.append(tap)
        self._idle_taps = list(self._all_taps)
        names = (
            ["udp"] + (["tcp"] if transports.tcp else []) + (["tls"] if transports.tls_port else [])
        )
        self._emit("ready", sip_port=self.sip_port, transports=names, tls_port=transports.tls_port)

    # -- who may send us SIP (sip.sockfilter) -------------------------------------------

    def _configured_sources(self) -> list[Network]:
        """The trunks' and proxies' addresses, plus the configured ``allow_from``."""
        cfg = self.config
        found: list[Network] = []
        for entry in cfg.allow_from:
            try:
                found += parse_networks([entry])
            except ValueError:
                found += self._resolve(entry, "allow_from entry")
        for trunk in cfg.trunks:
            found += self._resolve(bare_host(trunk.uri), f"trunk {trunk.name}")
            if trunk.outbound_proxy:
                found += self._resolve(bare_host(trunk.outbound_proxy), f"proxy of {trunk.name}")
        return found

    def _resolve(self, host: str, what: str) -> list[Network]:
        found = resolve_ipv4(host)
        if not found:
            self._emit(
                "error", message=f"cannot resolve {what} {host[:60]!r}: its requests are dropped"
            )
        return found

    def _make_account(self, trunk: TrunkConfig | None) -> _Account:
        cfg = self.config
        acfg = pj.AccountConfig()
        acfg.mediaConfig.transportConfig = media_transport(
            cfg.rtp_port, cfg.rtp_port_range, cfg.bind_address
        )
        acfg.mediaConfig.lockCodecEnabled = False  # no re-INVITE right after the answer
        if trunk is None:
            acfg.idUri = f"sip:{cfg.name}@{cfg.bind_address}:{self.sip_port}"
            acfg.priority = 0
        else:
            user = trunk.caller_id or trunk.username or "dialer"
            acfg.idUri = f"sip:{user}@{host_of(trunk.uri)}"
            acfg.priority = 1
            if trunk.registers:
                acfg.regConfig.registrarUri = registrar_uri(trunk)
                acfg.regConfig.timeoutSec = trunk.register_expires
                acfg.regConfig.registerOnAdd = True
            else:
                acfg.regConfig.registrarUri = ""
                acfg.regConfig.registerOnAdd = False
            if trunk.outbound_proxy:
                acfg.sipConfig.proxies.append(trunk.outbound_proxy)
            if trunk.username:
                acfg.sipConfig.authCreds.append(
                    pj.AuthCredInfo("digest", trunk.realm, trunk.username, 0, trunk.password or "")
                )
        account = _Account(self, trunk)
        try:
            account.create(acfg, trunk is None)
        except pj.Error as exc:
            name = trunk.name if trunk else "local"
            raise SipSetupError(
                f"cannot create SIP account for trunk {name}: {exc.info()}"
            ) from None
        return account
