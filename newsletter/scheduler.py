"""APScheduler 3.x wiring, nothing more: jobs call ``Publisher`` methods, listeners log.

Two jobs: gather-then-feeds on an interval (first run at start), and the digest on a cron
expression in the configured time zone. Both run on one worker thread, so they never overlap;
``coalesce`` folds missed runs into one and ``misfire_grace_time`` bounds how late a run may
start. What was sent is decided by the database, never by the scheduler's memory, so a
restart at any moment is safe.
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from newsletter import clock
from newsletter.core import Publisher
from newsletter.cron import crontab_trigger

log = logging.getLogger(__name__)


def gather_job(publisher: Publisher) -> None:
    results = publisher.gather()
    failed = [r for r in results if not r.ok]
    for r in failed:
        log.warning("%s", r.error)
    publisher.build_feeds()
    log.info(
        "gathered %d sources (%d new articles, %d failed); feeds rebuilt",
        len(results),
        sum(r.new for r in results),
        len(failed),
    )


def digest_job(publisher: Publisher) -> None:
    # Gather first so the digest carries what was published up to the minute it is sent.
    gather_job(publisher)
    report = publisher.send_digest()
    if report.digest_id is None:
        log.info("digest: nothing sent (%s)", report.reason)
    else:
        log.info(
            "digest %d: %d sent, %d failed, %d uncertain",
            report.digest_id,
            report.sent,
            report.failed,
            report.uncertain,
        )


def build_scheduler(publisher: Publisher) -> BlockingScheduler:
    sched = publisher.config.schedule
    tz = ZoneInfo(sched.timezone)
    scheduler = BlockingScheduler(
        timezone=tz, executors={"default": ThreadPoolExecutor(max_workers=1)}
    )
    # Given per job rather than as job_defaults, so the jobs carry them before start().
    options = {
        "coalesce": True,
        "max_instances": 1,
        "misfire_grace_time": sched.misfire_grace_seconds,
    }
    scheduler.add_job(
        gather_job,
        IntervalTrigger(minutes=sched.gather_interval_minutes, timezone=tz),
        args=[publisher],
        id="gather",
        name="gather sources and rebuild feeds",
        next_run_time=clock.now(),
        **options,
    )
    scheduler.add_job(
        digest_job,
        crontab_trigger(sched.digest_cron, tz),
        args=[publisher],
        id="digest",
        name="send the digest",
        **options,
    )

    def on_event(event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("job %s missed its run at %s", event.job_id, event.scheduled_run_time)
        elif event.exception is not None:
            log.error(
                "job %s failed: %s",
                event.job_id,
                event.exception,
                exc_info=(type(event.exception), event.exception, event.exception.__traceback__),
            )

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler
