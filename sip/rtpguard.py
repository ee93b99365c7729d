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
from collections.abc import Iterable, Sequence

from sip.sockfilter import Instruction, attach, own_fds, rtp_program

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


# port -> (pjmedia's descriptor, its "socket:[inode]" link) when last found: pinning right
# after close_ports finds the same sockets without another look at every descriptor
# (two looks per call were ~5% of a busy line's CPU, measured)
_where: dict[int, tuple[int, str]] = {}


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _descriptors(ports: Iterable[int]) -> dict[int, int] | None:
    """port -> pjmedia's descriptor of the one IPv4 UDP socket bound to it; None when a
    port has none, or more than one."""
    wanted = frozenset(ports)
    known = {port: _where.get(port, (-1, "")) for port in wanted}
    if all(fd >= 0 and _link(fd) == link for fd, link in known.values()):
        return {port: fd for port, (fd, _) in known.items()}
    found = own_fds(wanted, socket.SOCK_DGRAM)
    if found.keys() != wanted or any(len(entries) != 1 for entries in found.values()):
        return None
    for port, ((fd, link),) in found.items():
        _where[port] = (fd, link)
    return {port: entries[0][0] for port, entries in found.items()}


def _set(programs: dict[int, Sequence[Instruction] | None]) -> bool:
    """Each port's program (None: no filter) on its socket, set through pjmedia's own
    descriptor (a socket object around it, detached again: never closed here)."""
    descriptors = _descriptors(programs)
    if descriptors is None:
        return False
    try:
        for port, program in programs.items():
            sock = socket.socket(fileno=descriptors[port])
            try:
                if program is None:
                    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                else:
                    attach(sock, program)
            finally:
                sock.detach()
        return True
    except OSError:
        return False


def close_ports(ports: Sequence[int]) -> bool:
    """Drop everything arriving on these ports (a call's media before its SDP answer)."""
    return _set(dict.fromkeys(ports, _DROP_ALL))


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
    programs: dict[int, Sequence[Instruction] | None] = {
        local_rtp: rtp_program(address, [remote_rtp[1]])
    }
    if local_rtcp != local_rtp:
        programs[local_rtcp] = rtp_program(address, rtcp_ports)
    done = _set(programs)
    if not done:
        _open(local_rtp, local_rtcp)
    return done


def _open(*ports: int) -> None:
    """No filter: never leave ``close_ports``' drop-all on a call that could not be pinned."""
    for port in dict.fromkeys(ports):  # one by one: whatever can be opened is
        _set({port: None})
