"""Crontab expressions as APScheduler 3.x triggers, with the day of the week mapped right.

APScheduler 3.x numbers weekdays from Monday = 0, while crontab numbers them from Sunday = 0
(and 7); its ``CronTrigger.from_crontab`` passes the field through unchanged, so ``0 7 * * 1``
would fire on Tuesdays. We expand the crontab weekday field to the set of days it means and
hand APScheduler their names, which are unambiguous.
"""

from __future__ import annotations

from datetime import tzinfo

from apscheduler.triggers.cron import CronTrigger

_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(value: str) -> int:
    value = value.strip().lower()
    if value in _NAMES:
        return _NAMES.index(value)
    if not value.isdigit() or not 0 <= int(value) <= 7:
        raise ValueError(f"day of the week {value!r} is not 0-7 or sun-sat")
    return int(value) % 7


def crontab_weekdays(field: str) -> str:
    """The crontab weekday field as APScheduler weekday names (``"1-5"`` -> ``"mon,...,fri"``)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"step {step_text!r} must be at least 1")
        if spec == "*":
            first, last = 0, 6
        elif "-" in spec:
            a, b = spec.split("-", 1)
            first, last = _day(a), _day(b)
            if b.strip() == "7":
                last = 7  # "5-7" means Friday to Sunday
        else:
            first = last = _day(spec)
            if step_text:
                last = 6  # "1/2" means every second day from Monday
        if last < first:
            raise ValueError(f"range {spec!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    ordered = sorted(days, key=lambda d: (d + 6) % 7)  # Monday first, like APScheduler
    return ",".join(_NAMES[d] for d in ordered)


def crontab_trigger(expression: str, timezone: tzinfo) -> CronTrigger:
    """A trigger for a five-field crontab expression. Raises ValueError when it is invalid."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=timezone,
    )
