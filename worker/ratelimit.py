"""A token bucket (pure): how long to wait before sending the next batch at ``rate`` per second.

Used by ``backfill`` so that re-enqueuing a day of recordings does not flood the queue (and
the fleet's autoscaling) at once. The clock is passed in, so the rule is unit-tested without
sleeping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?:/\s*s)?", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """``--rate``: ``N/s`` or ``N`` messages per second (N > 0); ValueError otherwise."""
    match = _RATE.fullmatch(text.strip())
    if not match or float(match["n"]) <= 0:
        raise ValueError(f"{text[:40]!r} is not a rate such as 10/s")
    return float(match["n"])


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up (the largest burst).

    :meth:`delay` says how long to wait until ``n`` tokens are there; :meth:`take` spends them.
    The bucket starts full, so the first batch goes at once.
    """

    rate: float
    capacity: float
    tokens: float | None = None
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity <= 0:
            raise ValueError("rate and capacity must be positive")

    def _refill(self, now: float) -> float:
        if self.tokens is None or self.updated is None:
            self.tokens, self.updated = self.capacity, now
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        return self.tokens

    def delay(self, n: float, now: float) -> float:
        """Seconds from ``now`` until ``n`` (<= capacity) tokens are available."""
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity}")
        missing = n - self._refill(now)
        return max(0.0, missing / self.rate)

    def take(self, n: float, now: float) -> None:
        """Spend ``n`` tokens at ``now`` (call once :meth:`delay` is 0)."""
        self._refill(now)
        assert self.tokens is not None
        self.tokens -= n
