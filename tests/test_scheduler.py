"""The scheduler wiring: job options, and `newsletter run` really gathering on start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.cron import crontab_trigger
from newsletter.scheduler import build_scheduler, digest_job


def test_jobs_are_coalesced_single_instance_and_in_the_configured_zone(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    publisher = make_publisher(load_config(example_project))
    scheduler = build_scheduler(publisher)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"gather", "digest"}
    gather, digest = jobs["gather"], jobs["digest"]
    assert isinstance(gather.trigger, IntervalTrigger)
    assert gather.trigger.interval.total_seconds() == 30 * 60
    assert isinstance(digest.trigger, CronTrigger)
    assert str(digest.trigger.timezone) == "Europe/Berlin"
    assert str(digest.trigger) == (
        "cron[month='*', day='*', day_of_week='mon', hour='7', minute='0']"
    )
    for job in (gather, digest):
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == 3600
    publisher.close()


def test_digest_job_gathers_then_sends(example_project: Path, fixed_clock: list[datetime]) -> None:
    publisher = make_publisher(load_config(example_project))
    publisher.add_subscriber("reader@example.com")
    digest_job(publisher)
    last = publisher.storage.last_digest()
    assert last is not None and len(last.article_ids) == 9
    assert publisher.storage.digest_counts(last.id).sent == 1
    publisher.close()


def test_run_gathers_and_writes_feeds_at_start_and_stops_on_ctrl_c(example_project: Path) -> None:
    env = {**os.environ, "NEWSLETTER_SECRET": "s", "COLUMNS": "200"}
    child = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(example_project), "-v", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    feed = example_project.parent / "feeds-out" / "rss.xml"
    deadline = time.monotonic() + 30
    while not feed.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert feed.exists(), child.stderr.read() if child.poll() is not None else "no feed yet"
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert "running: gather every 30 min" in out
    assert "gathered 4 sources (9 new articles, 0 failed)" in err


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 7 * * 1", ["Monday"]),  # APScheduler's own from_crontab would say Tuesday
        ("0 7 * * 0", ["Sunday"]),
        ("0 7 * * 7", ["Sunday"]),
        ("0 7 * * 1-5", ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]),
        ("0 7 * * 5-7", ["Friday", "Saturday", "Sunday"]),
        ("0 7 * * sat,sun", ["Saturday", "Sunday"]),
        ("0 7 * * */2", ["Sunday", "Tuesday", "Thursday", "Saturday"]),
        (
            "0 7 * * *",
            ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        ),
    ],
)
def test_crontab_weekdays_follow_crontab_not_apscheduler(
    expression: str, weekdays: list[str]
) -> None:
    tz = ZoneInfo("Europe/Berlin")
    trigger = crontab_trigger(expression, tz)
    fire = datetime(2026, 11, 22, 12, 0, tzinfo=tz)  # a Sunday
    seen: list[str] = []
    for _ in range(7):
        nxt = trigger.get_next_fire_time(None, fire + timedelta(minutes=1))
        assert nxt is not None and (nxt.hour, nxt.minute) == (7, 0)
        seen.append(nxt.strftime("%A"))
        fire = nxt
    assert sorted(set(seen)) == sorted(weekdays)


@pytest.mark.parametrize("expression", ["0 7 * *", "0 7 * * 8", "0 7 * * 5-1", "0 7 * * fr"])
def test_invalid_crontab_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        crontab_trigger(expression, ZoneInfo("UTC"))
