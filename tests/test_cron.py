"""Crontab read as crontab (through croniter): known fire-time tables, DST nights, the CLI."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter.cron import Crontab
from newsletter.schedule import CronSchedule
from tests._project import command, set_table

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def keys(expression: str, after: datetime, count: int, tz: ZoneInfo = BERLIN) -> list[str]:
    return [f.key for f in CronSchedule(expression, tz).next_fires(after, count)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # The 1st *or* any Monday: 30 Nov and 7 Dec are Mondays, 1 Dec a Tuesday, 1 Jan a Friday.
        (
            "0 7 1 * 1",
            [
                "2026-11-30T07:00",
                "2026-12-01T07:00",
                "2026-12-07T07:00",
                "2026-12-14T07:00",
                "2026-12-21T07:00",
                "2026-12-28T07:00",
                "2027-01-01T07:00",
                "2027-01-04T07:00",
            ],
        ),
        # A star in either day field leaves the other alone: Mondays only, the 1st only.
        ("0 7 * * 1", ["2026-11-30T07:00", "2026-12-07T07:00", "2026-12-14T07:00"]),
        ("0 7 1 * *", ["2026-12-01T07:00", "2027-01-01T07:00", "2027-02-01T07:00"]),
        ("@daily", ["2026-11-26T00:00", "2026-11-27T00:00", "2026-11-28T00:00"]),
        ("@midnight", ["2026-11-26T00:00", "2026-11-27T00:00", "2026-11-28T00:00"]),
        ("@weekly", ["2026-11-29T00:00", "2026-12-06T00:00", "2026-12-13T00:00"]),
        ("@monthly", ["2026-12-01T00:00", "2027-01-01T00:00", "2027-02-01T00:00"]),
        ("@yearly", ["2027-01-01T00:00", "2028-01-01T00:00", "2029-01-01T00:00"]),
        ("@DAILY", ["2026-11-26T00:00", "2026-11-27T00:00", "2026-11-28T00:00"]),
        # Ranges, lists, steps and names.
        (
            "30 8 * * mon-wed,fri",
            ["2026-11-27T08:30", "2026-11-30T08:30", "2026-12-01T08:30", "2026-12-02T08:30"],
        ),
        (
            "0 7 */10 * *",
            ["2026-12-01T07:00", "2026-12-11T07:00", "2026-12-21T07:00", "2026-12-31T07:00"],
        ),
        ("0 6 1-3 jan,jul *", ["2027-01-01T06:00", "2027-01-02T06:00", "2027-01-03T06:00"]),
        ("0 7 * * 5-7", ["2026-11-27T07:00", "2026-11-28T07:00", "2026-11-29T07:00"]),
    ],
)
def test_fire_tables(expression: str, expected: list[str]) -> None:
    # From Wednesday 25 November 2026, 12:00 in Berlin.
    assert keys(expression, utc(2026, 11, 25, 11), len(expected)) == expected


def test_at_is_the_wall_time_in_the_zone() -> None:
    fires = CronSchedule("@daily", BERLIN).next_fires(utc(2026, 11, 25, 11), 2)
    assert [f.at for f in fires] == [utc(2026, 11, 25, 23), utc(2026, 11, 26, 23)]


def test_hourly_and_hour_steps_follow_real_time_keyed_by_utc() -> None:
    # 25 October 2026 in Berlin has 25 hours: @hourly fires in each, the repeated one too.
    hourly = CronSchedule("@hourly", BERLIN).fires(utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2))
    assert [f.key for f in hourly] == [
        "2026-10-25T00:00:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T02:00:00Z",
    ]
    assert keys("0 9-17/4 * * 1-5", utc(2026, 11, 27, 9), 4) == [
        "2026-11-27T12:00:00Z",
        "2026-11-27T16:00:00Z",
        "2026-11-30T08:00:00Z",
        "2026-11-30T12:00:00Z",
    ]


def test_the_day_or_on_the_autumn_night_fires_the_repeated_hour_once() -> None:
    # The 25th (a Sunday, the night of the change) or a Monday, at 02:30, which happens twice.
    fires = CronSchedule("30 2 25 * 1", BERLIN).fires(utc(2026, 10, 24), utc(2026, 10, 27))
    assert [(f.key, f.at) for f in fires] == [
        ("2026-10-25T02:30", utc(2026, 10, 25, 0, 30)),
        ("2026-10-26T02:30", utc(2026, 10, 26, 1, 30)),
    ]


def test_the_spring_night_fires_a_skipped_wall_time_once_after_the_gap() -> None:
    fires = CronSchedule("30 2 * * 0", BERLIN).fires(utc(2026, 3, 28), utc(2026, 4, 6))
    assert [(f.key, f.at) for f in fires] == [
        ("2026-03-29T02:30", utc(2026, 3, 29, 1, 0)),  # 03:00 CEST
        ("2026-04-05T02:30", utc(2026, 4, 5, 0, 30)),
    ]


@pytest.mark.parametrize(
    "expression",
    ["0 7 * *", "0 0 7 * * *", "0 7 * * 8", "0 7 * * 5-1", "0 7 * * fri-mon", "0 7 31-1 * *",
     "@reboot", "@fortnightly", "61 7 * * *", "0 7 30 2 *", "0 7 * 13 *", "every monday", ""],
)  # fmt: skip
def test_invalid_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        Crontab(expression)


def test_a_bad_cron_in_the_config_names_the_file_and_line(example_project: Path) -> None:
    set_table(example_project, "schedule", 'digest_cron = "0 7 * * 5-1"')
    result = command(example_project, "status")
    _, err = result.communicate(timeout=60)
    assert result.returncode == 1, err
    assert re.search(rf"{re.escape(example_project.name)}:\d+: schedule\.digest_cron: ", err), err
    assert "range '5-1' runs backwards" in err


def test_status_and_run_print_the_next_three_digests(example_project: Path) -> None:
    set_table(example_project, "schedule", 'digest_cron = "@weekly"\ntimezone = "Asia/Tokyo"')
    status = command(example_project, "status")
    out, err = status.communicate(timeout=60)
    assert status.returncode == 0, err
    line = next(x for x in out.splitlines() if x.startswith("next digests"))
    # Three Sundays at midnight, read in the schedule's zone.
    assert line.count("Sun ") == 3 and line.count(" 00:00") == 3, line
    assert line.endswith("(Asia/Tokyo)"), line
    run = command(example_project, "run")
    try:
        first = run.stdout.readline() if run.stdout else ""
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)
    assert "digest at '@weekly' (Asia/Tokyo), next Sun " in first, first
    assert first.count(" 00:00") == 3, first
