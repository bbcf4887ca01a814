"""The scheduler: fires decided from rows and ``clock.now()``, never from memory.

Most tests drive ``NodeScheduler.wake`` through the clock seam with a real SQLite database
and the SendGrid emulator, walking a DST night or a restart minute by minute in a second of
real time; messages are counted where they arrive. The last ones run the real command.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter import clock
from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.cron import Crontab
from newsletter.schedule import CronSchedule, IntervalSchedule
from newsletter.scheduler import NodeScheduler, digest_job
from newsletter.types import RunStatus
from tests._project import add_article, command, set_table, use_emulator
from tests.emulators import TOKEN, SendGridEmulator

SUBSCRIBERS = ("ada@example.com", "grace@example.org", "linus@example.net")


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendGridEmulator]:
    monkeypatch.setenv("MAIL_TOKEN", TOKEN)
    monkeypatch.setenv("NEWSLETTER_SECRET", "scheduler-secret")
    with SendGridEmulator() as server:
        yield server
        assert server.problems == []


@pytest.fixture
def now() -> Iterator[list[datetime]]:
    current = [datetime(2026, 10, 24, 20, 0, tzinfo=UTC)]
    clock.set_now(lambda: current[0])
    yield current
    clock.set_now(None)


def project(config: Path, emulator: SendGridEmulator, schedule: str) -> None:
    use_emulator(config, emulator)
    set_table(config, "schedule", schedule + "\nlease_seconds = 2")


def open_node(config: Path) -> Publisher:
    publisher = make_publisher(load_config(config), command="run")
    for address in SUBSCRIBERS:
        publisher.add_subscriber(address)
    return publisher


def walk(scheduler: NodeScheduler, now: list[datetime], until: datetime, step: timedelta) -> None:
    while now[0] < until:
        now[0] += step
        scheduler.wake()


def per_recipient(emulator: SendGridEmulator) -> Counter[str]:
    return Counter(emulator.delivered_to())


def digest_runs(publisher: Publisher) -> dict[str, RunStatus]:
    runs = publisher.storage.latest_runs("digest", limit=100)
    return {r.fire: r.status for r in runs}


def test_the_jobs_and_their_schedules(example_project: Path) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        scheduler = NodeScheduler(publisher)
        gather, digest = scheduler.jobs
        assert gather.name == "gather" and isinstance(gather.schedule, IntervalSchedule)
        assert gather.schedule.every == timedelta(minutes=30)
        assert digest.name == "digest" and isinstance(digest.schedule, CronSchedule)
        assert digest.schedule.expression == "0 7 * * 1"
        assert str(digest.schedule.timezone) == "Europe/Berlin"
        assert scheduler.grace == timedelta(hours=1)


def test_digest_job_gathers_then_sends(example_project: Path, fixed_clock: list[datetime]) -> None:
    publisher = make_publisher(load_config(example_project))
    publisher.add_subscriber("reader@example.com")
    digest_job(publisher)
    last = publisher.storage.last_digest()
    assert last is not None and len(last.article_ids) == 9
    assert publisher.storage.digest_counts(last.id).sent == 1
    publisher.close()


def test_the_repeated_autumn_hour_sends_the_digest_once(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "30 2 * * *"')
    publisher = open_node(example_project)
    scheduler = NodeScheduler(publisher)
    scheduler.wake()  # 20:00 UTC: the node starts; gathers
    walk(scheduler, now, datetime(2026, 10, 25, 0, 45, tzinfo=UTC), timedelta(minutes=1))
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)  # 02:30 CEST (00:30 UTC)
    # News between the two 02:30s would make a second digest if the hour fired twice.
    add_article(example_project, "night", "Night news", now[0])
    walk(scheduler, now, datetime(2026, 10, 25, 4, 0, tzinfo=UTC), timedelta(minutes=1))
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    assert digest_runs(publisher) == {"2026-10-25T02:30": RunStatus.DONE}
    assert len(publisher.storage.list_digests()) == 1
    # The next night the news goes out, once.
    walk(scheduler, now, datetime(2026, 10, 26, 2, 0, tzinfo=UTC), timedelta(minutes=5))
    assert per_recipient(emulator) == Counter({a: 2 for a in SUBSCRIBERS})
    assert [d.number for d in publisher.storage.list_digests()] == [2, 1]
    publisher.close()


def test_the_skipped_spring_hour_sends_the_digest_once_after_the_gap(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "*/15 2 * * *"')
    now[0] = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)
    publisher = open_node(example_project)
    scheduler = NodeScheduler(publisher)
    scheduler.wake()
    walk(scheduler, now, datetime(2026, 3, 29, 0, 59, tzinfo=UTC), timedelta(minutes=1))
    assert emulator.deliveries == []
    now[0] = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 CEST: the first instant after 02:xx
    scheduler.wake()
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    walk(scheduler, now, datetime(2026, 3, 29, 4, 0, tzinfo=UTC), timedelta(minutes=1))
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    runs = digest_runs(publisher)
    assert runs.pop("2026-03-29T02:45") == RunStatus.DONE  # the latest wall time runs
    assert runs == {  # the others were due at the same instant: folded into it
        "2026-03-29T02:00": RunStatus.COALESCED,
        "2026-03-29T02:15": RunStatus.COALESCED,
        "2026-03-29T02:30": RunStatus.COALESCED,
    }
    publisher.close()


def test_a_restart_within_the_grace_sends_the_missed_digest_and_one_past_it_does_not(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "0 7 * * *"\nmisfire_grace_seconds = 600')
    now[0] = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    first = open_node(example_project)
    NodeScheduler(first).wake()  # the cluster's first start: gathers
    first.close()  # kill -9 would do the same: nothing of the schedule lives in memory
    # Down across the 07:00 CET (06:00 UTC) fire; back 60 s after it: within the grace.
    now[0] = datetime(2026, 11, 27, 6, 1, tzinfo=UTC)
    second = open_node(example_project)
    NodeScheduler(second).wake()
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    assert digest_runs(second) == {"2026-11-27T07:00": RunStatus.DONE}
    second.close()
    # Next day, back 11 minutes late: past the grace, so the fire is recorded as missed.
    add_article(example_project, "later", "Later news", now[0])
    now[0] = datetime(2026, 11, 28, 6, 11, tzinfo=UTC)
    third = open_node(example_project)
    NodeScheduler(third).wake()
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    assert digest_runs(third)["2026-11-28T07:00"] == RunStatus.MISSED
    third.close()


def test_a_new_install_does_not_send_for_a_fire_before_it_existed(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "0 7 * * *"')
    now[0] = datetime(2026, 11, 27, 6, 5, tzinfo=UTC)  # five minutes after 07:00 CET
    publisher = open_node(example_project)
    scheduler = NodeScheduler(publisher)
    scheduler.wake()
    assert emulator.deliveries == []
    assert publisher.storage.count_articles() == 9  # it did gather
    assert ("gather", "2026-11-27T06:00:00Z") in scheduler.ran
    publisher.close()


def test_a_fire_whose_node_died_mid_job_is_taken_over_and_sent_once(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "0 7 * * *"')
    now[0] = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    publisher = open_node(example_project)
    scheduler = NodeScheduler(publisher)
    scheduler.wake()
    # Another node claimed the 07:00 fire and died before creating the digest.
    fire_at = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    assert publisher.storage.claim_run(
        "digest", "2026-11-27T07:00", fire_at, "dead-node", timedelta(seconds=1), fire_at
    )
    now[0] = fire_at + timedelta(seconds=30)
    scheduler.wake()
    assert emulator.deliveries == []  # its lease still runs
    time.sleep(1.2)
    now[0] = fire_at + timedelta(seconds=60)
    scheduler.wake()
    assert per_recipient(emulator) == Counter(SUBSCRIBERS)
    assert digest_runs(publisher) == {"2026-11-27T07:00": RunStatus.DONE}
    publisher.close()


def test_two_schedulers_on_one_database_send_each_fire_once(
    example_project: Path, emulator: SendGridEmulator, now: list[datetime]
) -> None:
    project(example_project, emulator, 'digest_cron = "*/5 * * * *"')
    now[0] = datetime(2026, 11, 27, 5, 58, tzinfo=UTC)
    a, b = open_node(example_project), open_node(example_project)
    nodes = [NodeScheduler(a), NodeScheduler(b)]
    for minute in range(20):
        now[0] = datetime(2026, 11, 27, 5, 58, tzinfo=UTC) + timedelta(minutes=minute)
        if minute in (3, 13):
            add_article(example_project, f"news{minute}", f"News {minute}", now[0])
        for node in nodes if minute % 2 else reversed(nodes):
            node.wake()
    # 06:00 (the first digest), 06:05 (the news of 06:01), 06:15 (06:11's); 06:10 had none.
    assert per_recipient(emulator) == Counter({addr: 3 for addr in SUBSCRIBERS})
    ran = Counter(job for node in nodes for job, _ in node.ran)
    assert ran["digest"] == 4  # each fire ran once, on one node or the other
    a.close()
    b.close()


def test_run_gathers_at_start_and_stops_cleanly_on_sigterm(example_project: Path) -> None:
    child = command(example_project, "-v", "run")
    feed = example_project.parent / "feeds-out" / "rss.xml"
    deadline = time.monotonic() + 30
    while not feed.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert feed.exists(), child.stderr.read() if child.poll() is not None else "no feed yet"
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "running as node" in out and "stopped" in out
    assert "gathered 4 sources (9 new articles, 0 failed)" in err
    assert "SIGTERM: stopping" in err


def test_a_second_run_on_sqlite_is_refused_naming_the_pid(example_project: Path) -> None:
    first = command(example_project, "run")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "running as node" not in (
            first.stdout.readline() if first.stdout else ""
        ):
            pass
        second = command(example_project, "run")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1
        assert f"another `newsletter run` (PID {first.pid}) is already running" in err
        assert "PostgreSQL" in err
        # Everything else runs beside it.
        status = command(example_project, "status")
        _, err = status.communicate(timeout=60)
        assert status.returncode == 0, err
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 7 * * 1", ["Monday"]),  # APScheduler's own from_crontab says Tuesday
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
    fires = CronSchedule(expression, tz).next_fires(datetime(2026, 11, 22, 12, 0, tzinfo=tz), 7)
    seen: list[str] = []
    for fire in fires:  # from a Sunday noon
        local = fire.at.astimezone(tz)
        assert (local.hour, local.minute) == (7, 0)
        seen.append(local.strftime("%A"))
    assert sorted(set(seen)) == sorted(weekdays)


@pytest.mark.parametrize("expression", ["0 7 * *", "0 7 * * 8", "0 7 * * 5-1", "0 7 * * fr"])
def test_invalid_crontab_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        Crontab(expression)
