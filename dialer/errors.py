"""Typed errors of the dialer; the CLI prints them as one line and exits non-zero."""


class DialerError(Exception):
    """A request the dialer refuses; the message names the problem."""
