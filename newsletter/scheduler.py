"""The scheduler of one node: which fires are due, which this node runs, and the wake-ups.

Every node may run a scheduler. On each wake-up it computes the jobs' fires from
``clock.now()`` (``schedule``), and for each job takes the latest fire due within
``misfire_grace_seconds`` that has no row yet: the node whose INSERT creates the row runs the
job, every other node skips it, and older due fires are recorded as coalesced. A fire whose
node died mid-job (its run's lease ran out) is taken over within the grace. So a node that
restarts catches up a fire it missed from the rows, not from memory; a fire older than the
grace is recorded as missed. Each wake-up also joins an unfinished send (``resume_sending``),
so a send interrupted anywhere goes on at once, not at the next cron fire.

In ``[digest] mode = "per_item"`` there is no digest job: the gather job mails each new
article after gathering (``Publisher.send_items``), so mails follow the gather interval.

The digest job catches up only fires after the cluster's scheduler first started (a new
install does not send at once for a fire that passed before it existed); gather catches up
always, so a node gathers when it starts.

APScheduler 3 only wakes the process: one job whose trigger asks ``next_wake`` (the next
fire, or a tick to look for work), on one worker thread, so jobs never overlap on a node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from newsletter import clock
from newsletter.core import Publisher
from newsletter.exceptions import NewsletterError, OutputError
from newsletter.schedule import CronSchedule, Fire, IntervalSchedule, JobSchedule
from newsletter.types import RunStatus

log = logging.getLogger(__name__)

SINCE_META_KEY = "scheduler_since"
_MISSED_LOOKBACK = timedelta(days=7)  # how far back a missed digest fire is looked for


def gather_job(publisher: Publisher) -> str:
    """Gather every source, then rebuild the feeds and the archive; in per-item mode, then
    send a mail per new article (``Publisher.send_items``). Returns a summary."""
    results = publisher.gather()
    failed = [r for r in results if not r.ok]
    for r in failed:
        log.warning("%s", r.error)
    per_item = publisher.config.digest.mode == "per_item"
    try:
        publisher.build_feeds()
    except OutputError as e:
        if not per_item:
            raise
        # As for the digest: a feeds folder that cannot be written does not hold back the mail.
        log.error("%s; the new items' mails go out all the same", e)
    summary = (
        f"gathered {len(results)} sources ({sum(r.new for r in results)} new articles, "
        f"{len(failed)} failed); feeds rebuilt"
    )
    if per_item and not publisher.stopping.is_set():
        reports = publisher.send_items()
        summary += (
            f"; {len(reports)} mails, {sum(r.sent for r in reports)} sent by this node, "
            f"{sum(r.failed for r in reports)} failed, "
            f"{sum(r.uncertain for r in reports)} uncertain"
        )
    log.info("%s", summary)
    return summary


def digest_job(
    publisher: Publisher, *, fire: str | None = None, gather_first: bool = True
) -> str | None:
    """Gather (unless just done), then create and send the digest of ``fire``. Returns a
    summary, or None when a stop request came before the digest was created: the fire is
    then left open for a node to take over."""
    # Gather first so the digest carries what was published up to the minute it is sent.
    if gather_first:
        try:
            gather_job(publisher)
        except OutputError as e:
            # The feeds and the mail are independent: a feeds folder that cannot be written
            # must not hold back the digest (the next gather writes the feeds again).
            log.error("%s; the digest goes out all the same", e)
    if publisher.stopping.is_set():
        return None
    report = publisher.send_digest(fire=fire)
    if report.digest_id is None:
        summary = f"digest: nothing sent ({report.reason})"
    else:
        summary = (
            f"digest {report.number}: {report.sent} sent by this node, {report.failed} failed, "
            f"{report.uncertain} uncertain"
        )
    log.info("%s", summary)
    return summary


@dataclass(frozen=True)
class Job:
    name: str
    schedule: JobSchedule
    catch_up_before_start: bool  # catch up fires from before the cluster's first start


class NodeScheduler:
    """Decides and runs this node's share of the scheduled work. ``wake`` is the whole of it;
    APScheduler calls it (``start``), tests call it directly with the clock where they want."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        sched = publisher.config.schedule
        tz: tzinfo = ZoneInfo(sched.timezone)
        gather = Job(
            "gather", IntervalSchedule(timedelta(minutes=sched.gather_interval_minutes)), True
        )
        # Per-item mode mails what each gather brings (``gather_job``): the cron makes nothing.
        self.jobs: tuple[Job, ...] = (
            (gather, Job("digest", CronSchedule(sched.digest_cron, tz), False))
            if publisher.config.digest.mode == "digest"
            else (gather,)
        )
        self.grace = timedelta(seconds=sched.misfire_grace_seconds)
        self.lease = timedelta(seconds=sched.lease_seconds)
        # Between fires, wake this often to join unfinished sends and take back dead nodes'
        # work: well within a lease, at most a minute.
        self.tick = timedelta(seconds=min(60.0, max(1.0, sched.lease_seconds / 2)))
        self.ran: list[tuple[str, str]] = []  # (job, fire key) this node ran, for reports
        self._built: str | None = None  # the content version this node's feeds were built from
        self.idle = threading.Event()
        self.idle.set()
        self._apscheduler: BackgroundScheduler | None = None

    @property
    def node(self) -> str:
        return self.publisher.node.id

    @property
    def stopping(self) -> threading.Event:
        return self.publisher.stopping

    @cached_property
    def since(self) -> datetime:
        """When the first scheduler of this database started (kept in the database, read once:
        it never changes)."""
        value = self.publisher.storage.get_or_create_meta(
            SINCE_META_KEY, lambda: clock.now().isoformat()
        )
        return datetime.fromisoformat(value)

    # --- one wake-up -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Run whatever is due now on this node. Never raises for a job's failure, nor for a
        database that does not answer (the next wake-up tries again: the rows decide)."""
        self.idle.clear()
        try:
            self._wake()
        except NewsletterError as e:
            log.error("wake-up cut short: %s; trying again at the next one", e)
        finally:
            self.idle.set()

    def _wake(self) -> None:
        self.publisher.node.start()
        now = clock.now()
        since = self.since
        gathered = False
        for job in self.jobs:
            if self.stopping.is_set():
                return
            for fire, taken_over in self._mine(job, now, since):
                if self.stopping.is_set():
                    return
                self._run(job, fire, taken_over=taken_over, gathered=gathered)
                gathered = gathered or job.name in ("gather", "digest")
        if self.stopping.is_set():
            return
        self._keep_feeds_current(built=gathered)
        try:
            report = self.publisher.resume_sending()
        except NewsletterError as e:
            log.error("resuming the unfinished digest failed: %s", e)
            return
        if report is not None and report.digest_id is not None:
            log.info(
                "digest %d: joined: %d sent by this node, %d failed, %d uncertain",
                report.number,
                report.sent,
                report.failed,
                report.uncertain,
            )

    def _keep_feeds_current(self, *, built: bool) -> None:
        """Each node writes the feeds and the archive to its own ``output_dir``; another
        node's gather or digest changes what they are made of, so rebuild when the database
        says so (unchanged files are left alone). Errors are logged: the next wake-up tries
        again."""
        try:
            version = self.publisher.storage.content_version()
            if built or version == self._built:
                self._built = version
                return
            self.publisher.build_feeds()
            self._built = version
            log.info("feeds rebuilt: another node changed the articles or digests")
        except (NewsletterError, OSError) as e:
            log.error("feeds not rebuilt: %s", e)

    def _mine(self, job: Job, now: datetime, since: datetime) -> list[tuple[Fire, bool]]:
        """The fires of ``job`` this node runs now: the latest due one if its INSERT wins, and
        any of its fires whose node died mid-run (taken over). Records coalesced and missed
        fires on the way."""
        storage = self.publisher.storage
        start = now - self.grace
        if not job.catch_up_before_start:
            start = max(start, since - timedelta(microseconds=1))
        mine: list[tuple[Fire, bool]] = []
        for run in storage.stale_runs():
            if run.job != job.name or not storage.take_over_run(
                job.name, run.fire, self.node, self.lease, now
            ):
                continue
            if run.scheduled_at <= now - self.grace:
                storage.finish_run(
                    job.name,
                    run.fire,
                    self.node,
                    RunStatus.FAILED,
                    now,
                    detail=f"node {run.node} stopped during the run; too late to run it again",
                )
                log.warning(
                    "job %s: fire %s was left unfinished by node %s", job.name, run.fire, run.node
                )
                continue
            log.warning("job %s: taking over fire %s from node %s", job.name, run.fire, run.node)
            mine.append((Fire(run.scheduled_at, run.fire), True))
        due = job.schedule.fires(start, now)
        if not job.catch_up_before_start:
            self._record_missed(job, now, since)
        if not due:
            return mine
        known = storage.runs_of(job.name, [f.key for f in due])
        fresh = [f for f in due if f.key not in known]
        if not fresh:
            return mine
        latest, older = fresh[-1], fresh[:-1]
        for fire in older:
            storage.record_fire(
                job.name, fire.key, fire.at, RunStatus.COALESCED, now, detail=f"into {latest.key}"
            )
        if storage.claim_run(job.name, latest.key, latest.at, self.node, self.lease, now):
            late = now - latest.at
            if late > self.tick * 2:
                log.warning("job %s: running fire %s late by %s", job.name, latest.key, late)
            mine.append((latest, False))
        return mine

    def _record_missed(self, job: Job, now: datetime, since: datetime) -> None:
        """A fire older than the grace with no row was missed (every node was down)."""
        storage = self.publisher.storage
        latest = storage.latest_runs(job.name)
        start = max(now - self.grace - _MISSED_LOOKBACK, since - timedelta(microseconds=1))
        if latest:
            start = max(start, latest[0].scheduled_at)
        missed = job.schedule.fires(start, now - self.grace)
        if not missed:
            return
        last = missed[-1]
        if storage.record_fire(
            job.name,
            last.key,
            last.at,
            RunStatus.MISSED,
            now,
            detail=f"{len(missed)} fires missed, the last {now - last.at} ago",
        ):
            log.warning(
                "job %s: fire %s was missed: no node ran it within misfire_grace_seconds "
                "(%s); it is skipped",
                job.name,
                last.key,
                self.grace,
            )

    def _run(self, job: Job, fire: Fire, *, taken_over: bool, gathered: bool) -> None:
        publisher = self.publisher
        try:
            detail: str | None
            if job.name == "gather":
                detail = gather_job(publisher)
            else:
                detail = digest_job(
                    publisher, fire=f"{job.name}@{fire.key}", gather_first=not gathered
                )
        except Exception as e:  # a job's failure is logged and recorded; the node goes on
            log.error("job %s (fire %s) failed: %s", job.name, fire.key, e, exc_info=True)
            publisher.storage.finish_run(
                job.name, fire.key, self.node, RunStatus.FAILED, clock.now(), detail=str(e)[:1000]
            )
            return
        if detail is None:
            # Stopped before the digest existed: the run stays open and its lease runs out
            # when this node exits, so a node (this one, restarted) takes the fire over.
            log.warning("job %s: fire %s stopped before it was done", job.name, fire.key)
            return
        self.ran.append((job.name, fire.key))
        publisher.storage.finish_run(
            job.name, fire.key, self.node, RunStatus.DONE, clock.now(), detail=detail
        )
        if taken_over:
            log.info("job %s: fire %s finished after a takeover", job.name, fire.key)

    def next_wake(self, now: datetime | None = None) -> datetime:
        """When to wake next: the next fire of any job, or a tick, whichever comes first."""
        now = now or clock.now()
        candidates = [now + self.tick]
        for job in self.jobs:
            fire = job.schedule.next_fire(now)
            if fire is not None:
                candidates.append(fire.at)
        return min(candidates)

    # --- APScheduler -----------------------------------------------------------------------------

    def start(self) -> None:
        """Wake now, then whenever ``next_wake`` says, on a background thread."""
        scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(max_workers=1)})
        scheduler.add_job(
            self.wake,
            _WakeTrigger(self.next_wake),
            id="wake",
            name="newsletter node wake-up",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,  # late or not, the wake-up decides what is due
            next_run_time=clock.now(),
        )
        scheduler.start()
        self._apscheduler = scheduler

    def shutdown(self) -> None:
        if self._apscheduler is not None:
            self._apscheduler.shutdown(wait=False)
            self._apscheduler = None


class _WakeTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler trigger whose every next time is ``NodeScheduler.next_wake``."""

    def __init__(self, next_wake: Callable[[], datetime]) -> None:
        self.next_wake = next_wake

    def get_next_fire_time(self, previous_fire_time: Any, now: datetime) -> datetime:
        return self.next_wake()
