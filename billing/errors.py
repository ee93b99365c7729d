"""Typed errors of the billing core. The CLI and MQTT edges turn them into one line."""


class BillingError(Exception):
    """A billing request that cannot be carried out; the message names the problem."""


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
