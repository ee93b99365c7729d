"""Typed errors of the billing package, one root: the CLI and MQTT edges catch
BillingError and turn it into one line.

    BillingError             a billing request refused by a rule (bad minutes, period...)
    ├── MeterError           an event the call meter cannot accept
    ├── UnknownAccount, DuplicateAccount, IdempotencyConflict
    └── StorageError         the database under the ledger, not a rule
        └── DatabaseUnavailable
"""


class BillingError(Exception):
    """The root: a billing request that cannot be carried out; the message names the
    problem. Raised as it is for a refused rule that needs no type of its own."""


class MeterError(BillingError):
    """An event the call meter cannot accept in its current state (out of order, in the past)."""


class UnknownAccount(BillingError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown account {name!r}")
        self.name = name


class DuplicateAccount(BillingError):
    def __init__(self, name: str) -> None:
        super().__init__(f"account {name!r} already exists")
        self.name = name


class IdempotencyConflict(BillingError):
    """A key was replayed with different content: the caller is confused, refuse loudly."""


class StorageError(BillingError):
    """The database (billing/storage.py) failed the request; no billing rule refused it,
    so retrying later or fixing the database setup can make it pass."""


class DatabaseUnavailable(StorageError):
    """The database cannot be opened or used; the message says what to do."""
