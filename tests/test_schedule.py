"""Fire times computed by our code: the same on every node, right on DST nights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from newsletter.schedule import CronSchedule, IntervalSchedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_a_fixed_hour_in_the_repeated_autumn_hour_fires_once_at_its_first_occurrence() -> None:
    fires = CronSchedule("30 2 * * *", BERLIN).fires(utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    # 02:30 happens twice on 25 October 2026 in Berlin (CEST, then CET): it fires at the first.
    assert [(f.key, f.at) for f in fires] == [
        ("2026-10-25T02:30", utc(2026, 10, 25, 0, 30)),
        ("2026-10-26T02:30", utc(2026, 10, 26, 1, 30)),
    ]


def test_a_fixed_hour_in_the_skipped_spring_hour_fires_once_right_after_the_gap() -> None:
    fires = CronSchedule("30 2 * * *", BERLIN).fires(utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    # 02:30 does not exist on 29 March 2026: it fires at 03:00 CEST, the first instant after.
    assert [(f.key, f.at) for f in fires] == [
        ("2026-03-29T02:30", utc(2026, 3, 29, 1, 0)),
        ("2026-03-30T02:30", utc(2026, 3, 30, 0, 30)),
    ]


def test_an_hour_with_a_star_follows_real_time_across_both_nights() -> None:
    every_half_hour = CronSchedule("*/30 * * * *", BERLIN)
    autumn = every_half_hour.fires(utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 1, 45))
    # Every real half hour, the repeated hour included, keyed by the UTC instant.
    assert [f.key for f in autumn] == [
        "2026-10-25T00:00:00Z",
        "2026-10-25T00:30:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T01:30:00Z",
    ]
    spring = every_half_hour.fires(utc(2026, 3, 28, 23, 45), utc(2026, 3, 29, 1, 45))
    # 02:00 and 02:30 never happen; the real half hours still all fire.
    assert [f.at for f in spring] == [
        utc(2026, 3, 29, 0, 0),
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
    ]


def test_several_wall_times_inside_the_gap_all_fall_due_at_its_end() -> None:
    fires = CronSchedule("*/15 2 * * *", BERLIN).fires(utc(2026, 3, 28, 23), utc(2026, 3, 29, 3))
    assert {f.at for f in fires} == {utc(2026, 3, 29, 1, 0)}
    assert len({f.key for f in fires}) == 4  # the scheduler coalesces them into one run


def test_other_zones_and_weekdays() -> None:
    monday = CronSchedule("0 7 * * 1", NEW_YORK).next_fire(utc(2026, 11, 29, 13))
    assert monday is not None and monday.at == utc(2026, 11, 30, 12)
    assert monday.key == "2026-11-30T07:00"
    leap = CronSchedule("0 7 29 2 *", BERLIN).next_fire(utc(2026, 11, 29))
    assert leap is not None and leap.key == "2028-02-29T07:00"


def test_interval_fires_are_aligned_to_the_epoch_so_every_node_agrees() -> None:
    every = IntervalSchedule(timedelta(minutes=30))
    fires = every.fires(utc(2026, 11, 29, 12, 5), utc(2026, 11, 29, 13, 5))
    assert [f.key for f in fires] == ["2026-11-29T12:30:00Z", "2026-11-29T13:00:00Z"]
    assert every.next_fire(utc(2026, 11, 29, 12, 30)).at == utc(2026, 11, 29, 13)
    # A window ending exactly on a fire includes it; one starting on it does not.
    assert [f.at for f in every.fires(utc(2026, 11, 29, 12), utc(2026, 11, 29, 12, 30))] == [
        utc(2026, 11, 29, 12, 30)
    ]


@pytest.mark.parametrize("expression", ["0 7 * *", "61 7 * * *", "0 7 * * 8"])
def test_a_bad_expression_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        CronSchedule(expression, BERLIN)
