"""The one place that asks what time it is, so tests can fix the clock (``set_now``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def _system_now() -> datetime:
    return datetime.now(UTC)


_now: Callable[[], datetime] = _system_now


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return _now()


def set_now(func: Callable[[], datetime] | None) -> None:
    """Replace the clock (tests only); ``None`` restores the system clock."""
    global _now
    _now = func or _system_now
