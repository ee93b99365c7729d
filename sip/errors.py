"""Typed errors of the sip package that the edges (CLI) turn into one line.

Every exception the sip package defines derives from SipError, so an edge can catch the
package's problems in one clause.
"""


class SipError(Exception):
    """The root of the sip package's errors."""


class SipSetupError(SipError):
    """A SIP endpoint could not be started (port taken, bad certificate, bad codec...)."""


class PlanError(SipError):
    """A simulator plan that cannot be used; the message names the file and key."""


# -- the line pool's (sip.pool re-exports them) ------------------------------------


class PoolError(SipError):
    """A pool request that cannot be carried out; the message names the problem."""


class PoolClosed(PoolError):
    """The pool is closed and every event it had has been read."""


class PoolFull(PoolError):
    pass


class DialRefused(PoolError):
    pass


class DialOutcomeUnknown(PoolError):
    """The line never acknowledged the dial and was killed: the INVITE may have left."""


class UnknownCall(PoolError):
    pass
