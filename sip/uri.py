"""SIP URIs and SIP text fields as the dialer accepts them (a subset of RFC 3261 19.1).

    sip:[user@]host[:port][;param[=value]]...        (or sips:)

host is a DNS name, an IPv4 address or a bracketed IPv6 address; port 1-65535; no
password in the URI and no ``?headers`` part (they would add headers to our requests).
Everything a user or a config file hands to pjsua2 is checked here first, because pjsua2
takes a CR/LF in a credential or URI straight into the message it sends (a CRLF in a
trunk username came out as an extra header after the Authorization line), and a URI it
cannot parse (a bare ``sip:``) fails only when a line creates its account, in every
worker at once. The checks raise ValueError with a short message that never echoes the
value whole.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sip.protocol import TrunkConfig

MAX_URI = 255  # the width of the URI columns (dialer_trunk.uri, dialer_campaign.agent_uri)
MAX_USERNAME = 128  # dialer_trunk.username
MAX_PASSWORD = 255  # dialer_trunk.password

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
# RFC 3261 user: unreserved / escaped / user-unreserved
_USER = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PARAM = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+")
_URI = re.compile(
    r"(?P<scheme>sips?):"
    r"(?:(?P<user>[^@]*)@)?"
    r"(?P<host>\[[^\]]*\]|[^:;\[\]]*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<params>(?:;[^;]*)*)"
)


def _cut(value: str, width: int = 40) -> str:
    shown = _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)
    return f"'{shown[:width]}...'" if len(value) > width else f"'{shown}'"


def check_text(value: str, what: str, max_length: int) -> str:
    """A free-text SIP field (password, realm): 1..max_length characters, no control
    characters (CR, LF, NUL, ESC...)."""
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > max_length:
        raise ValueError(f"{what} is {len(value)} characters long (at most {max_length})")
    if _CONTROLS.search(value):
        raise ValueError(f"{what} holds a control character (CR, LF, TAB...)")
    return value


def check_user(value: str, what: str = "SIP user name") -> str:
    """A user part (trunk username, caller id): RFC 3261 user characters only."""
    check_text(value, what, MAX_USERNAME)
    if not _USER.fullmatch(value):
        raise ValueError(
            f"{what} {_cut(value)} may hold only letters, digits, %XX escapes and -_.!~*'()&=+$,;?/"
        )
    return value


def _check_host(host: str, uri: str, what: str) -> None:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what} {_cut(uri)}: bad IPv6 address {_cut(host)}") from None
    elif not host:
        raise ValueError(f"{what} {_cut(uri)} has no host: use sip:host[:port]")
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{what} {_cut(uri)}: bad host {_cut(host)}")


def check_host(value: str, what: str = "host") -> str:
    """An IP address (IPv6 without brackets) or a DNS name, as a bind address."""
    if len(value) > 253 or _CONTROLS.search(value):
        raise ValueError(f"{what} {_cut(value)} is not an IP address or host name")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{what} {_cut(value)} is not an IP address or host name") from None
    return value


def check_sip_uri(value: str, what: str = "SIP URI") -> str:
    """``value`` when it is a SIP URI of the form above; ValueError naming the problem."""
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_URI:
        raise ValueError(f"{what} is {len(value)} characters long (at most {MAX_URI})")
    if not value.startswith(("sip:", "sips:")):
        raise ValueError(f"{what} {_cut(value)} must be a sip: or sips: URI")
    if _CONTROLS.search(value) or " " in value:
        raise ValueError(f"{what} {_cut(value)} holds a space or a control character")
    if "?" in value.split("@")[-1]:
        raise ValueError(f"{what} {_cut(value)}: headers (?...) are not allowed in the URI")
    match = _URI.fullmatch(value)
    if not match:
        raise ValueError(f"{what} {_cut(value)} is not sip:[user@]host[:port][;params]")
    user, host, port = match["user"], match["host"], match["port"]
    if user is not None:
        if ":" in user:
            raise ValueError(f"{what} {_cut(value)}: no password in the URI")
        check_user(user, f"user part of {what}")
    _check_host(host, value, what)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{what} {_cut(value)}: port must be 1-65535")
    for param in match["params"].split(";")[1:]:
        name, _, val = param.partition("=")
        if not _PARAM.fullmatch(name) or ("=" in param and not _PARAM.fullmatch(val)):
            raise ValueError(f"{what} {_cut(value)}: bad parameter {_cut(param)}")
    return value


# -- URIs a line builds from its trunks ------------------------------------------------


def dial_uri(trunk: TrunkConfig, to: str) -> str:
    """sip:NUMBER@host[:port][;params] from the trunk URI; a full SIP URI passes through."""
    if to.startswith(("sip:", "sips:")):
        return to
    scheme, _, rest = trunk.uri.partition(":")
    host = rest.split("@", 1)[1] if "@" in rest else rest
    return f"{scheme}:{to}@{host}"


def registrar_uri(trunk: TrunkConfig) -> str:
    """The trunk URI without a user part: sip:host[:port][;params]."""
    scheme, _, rest = trunk.uri.partition(":")
    return f"{scheme}:{rest.split('@', 1)[1] if '@' in rest else rest}"


def host_of(uri: str) -> str:
    """The host[:port] of a SIP URI."""
    rest = uri.partition(":")[2]
    rest = rest.split("@", 1)[1] if "@" in rest else rest
    return rest.split(";", 1)[0]


def bare_host(uri: str) -> str:
    """The host of a SIP URI, without port or brackets."""
    host = host_of(uri)
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
