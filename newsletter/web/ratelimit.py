"""A per-client token bucket, in memory, for the public POST endpoints.

Each client address has a bucket holding up to ``burst`` tokens that refills at ``per_minute``
tokens a minute; a request takes one token or is refused with the seconds until the next one
(``Retry-After``). In memory on purpose: one process serves the site (``newsletter serve``), a
restart forgives everyone, and nothing about a visitor is written down. Full buckets are
forgotten (a full bucket and no bucket are the same thing), so memory is bounded by the
clients of the last few minutes, and a hard cap bounds it during a flood of addresses.

Owns: counting. Does not own: which requests count or who the client is (``web.proxy``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_CLIENTS = 100_000  # past this, buckets that are full again are dropped at once


class RateLimiter:
    """Thread-safe; ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = burst if burst is not None else max(1.0, per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def acquire(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds to wait (> 0)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            self._sweep(now)
        return wait

    def _sweep(self, now: float) -> None:
        """Drop buckets that have refilled (at most once a minute, or when over the cap).

        Still over the cap after that (a flood from that many addresses), every bucket is
        dropped: memory stays bounded, and the flood meets full buckets, as after a restart.
        """
        if now - self._last_sweep < 60 and len(self._buckets) <= MAX_CLIENTS:
            return
        self._last_sweep = now
        self._buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate < self.burst
        }
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)
