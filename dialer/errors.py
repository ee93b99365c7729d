"""Typed errors of the dialer package: every one derives from DialerError, so an edge
(the CLI, an MQTT reply) catches one root and prints its message as one line."""


class DialerError(Exception):
    """A request the dialer refuses; the message names the problem."""


class ConfigError(DialerError):
    """The configuration cannot be used; the message names the file and key (or the
    environment variable, or the MQTT URL) where the bad value came from."""
