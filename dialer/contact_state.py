"""A contact's lifecycle, pure: the table every SQL update of a contact's state applies.

* pending -> in_progress (CLAIM): one more attempt, leased to the claiming worker. Only a
  pending contact whose ``next_attempt_at`` has come is claimed, in the claim
  transaction with the balance gate (dialer.claims.claim_contacts).
* pending -> pending (DEFER): outside its calling window; ``next_attempt_at`` moves to the
  window's next opening. No attempt counted.
* pending -> done (REFUSE): never dialled (the do-not-call list, the number policy); the
  disposition says which.
* in_progress -> in_progress (RENEW): the worker holding it extends its lease while the
  call is up or being dialled.
* in_progress -> pending (GIVE_BACK): claimed, but no INVITE left: the attempt is undone.
* in_progress -> pending (RETRY) or done (FINISH): the call ended; ``dialer.call.
  next_attempt`` decides which (the retry policy; an answered call is never redialled).
  Recovery of a dead worker's calls applies the same two rows with the same rule.

Only the worker holding the lease may move an in_progress contact, except recovery of a
dead worker (its lease ran out, or its heartbeat stopped). A lease is the owner's id and
an expiry time; leaving in_progress always clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ContactState(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class ContactStep(StrEnum):
    CLAIM = "claim"
    DEFER = "defer"
    REFUSE = "refuse"
    RENEW = "renew"
    GIVE_BACK = "give_back"
    RETRY = "retry"
    FINISH = "finish"


class Lease(StrEnum):
    TAKE = "take"  # owner and expiry set
    KEEP = "keep"  # expiry extended
    CLEAR = "clear"  # no owner
    NONE = "none"  # none before, none after


@dataclass(frozen=True)
class Move:
    before: ContactState
    after: ContactState
    attempts: int  # added to the contact's attempts
    lease: Lease


_C = ContactState
TABLE: dict[ContactStep, Move] = {
    ContactStep.CLAIM: Move(_C.PENDING, _C.IN_PROGRESS, +1, Lease.TAKE),
    ContactStep.DEFER: Move(_C.PENDING, _C.PENDING, 0, Lease.NONE),
    ContactStep.REFUSE: Move(_C.PENDING, _C.DONE, 0, Lease.NONE),
    ContactStep.RENEW: Move(_C.IN_PROGRESS, _C.IN_PROGRESS, 0, Lease.KEEP),
    ContactStep.GIVE_BACK: Move(_C.IN_PROGRESS, _C.PENDING, -1, Lease.CLEAR),
    ContactStep.RETRY: Move(_C.IN_PROGRESS, _C.PENDING, 0, Lease.CLEAR),
    ContactStep.FINISH: Move(_C.IN_PROGRESS, _C.DONE, 0, Lease.CLEAR),
}


def move(step: ContactStep) -> Move:
    return TABLE[step]


def after_call(retry_at: object | None) -> ContactStep:
    """The step that ends a call: back to pending when there is a next attempt."""
    return ContactStep.FINISH if retry_at is None else ContactStep.RETRY
