"""RTP only from the negotiated address: kernel socket filters on pjmedia's RTP sockets.

pjmedia latches ("symmetric RTP"): after 10 RTP packets in a row from an unknown source,
or the first one when the callee has sent nothing yet, a call's remote address becomes
that source, its audio is decoded and the bot's audio goes there (stream.c ``on_rx_rtp``,
transport_udp.c ``rem_switch``). The switch-off, ``PJMEDIA_UDP_NO_SRC_ADDR_CHECKING``, is
a transport option pjsua never sets and the Python bindings cannot reach; and it would
not keep a latched stream from decoding the stranger. So the kernel drops strangers'
datagrams before pjmedia reads them: a classic BPF filter (SO_ATTACH_FILTER, no
privilege) on the call's RTP and RTCP sockets, found in /proc/self/fd by their port.

* ``close_ports``: when the call's first SDP is made (its sockets were just bound), the
  filter drops everything, so nothing queues up before the answer says who the callee is.
* ``pin``: once the SDP is negotiated (before pjmedia's stream is created), only the
  callee's media address and port get through (symmetric RTP, RFC 4961).

Filters are per socket and die with it; setting one replaces the previous one at once.
IPv4 only (the filter reads the IPv4 source address); anything else stays unfiltered
and the engine falls back to watching where RTP comes from.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Sequence

from sip.sockfilter import Instruction, attach, own_sockets, rtp_program

_DROP_ALL: list[Instruction] = [(0x06, 0, 0, 0)]  # BPF_RET | BPF_K, 0: keep no byte
SO_DETACH_FILTER = 27


def host_port(text: str) -> tuple[str, int] | None:
    """'1.2.3.4:5' (pjsua2's SocketAddress) -> ('1.2.3.4', 5); None when empty or odd."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


_M_AUDIO = re.compile(r"^m=audio (\d+) ", re.M)
_RTCP = re.compile(r"^a=rtcp:(\d+)", re.M)


def local_ports(sdp: str) -> tuple[int, ...]:
    """The RTP and RTCP ports of the first audio stream of our own SDP (none: ())."""
    media = _M_AUDIO.search(sdp)
    if media is None or media.group(1) == "0":
        return ()
    rtp = int(media.group(1))
    next_media = sdp.find("\nm=", media.end())
    section = sdp[media.end() : next_media if next_media >= 0 else len(sdp)]
    rtcp = _RTCP.search(section)
    return rtp, int(rtcp.group(1)) if rtcp else rtp + 1


def _set(port: int, program: Sequence[Instruction] | None) -> bool:
    """``program`` (None: no filter) on the one IPv4 UDP socket bound to ``port``."""
    found = own_sockets(port, socket.SOCK_DGRAM)
    try:
        # the same socket can be listed twice (a duplicate took the number of the
        # directory listing's descriptor): one kernel socket is one inode
        if len({os.fstat(sock.fileno()).st_ino for sock in found}) != 1:
            return False
        if program is None:
            found[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        else:
            attach(found[0], program)
        return True
    except OSError:
        return False
    finally:
        for sock in found:
            sock.close()


def close_ports(ports: Sequence[int]) -> bool:
    """Drop everything arriving on these ports (a call's media before its SDP answer)."""
    return all([_set(port, _DROP_ALL) for port in dict.fromkeys(ports)])


def pin(
    local_rtp: int, local_rtcp: int, remote_rtp: tuple[str, int], remote_rtcp: tuple[str, int]
) -> bool:
    """Only the remote's RTP on the RTP socket, its RTCP (or RTP, rtcp-mux) on the RTCP
    socket. False when it could not be done (IPv6, socket not found)."""
    try:
        address = ipaddress.IPv4Network(remote_rtp[0])
    except ValueError:
        _open(local_rtp, local_rtcp)
        return False
    rtcp_ports = sorted({remote_rtcp[1], remote_rtp[1]})
    done = _set(local_rtp, rtp_program(address, [remote_rtp[1]]))
    if done and local_rtcp != local_rtp:
        done = _set(local_rtcp, rtp_program(address, rtcp_ports))
    if not done:
        _open(local_rtp, local_rtcp)
    return done


def _open(*ports: int) -> None:
    """No filter: never leave ``close_ports``' drop-all on a call that could not be pinned."""
    for port in dict.fromkeys(ports):
        _set(port, None)
