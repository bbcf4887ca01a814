"""Crontab expressions: which wall times match, read by croniter.

croniter follows crontab, not APScheduler 3 (whose ``CronTrigger.from_crontab`` numbers
weekdays from Monday and ANDs the two day fields): ``0 7 1 * 1`` fires on the 1st *or* on a
Monday, Sunday is 0 or 7, and ``@daily``, ``@weekly``, ``@hourly``, ``@monthly`` and
``@yearly`` are read. This module only answers which wall times (naive, on a clock without
DST) match; how a wall time becomes an instant in a time zone, and what fires once
cluster-wide, is ``newsletter.schedule``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

from croniter import CroniterBadDateError, CroniterError, croniter

# The standard aliases, spelled out so the hour field can be read (``Crontab.fixed_hour``).
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: dict[int, dict[str, int]] = {  # by field index
    3: {m: i + 1 for i, m in enumerate(_MONTHS)},
    4: {d: i for i, d in enumerate(_DAYS)},
}
_RANGE = re.compile(r"^(\w+)-(\w+)$")


class Crontab:
    """A five-field crontab expression or an ``@`` alias. Raises ValueError when invalid."""

    def __init__(self, expression: str) -> None:
        text = " ".join(expression.split())
        fields = _ALIASES.get(text.lower(), text).split()
        if len(fields) != 5:
            raise ValueError(
                f"expected 5 fields (minute hour day month weekday) or one of "
                f"{', '.join(_ALIASES)}, got {len(fields)} fields"
            )
        for index, field in enumerate(fields):
            _refuse_backward_ranges(index, field)
        self.fields = tuple(fields)
        self.expression = " ".join(fields)
        try:
            croniter(self.expression, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError as e:
            raise ValueError("it matches no date (such as 30 February)") from e
        except CroniterError as e:
            raise ValueError(str(e)) from e
        # A star or a step in the hour field follows real time (see newsletter.schedule).
        self.fixed_hour = "*" not in fields[1] and "/" not in fields[1]

    def walls(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Matching wall times (naive) in ``[start, end]``, in order."""
        # croniter gives the times strictly after its start, at whole minutes.
        it = croniter(
            self.expression, start.replace(second=0, microsecond=0) - timedelta(minutes=1)
        )
        while True:
            try:
                at = it.get_next(datetime)
            except CroniterBadDateError:  # no more dates (croniter looks a few years ahead)
                return
            if at > end:
                return
            if at >= start:
                yield at


def _refuse_backward_ranges(index: int, field: str) -> None:
    """croniter reads ``5-1`` as wrapping round (Friday to Monday); crontab refuses it, and so
    do we, since a typo there would send on days nobody meant."""
    names = _NAMES.get(index, {})
    for item in field.lower().split(","):
        match = _RANGE.match(item.partition("/")[0])
        if match is None:
            continue
        first, last = (int(v) if v.isdigit() else names.get(v) for v in match.groups())
        if first is not None and last is not None and last < first:
            raise ValueError(f"range {item!r} runs backwards")
