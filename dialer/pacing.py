"""Token bucket for calls per second, pure: the caller passes the time in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (default: one second's worth,
    at least 1). Starts full."""

    rate: float
    burst: float = 0.0
    _tokens: float = field(init=False)
    _last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.burst <= 0:
            self.burst = max(1.0, self.rate)
        self._tokens = self.burst

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate


def burst_of(rate: float) -> float:
    """Tokens a bucket saves up: one second's worth, at least one call."""
    return max(1.0, rate)


def shared_tokens(tokens: float | None, elapsed: float, rate: float) -> float:
    """A bucket kept in the database (shared by every worker): its tokens ``elapsed``
    seconds after it was last written. ``None`` (never used) is a full bucket; a clock
    that went backwards (another host's) adds nothing."""
    burst = burst_of(rate)
    if tokens is None:
        return burst
    return min(burst, tokens + max(0.0, elapsed) * rate)
