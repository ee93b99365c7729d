"""Who may talk to a line: classic BPF filters on pjsip's own sockets.

pjsua answers whatever reaches its SIP port (OPTIONS, MESSAGE, SUBSCRIBE with NOTIFYs to
any Contact, INVITEs that take a call slot) and the Python bindings offer no hook before
it does. The kernel does: a socket filter (SO_ATTACH_FILTER, no privilege needed) drops a
datagram or a TCP segment before pjsip reads it, so a stranger gets no answer at all.

* UDP SIP: requests only from allowed IPv4 networks; responses from anywhere (they match a
  transaction of ours by its random branch or are dropped by pjsip, and agents' or SRV
  targets' addresses are not always known in advance); MESSAGE, SUBSCRIBE and PUBLISH from
  nobody (a campaign line has no use for them), nor anything starting with white space
  (pjsip would skip it and read the method behind it).
* TCP/TLS SIP: connections only from allowed networks (the listener's filter drops the
  SYN; accepted sockets inherit it). Connections we open are not filtered.

cBPF reads the IPv4 source address at ``SKF_NET_OFF + 12`` on any socket; on a UDP socket
offset 0 is the UDP header, so the SIP message starts at offset 8 (measured).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sip.errors import SipError

SO_ATTACH_FILTER = 26
_SKF_NET_OFF = -0x100000
_SRC_IP = (_SKF_NET_OFF + 12) & 0xFFFFFFFF
_UDP_PAYLOAD = 8

# opcodes (linux/filter.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_LD_H_ABS = 0x00 | 0x08 | 0x20
_LD_B_ABS = 0x00 | 0x10 | 0x20
_AND_K = 0x04 | 0x50 | 0x00
_JEQ_K = 0x05 | 0x10 | 0x00
_JGT_K = 0x05 | 0x20 | 0x00
_JGE_K = 0x05 | 0x30 | 0x00
_RET_K = 0x06 | 0x00
_ACCEPT = 0xFFFFFFFF
_DROP = 0

Instruction = tuple[int, int, int, int]  # code, jt, jf, k
Network = ipaddress.IPv4Network


def _word(text: bytes) -> int:
    return int.from_bytes(text[:4], "big")


_RESPONSE = _word(b"SIP/")
_UNWANTED_METHODS = (_word(b"MESS"), _word(b"SUBS"), _word(b"PUBL"))


class FilterError(SipError, ValueError):
    """A source list that cannot be turned into a filter (a ValueError too: parsers of
    address lists catch that)."""


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """IPv4 addresses or networks ("203.0.113.7", "198.51.100.0/24")."""
    found: list[Network] = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise FilterError(f"not an IP address or network: {entry[:60]!r}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise FilterError(f"only IPv4 sources can be filtered, got {entry[:60]!r}")
        found.append(network)
    return found


def _source_in(networks: Sequence[Network]) -> list[Instruction]:
    """Accept (return) when the source address is in one of ``networks``; else fall through."""
    program: list[Instruction] = []
    for net in networks:
        program += [
            (_LD_W_ABS, 0, 0, _SRC_IP),
            (_AND_K, 0, 0, int(net.netmask)),
            (_JEQ_K, 0, 1, int(net.network_address)),
            (_RET_K, 0, 0, _ACCEPT),
        ]
    return program


def sip_udp_program(networks: Sequence[Network]) -> list[Instruction]:
    program: list[Instruction] = [
        # pjsip skips leading CR/LF and white space before the start line: "\r\nMESSAGE"
        # would slip past the method check below (measured: 200 OK). A SIP message starts
        # with a letter; one starting with SP or HT..CR is dropped.
        (_LD_B_ABS, 0, 0, _UDP_PAYLOAD),
        (_JGT_K, 4, 0, ord(" ")),
        (_JEQ_K, 2, 0, ord(" ")),
        (_JGE_K, 0, 2, ord("\t")),
        (_JGT_K, 1, 0, ord("\r")),
        (_RET_K, 0, 0, _DROP),
        (_LD_W_ABS, 0, 0, _UDP_PAYLOAD),  # first 4 bytes of the message (< 4: dropped)
        (_JEQ_K, 0, 1, _RESPONSE),
        (_RET_K, 0, 0, _ACCEPT),
    ]
    for method in _UNWANTED_METHODS:
        program += [(_JEQ_K, 0, 1, method), (_RET_K, 0, 0, _DROP)]
    return [*program, *_source_in(networks), (_RET_K, 0, 0, _DROP)]


def tcp_program(networks: Sequence[Network]) -> list[Instruction]:
    return [*_source_in(networks), (_RET_K, 0, 0, _DROP)]


def rtp_program(address: Network, ports: Sequence[int] = ()) -> list[Instruction]:
    """Only datagrams from ``address`` (and, when given, one of ``ports``)."""
    program: list[Instruction] = [
        (_LD_W_ABS, 0, 0, _SRC_IP),
        (_AND_K, 0, 0, int(address.netmask)),
        (_JEQ_K, 1, 0, int(address.network_address)),
        (_RET_K, 0, 0, _DROP),
    ]
    if ports:
        program.append((_LD_H_ABS, 0, 0, 0))  # UDP source port
        for port in ports:
            program += [(_JEQ_K, 0, 1, port), (_RET_K, 0, 0, _ACCEPT)]
        return [*program, (_RET_K, 0, 0, _DROP)]
    return [*program, (_RET_K, 0, 0, _ACCEPT)]


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def attach(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """Replace ``sock``'s filter (the kernel copies the program)."""
    if not 0 < len(program) <= 4096:
        raise FilterError(f"a socket filter holds 1..4096 instructions, not {len(program)}")
    code = (_Insn * len(program))(*[_Insn(*insn) for insn in program])
    fprog = _Program(len(program), code)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


@dataclass(frozen=True)
class _Bound:
    family: int
    kind: int
    address: str
    port: int
    listening: bool


# readlink target ("socket:[inode]") -> what it is bound to. A line looks its call's RTP
# sockets up 2-3 times per call: describing every descriptor each time (dup, getsockname)
# cost ~0.2 ms a scan, 15% of the pool's throughput with 40 lines on 2 cores (measured).
_known: dict[str, _Bound] = {}


def _describe(fd: int) -> _Bound | None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        local = sock.getsockname()
        if sock.family != socket.AF_INET:
            return _Bound(sock.family, sock.type, "", -1, False)  # IPv6, unix: never ours
        listening = sock.type == socket.SOCK_STREAM and bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
        return _Bound(sock.family, sock.type, local[0], local[1], listening)
    except OSError:
        return None
    finally:
        sock.close()


def own_fds(
    ports: frozenset[int], kind: socket.SocketKind, address: str | None = None
) -> dict[int, list[tuple[int, str]]]:
    """This process's descriptors of sockets bound to one of ``ports`` (UDP, or listening
    TCP): port -> [(descriptor, its "socket:[inode]" link)], one entry per kernel socket."""
    found: dict[int, list[tuple[int, str]]] = {}
    seen: dict[str, _Bound] = {}
    taken: set[str] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:"):
            continue
        bound = _known[target] if target in _known else _describe(int(name))
        if bound is None or bound.port == 0:
            continue  # not bound yet: described again next time
        seen[target] = bound
        matches = (
            bound.family == socket.AF_INET
            and bound.kind == kind
            and bound.port in ports
            and (address is None or bound.address == address)
            and (kind != socket.SOCK_STREAM or bound.listening)
        )
        if matches and target not in taken:
            # one kernel socket once: a descriptor duplicated meanwhile may take a number
            # still ahead in the listing
            found.setdefault(bound.port, []).append((int(name), target))
            taken.add(target)
    _known.clear()
    _known.update(seen)  # only what is open now: a closed socket's inode is forgotten
    return found


def own_sockets(
    port: int, kind: socket.SocketKind, address: str | None = None
) -> list[socket.socket]:
    """This process's sockets bound to ``port`` (UDP or listening TCP), as duplicates that
    share the kernel socket: a filter set on one holds for pjsip's descriptor. The caller
    closes them."""
    found: list[socket.socket] = []
    for fd, _ in own_fds(frozenset((port,)), kind, address).get(port, []):
        try:
            found.append(socket.socket(fileno=os.dup(fd)))
        except OSError:
            continue
    return found


def resolve_ipv4(host: str) -> list[Network]:
    """Every IPv4 address of ``host`` (an address passes through); [] when unresolvable."""
    try:
        return [ipaddress.IPv4Network(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return []
    return sorted({ipaddress.IPv4Network(str(info[4][0])) for info in infos})
