"""Typed errors of the sip package that the edges (CLI) turn into one line."""


class SipSetupError(Exception):
    """A SIP endpoint could not be started (port taken, bad certificate, bad codec...)."""


class PlanError(Exception):
    """A simulator plan that cannot be used; the message names the file and key."""
