"""A per-client token bucket for the public POST endpoints, shared through the database.

Each client key has a bucket holding up to ``burst`` tokens that refills at ``per_minute``
tokens a minute; a request takes one token or is refused with the seconds until the next one
(``Retry-After``). The buckets live in the database (``Storage.take_rate_token``), so every
``newsletter serve`` process behind a load balancer counts against the same limit, and a
restart forgives nobody. Only a SHA-256 of the key is stored, and a bucket that is full again
is the same as no bucket: each process purges those at most once a minute, so the table holds
the clients of the last few minutes (and a hard cap bounds it during a flood of addresses).

Owns: the limit's parameters and when to purge. Does not own which requests count or who the
client is (``web.subscription``, ``web.proxy``), nor the SQL (``storage.web``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime

from newsletter.storage import Storage

MAX_CLIENTS = 100_000  # past this, every bucket is forgotten at the next purge
PURGE_SECONDS = 60.0  # how often one process purges full buckets


class RateLimiter:
    """Thread-safe; ``clock`` is the time buckets are measured by (tests pass their own;
    by default the storage's lease clock, which every process shares)."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = burst if burst is not None else max(1.0, per_minute)
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self.clock = clock
        self._seconds: Callable[[], float] = (
            time.monotonic if clock is None else lambda: clock().timestamp()
        )
        self._lock = threading.Lock()
        self._last_purge = -math.inf  # the first call purges what earlier runs left behind

    def acquire(self, storage: Storage, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds to wait (> 0).

        Raises ``StorageError`` when the database cannot be used.
        """
        now = self.clock() if self.clock is not None else None
        wait = storage.take_rate_token(key, per_minute=self.per_minute, burst=self.burst, now=now)
        self._purge(storage, now)
        return wait

    def _purge(self, storage: Storage, now: datetime | None) -> None:
        with self._lock:
            seconds = self._seconds()
            due = seconds - self._last_purge >= PURGE_SECONDS
            if due:
                self._last_purge = seconds
        if due:
            storage.purge_rate_buckets(keep_at_most=MAX_CLIENTS, now=now)
