"""When scheduled jobs fire, computed by our code from any given time (pure: no clock, no
database), so that every node computes the same fires and tests can walk a DST night.

Each fire has a *key* that names it the same way on every node; the database de-duplicates
fires by (job, key):

- an interval job (gather) fires at multiples of its interval since the UTC epoch, keyed by
  that UTC instant;
- a cron job with a fixed hour (``30 2 * * *``, ``0 9-17 * * 1-5``) is keyed by its *local*
  wall time: on the autumn night the repeated hour fires once, at its first occurrence, and
  on the spring night a wall time that does not exist fires once, at the first instant after
  the gap;
- a cron job with ``*`` or a step in its hour field (``*/15 * * * *``) is keyed by its UTC
  instant: it follows real time, so the repeated hour runs again and the missing hour, which
  never happened, does not.

Which wall times match a crontab expression is croniter's (``newsletter.cron``), read on a
clock without DST; how a wall time maps to an instant is ours (croniter's own DST handling
would fire 02:30 twice on the autumn night).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol

from newsletter.cron import Crontab

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MARGIN = timedelta(hours=3)  # wider than any DST shift, to find walls near the window's edges
_HORIZON = timedelta(days=5 * 366)  # next_fire gives up past this (an impossible date)


@dataclass(frozen=True, order=True)
class Fire:
    at: datetime  # when it is due, in UTC
    key: str  # how every node names it


class JobSchedule(Protocol):
    def fires(self, after: datetime, until: datetime) -> list[Fire]:
        """Fires due in ``(after, until]``, in order."""

    def next_fire(self, after: datetime) -> Fire | None:
        """The first fire strictly after ``after``; None if there is none within years."""


def utc_key(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IntervalSchedule:
    """Every ``every``, aligned to the UTC epoch: every node computes the same instants."""

    def __init__(self, every: timedelta) -> None:
        if every <= timedelta(0):
            raise ValueError("the interval must be positive")
        self.every = every

    def _index(self, at: datetime) -> int:
        return (at - EPOCH) // self.every

    def fires(self, after: datetime, until: datetime) -> list[Fire]:
        out: list[Fire] = []
        n = self._index(after) + 1
        while (at := EPOCH + n * self.every) <= until:
            out.append(Fire(at, utc_key(at)))
            n += 1
        return out

    def next_fire(self, after: datetime) -> Fire:
        at = EPOCH + (self._index(after) + 1) * self.every
        return Fire(at, utc_key(at))


class CronSchedule:
    """A five-field crontab expression in a time zone (see the module docstring)."""

    def __init__(self, expression: str, timezone: tzinfo) -> None:
        self.expression = expression
        self.timezone = timezone
        self._crontab = Crontab(expression)  # raises ValueError when invalid
        self.fixed_hour = self._crontab.fixed_hour

    def instants(self, wall: datetime) -> list[Fire]:
        """The fires of one matching wall time (naive, local): none, one or two instants."""
        tz = self.timezone
        first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        exists = [u for u in dict.fromkeys((first, second)) if _wall(u, tz) == wall]
        if self.fixed_hour:
            key = wall.strftime("%Y-%m-%dT%H:%M")
            if exists:
                return [Fire(min(exists), key)]  # the repeated hour: its first occurrence
            return [Fire(_gap_end(second, first, tz), key)]  # the skipped hour: after the gap
        return [Fire(u, utc_key(u)) for u in sorted(exists)]

    def fires(self, after: datetime, until: datetime) -> list[Fire]:
        start = _wall(after, self.timezone) - _MARGIN
        end = _wall(until, self.timezone) + _MARGIN
        found = {
            fire
            for wall in self._crontab.walls(start, end)
            for fire in self.instants(wall)
            if after < fire.at <= until
        }
        return sorted(found)

    def next_fire(self, after: datetime) -> Fire | None:
        span = timedelta(days=1)
        while span <= _HORIZON:
            found = self.fires(after, after + span)
            if found:
                return found[0]
            span *= 4
        return None

    def next_fires(self, after: datetime, count: int) -> list[Fire]:
        """The next ``count`` fires strictly after ``after`` (fewer if there are none)."""
        out: list[Fire] = []
        while len(out) < count and (fire := self.next_fire(after)) is not None:
            out.append(fire)
            after = fire.at
        return out


def _wall(at: datetime, tz: tzinfo) -> datetime:
    """The local wall time of an instant, naive."""
    return at.astimezone(tz).replace(tzinfo=None)


def _gap_end(before: datetime, after: datetime, tz: tzinfo) -> datetime:
    """The first instant after a spring-forward gap that contains a wall time. ``before`` and
    ``after`` are that wall time read with the offsets from before and after the change, so
    the change lies between them; found to the second by bisection."""
    low, high = min(before, after), max(before, after)
    offset = high.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(tz).utcoffset() == offset:
            high = mid
        else:
            low = mid
    return high.replace(microsecond=0)
