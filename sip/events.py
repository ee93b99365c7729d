"""Line events, typed: what a line (or the pool, about a line) tells the orchestrator.

Every message up the pipe decodes into one of these frozen models (sip.protocol gives the
wire format and the field list); a missing or mistyped field is a ProtocolError, as for
commands. Consumers match on the class, never on a name string.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from sip.protocol import MAX_LINE_BYTES, ProtocolError, _load, _Message

# ``line`` is the pool's stamp: which line the event came from. The pool itself makes
# Interrupted, LineDied and LineRestarted.


class _Event(_Message):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    at: float | None = None  # the line's wall clock: records only
    mono: float | None = None  # CLOCK_MONOTONIC: what billing and timers run on
    free: int | None = None  # the line's free call slots after the event
    line: str | None = None


class _CallEvent(_Event):
    call_id: str = Field(min_length=1, max_length=128)


class Ready(_Event):
    event: Literal["ready"] = "ready"
    sip_port: int
    transports: list[str]
    tls_port: int | None = None


class Accepted(_CallEvent):
    event: Literal["accepted"] = "accepted"


class Refused(_CallEvent):
    event: Literal["refused"] = "refused"
    reason: str
    retry: bool = False


class Ringing(_CallEvent):
    event: Literal["ringing"] = "ringing"
    status: int = 0


class Answered(_CallEvent):
    event: Literal["answered"] = "answered"


class Failed(_CallEvent):
    """The call ended without an answer."""

    event: Literal["failed"] = "failed"
    status: int = 0
    reason: str = ""
    by: Literal["local", "remote"] = "remote"
    timeout: bool = False


class Hangup(_CallEvent):
    """An answered call ended."""

    event: Literal["hangup"] = "hangup"
    by: Literal["local", "remote", "transfer"] = "remote"
    status: int = 0
    reason: str = ""
    cause: str | None = None
    rx_frames: int | None = None
    rx_voiced: int | None = None


class Interrupted(_CallEvent):
    """Made by the pool: the line carrying the call died (or froze and was killed)."""

    event: Literal["interrupted"] = "interrupted"


class PlayDone(_CallEvent):
    event: Literal["play_done"] = "play_done"
    wav: str


class AgentRinging(_CallEvent):
    event: Literal["agent_ringing"] = "agent_ringing"
    status: int = 0


class AgentAnswered(_CallEvent):
    event: Literal["agent_answered"] = "agent_answered"
    mode: Literal["bridge", "refer"]


class AgentFailed(_CallEvent):
    event: Literal["agent_failed"] = "agent_failed"
    status: int = 0
    reason: str = ""


class AgentEnded(_CallEvent):
    event: Literal["agent_ended"] = "agent_ended"


class Speech(_CallEvent):
    """What the callee's audio holds (sip.speech); fields by ``kind``."""

    event: Literal["speech"] = "speech"
    kind: Literal["voice_start", "voice_end", "partial", "final", "tone"]
    audio_s: float = 0.0
    text: str | None = None
    start_s: float | None = None
    duration: float | None = None
    tone: Literal["beep", "sit"] | None = None
    freq: float | None = None


class InboundRejected(_Event):
    """An INVITE we never answered (or one with Replaces naming our call)."""

    event: Literal["inbound_rejected"] = "inbound_rejected"
    status: int
    from_: str = Field(default="", alias="from")
    to: str = ""
    call_id: str | None = None
    reason: str | None = None


class Registration(_Event):
    event: Literal["registration"] = "registration"
    trunk: str
    status: int
    reason: str = ""
    expires: int = 0
    ok: bool


class Error(_Event):
    """A command that cannot be done, or (``security``) something hostile seen."""

    event: Literal["error"] = "error"
    message: str
    call_id: str | None = None
    security: str | None = None


class LineDied(_Event):
    """Made by the pool: a line process exited; a replacement is being started."""

    event: Literal["line_died"] = "line_died"
    exit_code: int | None = None


class LineRestarted(_Event):
    event: Literal["line_restarted"] = "line_restarted"


LineEvent = (
    Ready | Accepted | Refused | Ringing | Answered | Failed | Hangup | Interrupted
    | PlayDone | AgentRinging | AgentAnswered | AgentFailed | AgentEnded | Speech
    | InboundRejected | Registration | Error | LineDied | LineRestarted
)  # fmt: skip
#: the events that end a call
CallEnded = Failed | Hangup | Interrupted
_EVENTS: TypeAdapter[LineEvent] = TypeAdapter(Annotated[LineEvent, Field(discriminator="event")])


def parse_event(data: dict[str, Any]) -> LineEvent:
    """A decoded message as its typed event; ProtocolError names what is wrong."""
    try:
        return _EVENTS.validate_python(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise ProtocolError(f"unknown event {data.get('event')!r}") from None
        where = ".".join(str(p) for p in error["loc"][1:]) or "message"
        raise ProtocolError(f"bad {data.get('event')!r} event: {where}: {error['msg']}") from None


def decode(line: bytes | str) -> LineEvent:
    """One line of a line process's output as its typed event (ProtocolError if it is
    not one)."""
    if len(line) <= MAX_LINE_BYTES:
        # pydantic's own JSON parser: half the cost of json.loads and validating the dict
        # (measured), on the pool's hottest path
        with contextlib.suppress(ValidationError):
            return _EVENTS.validate_json(line)
    return parse_event(_load(line))  # names what is wrong
