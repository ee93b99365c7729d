"""The campaign state machine, pure (no clock, no I/O).

Rules of this file (ARCHITECTURE.md "Billing rules"):

* draft -> running <-> paused (reason user | balance) -> completed | stopped.
* start and resume need the balance gate's yes: the caller asks the ledger and passes
  the answer in; a "no" refuses with the gate's reason. Nothing else here knows money.
* pause(balance) is the automatic pause when a debit leaves a charged counter <= 0; it
  applies to running campaigns and turns a user pause into a balance pause (the user
  cannot resume it before a top-up either).
* completed: no contact can be dialed any more; stopped: a person ended it. Both final.
* The first illegal transition raises CampaignStateError naming the state and the action.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dialer.errors import DialerError


class CampaignState(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"


#: a campaign in these states never dials again
FINAL_STATES = frozenset({CampaignState.COMPLETED, CampaignState.STOPPED})
#: a campaign in these states may still dial (its trunk stays on the lines)
LIVE_STATES = frozenset({CampaignState.DRAFT, CampaignState.RUNNING, CampaignState.PAUSED})


class PauseReason(StrEnum):
    USER = "user"
    BALANCE = "balance"


class Action(StrEnum):
    START = "start"
    PAUSE = "pause"  # by a person
    PAUSE_BALANCE = "pause_balance"  # automatic
    RESUME = "resume"
    STOP = "stop"
    COMPLETE = "complete"


class CampaignStateError(DialerError):
    pass


@dataclass(frozen=True)
class Status:
    state: CampaignState
    pause_reason: PauseReason | None = None

    def __post_init__(self) -> None:
        if (self.state is CampaignState.PAUSED) != (self.pause_reason is not None):
            raise ValueError("a pause reason goes with the paused state, and only with it")


_S = CampaignState
_TABLE: dict[tuple[CampaignState, Action], Status] = {
    (_S.DRAFT, Action.START): Status(_S.RUNNING),
    (_S.DRAFT, Action.STOP): Status(_S.STOPPED),
    (_S.RUNNING, Action.PAUSE): Status(_S.PAUSED, PauseReason.USER),
    (_S.RUNNING, Action.PAUSE_BALANCE): Status(_S.PAUSED, PauseReason.BALANCE),
    (_S.RUNNING, Action.STOP): Status(_S.STOPPED),
    (_S.RUNNING, Action.COMPLETE): Status(_S.COMPLETED),
    (_S.PAUSED, Action.RESUME): Status(_S.RUNNING),
    (_S.PAUSED, Action.PAUSE_BALANCE): Status(_S.PAUSED, PauseReason.BALANCE),
    (_S.PAUSED, Action.STOP): Status(_S.STOPPED),
}
_NEEDS_BALANCE = frozenset({Action.START, Action.RESUME})


def transition(
    current: Status, action: Action, *, balance_ok: bool = True, balance_reason: str = ""
) -> Status:
    """The status after ``action``; CampaignStateError if it is not allowed now."""
    if current.state is _S.PAUSED and action is Action.PAUSE:
        return current  # pausing a paused campaign changes nothing (keeps a balance pause)
    new = _TABLE.get((current.state, action))
    if new is None:
        raise CampaignStateError(
            f"cannot {action.value.replace('_', ' ')} a campaign that is {describe(current)}"
        )
    if action in _NEEDS_BALANCE and not balance_ok:
        raise CampaignStateError(
            f"cannot {action.value}: {balance_reason or 'balance is not positive'}"
        )
    return new


def describe(status: Status) -> str:
    if status.pause_reason is not None:
        return f"paused ({status.pause_reason.value})"
    return status.state.value
