"""The pipe protocol between the orchestrator (sip.pool) and a line process (sip.line).

Version 1. One JSON object per line, UTF-8, ``\\n``-terminated, on the line's stdin
(commands, down) and stdout (events, up). Every message carries ``"v": 1``; a message
with another version, an unknown ``cmd``/``event`` or a missing field is refused with an
``error`` event (commands) or a ProtocolError (events): never guessed at. Audio never
crosses the pipe; it stays in the line process.

Commands (orchestrator -> line)::

    {"v":1, "cmd":"configure", "line": {...LineConfig...}}       first message, once
    {"v":1, "cmd":"dial", "call_id":"c1", "to":"+15550001", "trunk":"main",
     "ring_timeout":30, "caller_id":"+15559999"?, "headers":{"X-Campaign":"spring"}?,
     "listen":["leave a message after the tone", ...]?}      listen: analyse the callee's
                                                   audio, recognising these phrases
    {"v":1, "cmd":"hangup", "call_id":"c1", "reason":"amd"?}
    {"v":1, "cmd":"play", "call_id":"c1", "wav":"/path/greeting.wav"}
    {"v":1, "cmd":"stop_play", "call_id":"c1"}
    {"v":1, "cmd":"transfer", "call_id":"c1", "agent_uri":"sip:agent@pbx", "mode":"bridge|refer"}
    {"v":1, "cmd":"shutdown"}     hang up everything (BYE or CANCEL), then exit

Events (line -> orchestrator); each has ``"v":1``, ``"event"``, ``"at"`` (wall clock,
epoch seconds: for records only), ``"mono"`` (CLOCK_MONOTONIC seconds, shared by the
processes of one host: what billing and timers run on, immune to clock steps) and, when
about a call, ``"call_id"``; ``"free"`` is the line's free call slots after the event.
The orchestrator decodes each into its typed model (sip.events.decode)::

    ready           {"sip_port", "transports", "free"}          after configure
    accepted        {"call_id"}                                 dial took a slot
    refused         {"call_id", "reason", "retry": bool}        dial not placed (retry=True:
                                                                line full, try another line)
    ringing         {"call_id", "status"}                       180/183
    answered        {"call_id", "at", "mono"}                   200 OK received: wall and
                                                                monotonic (CLOCK_MONOTONIC) s
    failed          {"call_id", "status", "reason", "by": "local|remote", "timeout": bool}
                                                                ended without an answer
    hangup          {"call_id", "by": "local|remote|transfer", "status", "reason", "cause"?,
                     "rx_frames"?, "rx_voiced"?}                an answered call ended
                                                                (rx_*: frames of the callee's
                                                                audio the tap saw, when tapped)
    play_done       {"call_id", "wav"}
    agent_ringing   {"call_id", "status"}
    agent_answered  {"call_id", "mode"}                         the agent has the caller
    agent_failed    {"call_id", "status", "reason"}             the caller stays with the bot
    agent_ended     {"call_id"}                                 the agent left (bridge mode):
                                                                the caller is back with the bot
    speech          {"call_id", "kind", "audio_s", ...}         what the callee's audio holds
                                                                (sip.speech: voice_start,
                                                                voice_end, partial, final,
                                                                tone); only with `listen`
    inbound_rejected {"status", "from", "to", "call_id"?, "reason"?}
                                                                an INVITE we never answered
                                                                (call_id: one with Replaces
                                                                naming that call)
    registration    {"trunk", "status", "reason", "expires", "ok": bool}
    error           {"call_id"?, "message", "security"?}        a command that cannot be done,
                                                                or (security) hostile media
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from sip.errors import SipError
from sip.uri import MAX_PASSWORD, check_sip_uri, check_text, check_user

VERSION = 1
PARENT_ENV = "DIALER_LINE_PARENT"  # the orchestrator's pid, in a line's environment
MAX_LINE_BYTES = 64 * 1024


class ProtocolError(SipError):
    """A pipe message that is not valid protocol version 1."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1


# -- configuration carried by `configure` --------------------------------------------------


_TOKEN = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]{1,64}$")
_VALUE = re.compile(r"^[\x20-\x7e\t]{0,512}$")
_SOURCE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?|[A-Za-z0-9.-]{1,253}")


def check_sources(entries: list[str]) -> list[str]:
    """allow_from entries: IPv4 addresses, IPv4 networks or host names."""
    for entry in entries:
        if not _SOURCE.fullmatch(entry):
            raise ValueError(f"allow_from: not an IPv4 address, network or host: {entry[:60]!r}")
    return entries


def check_user_agent(value: str) -> str:
    if not value or not _VALUE.match(value):
        raise ValueError("user_agent: printable ASCII only, 1-64 characters")
    return value


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """SIP header names are tokens; values are printable ASCII without CR/LF (no header
    injection into the INVITE)."""
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"bad SIP header name {name!r}")
        if not _VALUE.match(value):
            raise ValueError(f"bad value for SIP header {name}: printable ASCII, no line breaks")
    return headers


class TrunkConfig(BaseModel):
    """A SIP trunk: the platform's own or a customer's own."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["platform", "customer"] = "platform"
    uri: str  # where calls go: sip:host[:port][;transport=tcp]; dialled as sip:NUMBER@host
    outbound_proxy: str | None = None
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    realm: str = "*"
    registers: bool = Field(default=False, alias="register")
    register_expires: int = Field(default=300, ge=60, le=86_400)
    caller_id: str | None = None  # default From user
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("uri", "outbound_proxy")
    @classmethod
    def _sip_uri(cls, value: str | None) -> str | None:
        # second gate behind the CLI's (sip.uri): pjsua2 would send a CR/LF as is
        return None if value is None else check_sip_uri(value)

    @field_validator("username", "caller_id")
    @classmethod
    def _sip_user(cls, value: str | None) -> str | None:
        return None if value is None else check_user(value)

    @field_validator("password", "realm")
    @classmethod
    def _sip_text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "value", MAX_PASSWORD)


class LineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "line"
    bind_address: str = "127.0.0.1"
    sip_port: int = Field(ge=0, le=65535)  # 0: any free port (tests)
    rtp_port: int = Field(ge=1024, le=65000)
    rtp_port_range: int = Field(default=100, ge=8, le=10_000)
    tcp: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_port: int | None = None
    codecs: list[str] = Field(default_factory=lambda: ["PCMU/8000", "PCMA/8000", "G722/16000"])
    inbound_reject_status: Literal[603, 480, 486] = 603
    trunks: list[TrunkConfig] = Field(default_factory=list, max_length=7)  # PJSUA_MAX_ACC 8
    # The line's structlog lines (pjsip's own log included) are like the orchestrator's:
    # this format, nothing below this level, on the stderr they share.
    log_format: Literal["json", "console"] = "json"
    log_threshold: Literal["debug", "info", "warning", "error"] = "info"
    # pjsip's own log: the pjsip levels produced at all (0 fatal .. 6), mapped to structlog
    # levels (sip.logs). None: errors and warnings, plus its info and debug at "debug".
    log_level: int | None = Field(default=None, ge=0, le=6)
    measure_audio: bool = False  # count voiced frames of the callee (QA diagnostics)
    # SIP requests are taken only from the trunks' and proxies' addresses and these
    # (IPv4 addresses, networks or host names); everything else is dropped unanswered
    allow_from: list[str] = Field(default_factory=list, max_length=256)
    filter_sources: bool = True
    user_agent: str = Field(default="campaign-dialer", max_length=64)

    _sources = field_validator("allow_from")(classmethod(lambda cls, v: check_sources(v)))
    _agent = field_validator("user_agent")(classmethod(lambda cls, v: check_user_agent(v)))


# -- commands ----------------------------------------------------------------------------


class Configure(_Message):
    cmd: Literal["configure"] = "configure"
    line: LineConfig


class Dial(_Message):
    cmd: Literal["dial"] = "dial"
    call_id: str = Field(min_length=1, max_length=128)
    to: str = Field(min_length=1, max_length=256)
    trunk: str
    ring_timeout: float = Field(default=30.0, gt=0, le=600)
    caller_id: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    listen: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=1000
    )

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("caller_id")
    @classmethod
    def _sip_user(cls, value: str | None) -> str | None:
        return None if value is None else check_user(value, "caller id")


class Hangup(_Message):
    cmd: Literal["hangup"] = "hangup"
    call_id: str
    reason: str | None = None


class Play(_Message):
    cmd: Literal["play"] = "play"
    call_id: str
    wav: str


class StopPlay(_Message):
    cmd: Literal["stop_play"] = "stop_play"
    call_id: str


class Transfer(_Message):
    cmd: Literal["transfer"] = "transfer"
    call_id: str
    agent_uri: str
    mode: Literal["bridge", "refer"] = "bridge"
    ring_timeout: float = Field(default=30.0, gt=0, le=600)  # then agent_failed 408

    @field_validator("agent_uri")
    @classmethod
    def _sip_uri(cls, value: str) -> str:
        return check_sip_uri(value, "agent URI")


class Shutdown(_Message):
    cmd: Literal["shutdown"] = "shutdown"


Command = Configure | Dial | Hangup | Play | StopPlay | Transfer | Shutdown
_COMMANDS: TypeAdapter[Command] = TypeAdapter(
    Annotated[
        Configure | Dial | Hangup | Play | StopPlay | Transfer | Shutdown,
        Field(discriminator="cmd"),
    ]
)

EVENTS = frozenset(
    {
        "ready", "accepted", "refused", "ringing", "answered", "failed", "hangup",
        "play_done", "agent_ringing", "agent_answered", "agent_failed", "agent_ended",
        "inbound_rejected", "registration", "error", "speech",
    }
)  # fmt: skip


def encode(message: BaseModel | dict[str, Any]) -> bytes:
    data = message.model_dump(exclude_none=True) if isinstance(message, BaseModel) else message
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _load(line: bytes | str) -> dict[str, Any]:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"message longer than {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    if data.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {data.get('v')!r} (this is {VERSION})")
    return data


def decode_command(line: bytes | str) -> Command:
    data = _load(line)
    try:
        return _COMMANDS.validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise ProtocolError(f"unknown command {data.get('cmd')!r}") from None
        where = ".".join(str(p) for p in error["loc"][1:]) or "message"
        raise ProtocolError(f"bad {data['cmd']!r} command: {where}: {error['msg']}") from None


def event(name: str, **fields: Any) -> dict[str, Any]:
    assert name in EVENTS, name
    return {"v": VERSION, "event": name, **{k: v for k, v in fields.items() if v is not None}}
