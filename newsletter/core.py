"""``make_publisher`` wires the parts; ``Publisher`` is the one door the CLI, the scheduler and
the web app all go through.

Owns the order of the pipeline and its rules (what goes into a digest, when one is created,
what counts as sent). Does not own SQL (``storage``), HTTP or parsing (``sources``), templates
(``render``) or wire formats (``mail``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, timedelta
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo

import requests
from markdown_it import MarkdownIt

from newsletter import clock, rules
from newsletter.addresses import validate_address
from newsletter.config import Config
from newsletter.exceptions import (
    ConfigError,
    NewsletterError,
    NoteChanged,
    OutputError,
    RenderError,
    SubscriberError,
    os_reason,
)
from newsletter.files import remove_leftover_temp_files
from newsletter.gather import ItemLimits, gather, sanitize_html
from newsletter.grouping import RelatedHistory
from newsletter.importing import read_rows
from newsletter.mail import make_backend
from newsletter.mail.base import MailBackend, PreparedContent
from newsletter.node import Node
from newsletter.render import archive
from newsletter.render.digest import DigestRenderer, RenderedDigest
from newsletter.render.feeds import write_feeds
from newsletter.sending import Reclaimed, StorageLedger, reclaim_expired
from newsletter.sources import Source, make_source
from newsletter.storage import Storage, new_digest_uid, open_storage
from newsletter.text import clean_line
from newsletter.tokens import ConfirmTokens, TokenError, UnsubscribeTokens
from newsletter.types import (
    Article,
    DeliveryResult,
    Digest,
    DigestCounts,
    GatherResult,
    ImportReport,
    LeaseHolder,
    MessageContent,
    NodeInfo,
    Recipient,
    SendReport,
    SourceState,
    Subscriber,
    SubscriberStatus,
)
from newsletter.websub import ping_hub

log = logging.getLogger(__name__)

SECRET_META_KEY = "generated_secret"  # noqa: S105 - a key name, not a secret
LIST_ID_META_KEY = "list_id"
# A pending address is sent another confirmation only this long after the last one.
CONFIRM_RESEND = timedelta(minutes=10)

# Renderings of a digest whose editor's note was replaced meanwhile, before giving up.
_NOTE_ATTEMPTS = 3

_warned_no_secret: set[str] = set()
_warned_lock = threading.Lock()


def _warn_no_secret(env: str) -> None:
    """Once per process and variable: ``serve`` and ``preview`` make a new Publisher whenever
    the config file changes, and the advice needs saying once."""
    with _warned_lock:
        if env in _warned_no_secret:
            return
        _warned_no_secret.add(env)
    log.warning(
        "$%s is not set: links are signed with a secret kept in the database. Set your own, "
        "e.g. export %s=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'); "
        "links already sent stay valid (the database's secret is still accepted)",
        env,
        env,
    )


@dataclass(frozen=True)
class DigestPlan:
    """What the next digest would hold, computed without creating it."""

    articles: tuple[Article, ...]
    more: int  # new articles beyond ``digest.max_items``
    first: bool  # no digest was ever created
    # The issue number this digest would get: the last one's, the one the plan was made
    # against, plus one. Creating it under that number is what makes a racing node that
    # planned against the same last digest lose, instead of sending the same news again.
    number: int = 1
    # The articles the digest accounts for, shown or passed over (``rules.DigestChoice``).
    covered: tuple[int, ...] = ()


@dataclass(frozen=True)
class SendPlan:
    """What a send would do (``send --dry-run``)."""

    digest_id: int | None  # an unfinished digest that would be resumed; None: a new one
    subject: str | None
    articles: int
    recipients: int  # messages that would go out
    uncertain: int  # may have arrived already: not re-sent without --resend-uncertain
    destination: str  # where they would go: the backend and its endpoint
    batch_size: int
    batches: int
    sample: tuple[str, ...]  # the first few addresses
    leased: int = 0  # being sent right now by nodes holding their batches
    reason: str | None = None  # why nothing would be sent


@dataclass(frozen=True)
class StatusReport:
    sources: tuple[SourceState, ...]
    configured_sources: tuple[str, ...]
    last_digest: Digest | None
    last_digest_counts: DigestCounts | None
    subscribers: dict[SubscriberStatus, int]  # every status, zeros included
    articles: int
    leases: tuple[LeaseHolder, ...] = ()  # nodes holding batches of ``last_digest`` now
    nodes: tuple[NodeInfo, ...] = ()  # nodes whose heartbeat is recent
    uncertain_digest: Digest | None = None  # the newest digest with uncertain deliveries

    @property
    def active_subscribers(self) -> int:
        return self.subscribers[SubscriberStatus.ACTIVE]


def make_publisher(
    config: Config, *, storage: Storage | None = None, command: str = "cli"
) -> Publisher:
    """Open the storage the config names (migrating it) and return a ``Publisher``.

    ``command`` names what this process is (``run``, ``send``, ...) in the nodes table."""
    return Publisher(config, storage or open_storage(config.storage.url), command=command)


class Publisher:
    def __init__(self, config: Config, storage: Storage, *, command: str = "cli") -> None:
        self.config = config
        self.storage = storage
        self.command = command
        # Set by a signal (see ``cli``): claim nothing more, finish what is on the wire.
        self.stopping = threading.Event()
        self._tidied = False  # leftover temporary files in the output folder removed

    def close(self) -> None:
        if "node" in self.__dict__:
            self.node.close()
        self.storage.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- parts built on first use ----------------------------------------------------------------

    @cached_property
    def renderer(self) -> DigestRenderer:
        return DigestRenderer(self.config)

    @cached_property
    def _related(self) -> RelatedHistory:
        return RelatedHistory(self.config.digest.group)

    @cached_property
    def backend(self) -> MailBackend:
        return make_backend(self.config)

    @cached_property
    def list_id(self) -> str:
        """The list's id: the one the config gave when it was first used, kept in the database
        from then on. It salts every unsubscribe and confirmation link, so renaming the title
        (or moving the sender's domain) must not change it: links already sent stay valid. It
        is the ``List-Id`` header too: RFC 2919 asks that a list's identifier persist across
        time, and readers' mail filters match on it."""
        configured = self.config.newsletter.list_id
        kept = self.storage.get_or_create_meta(LIST_ID_META_KEY, lambda: configured)
        if kept != configured:
            log.info("list id %s kept (the config's title would make it %s)", kept, configured)
        return kept

    @cached_property
    def tokens(self) -> UnsubscribeTokens:
        secret, previous = self._signing_keys
        return UnsubscribeTokens(secret, self.list_id, previous=previous)

    @cached_property
    def confirm_tokens(self) -> ConfirmTokens:
        secret, previous = self._signing_keys
        return ConfirmTokens(
            secret,
            self.list_id,
            max_age=timedelta(hours=self.config.web.confirm_hours),
            previous=previous,
        )

    @cached_property
    def _signing_keys(self) -> tuple[str, tuple[str, ...]]:
        """The secret links are signed with, and the older ones links already in inboxes may
        carry: ``previous_secrets_env``'s and, once the secret comes from the environment, the
        one kept in the database (it signed every link made before the variable was set)."""
        nl = self.config.newsletter
        previous = self.config.secret_list(nl.previous_secrets_env)
        value = self.config.secret(nl.secret_env)
        if value:
            kept = self.storage.get_meta(SECRET_META_KEY)
            return value, (*previous, kept) if kept else previous
        # Without the variable, links would change on every run if we made one up each time;
        # a generated secret kept in the database (never in the repo) keeps them valid.
        _warn_no_secret(nl.secret_env)
        kept = self.storage.get_or_create_meta(SECRET_META_KEY, lambda: secrets.token_urlsafe(32))
        return kept, previous

    # --- gather and feeds ------------------------------------------------------------------------

    def sources(self, session: requests.Session) -> list[Source]:
        tz = ZoneInfo(self.config.newsletter.timezone)
        return [
            make_source(
                c,
                session=session,
                http=self.config.http,
                timezone=tz,
                site_url=self.config.newsletter.site_url,
                stored=self._stored_keys,
            )
            for c in self.config.sources
            if c.enabled
        ]

    def _stored_keys(self, source: str, keys: Sequence[str]) -> Set[str]:
        # Called from gather's worker threads: a read in a transaction of its own.
        return self.storage.stored_articles(source, keys).keys()

    def gather(
        self, *, progress: Callable[[GatherResult], None] | None = None
    ) -> list[GatherResult]:
        """Fetch every enabled source and store its articles. One result per source."""
        with requests.Session() as session:
            session.headers["User-Agent"] = self.config.http.user_agent
            return gather(
                self.sources(session),
                self.storage,
                progress=progress,
                stopping=self.stopping,
                limits=ItemLimits(
                    max_tags=self.config.http.max_tags_per_item,
                    max_title_chars=self.config.http.max_title_chars,
                ),
            )

    def build_feeds(self) -> list[Path]:
        """Rewrite the feeds (main, per tag, archive pages) from the stored articles, tell the
        WebSub hub, when one is configured, which current feeds changed, and rewrite the web
        archive of the digests.

        Returns the files (re)written; unchanged files are left untouched. A hub that refuses
        or cannot be reached is logged and does not fail the build. Raises ``OutputError``
        naming the path when a file cannot be written (a full disk, a read-only folder).
        """
        storage = self.storage
        if not self._tidied:
            # Once per process: a build killed mid-write left temporary files (feeds, tag
            # feeds, archive pages); only those whose writer is gone are removed.
            remove_leftover_temp_files(self.config.feeds.output_dir)
            self._tidied = True

        unlinked: list[Article] = []  # editors' articles without a url: they get a page

        def history() -> Iterator[Article]:
            offset = 0
            while batch := storage.articles_page(offset, 500):
                for article in batch:
                    if not article.url:
                        unlinked.append(article)
                    yield archive.with_page_link(self.config.newsletter, article)
                offset += len(batch)

        feeds = self.config.feeds
        # A first pass finds the stories told by several sources: an item on an archive page
        # links to versions that may arrive pages later. Only articles new to this process
        # are compared (``RelatedHistory``).
        related = self._related.update(history)
        with _writing("feeds not written", feeds.output_dir):
            written = write_feeds(
                history(),
                self.config.newsletter,
                feeds,
                max_tags=self.config.http.max_tags_per_item,
                related=related,
            )
        if feeds.websub_hub and written.changed:
            ping_hub(
                feeds.websub_hub,
                written.changed,
                user_agent=self.config.http.user_agent,
                timeout=self.config.http.timeout,
            )
        pages = self._write_article_pages(unlinked)
        return [*written.paths, *pages, *self.write_archive()]

    def _write_article_pages(self, unlinked: Iterable[Article]) -> list[Path]:
        """The pages of the editors' articles without a url of their own (``unlinked``)."""
        output_dir = self.config.feeds.output_dir
        with _writing("article pages not written", output_dir):
            return archive.write_article_pages(
                unlinked,
                renderer=self.renderer,
                output_dir=output_dir,
                has_issues=self.storage.last_digest() is not None,
            )

    def write_archive(self) -> list[Path]:
        """Rewrite the web archive (a page per digest and the index) from the stored digests.

        Nothing is written before the first digest. Returns the files (re)written.
        """
        digests = self.storage.list_digests()
        if not digests:
            return []
        with _writing("archive not written", self.config.feeds.output_dir):
            return archive.write_archive(
                digests, renderer=self.renderer, output_dir=self.config.feeds.output_dir
            )

    # --- digests ---------------------------------------------------------------------------------

    def plan_digest(self, *, force: bool = False) -> DigestPlan:
        """The articles the next digest would carry (see README, "What goes into a digest")."""
        now = clock.now()
        last = self.storage.last_digest()
        # No time or id watermark: what no digest covered yet, whenever it was gathered.
        candidates = self.storage.undigested_articles()
        limit = self.config.digest.max_items
        choice = rules.choose_digest_articles(
            candidates,
            first=last is None,
            lookback_start=now - timedelta(hours=self.config.digest.lookback_hours),
            max_items=limit,
        )
        articles, more = choice.articles, choice.more
        if not articles and force:
            articles, more = tuple(self.storage.recent_articles(limit)), 0
        # An article without a link of its own is read on its archive page ("Read more").
        articles = tuple(archive.with_page_link(self.config.newsletter, a) for a in articles)
        return DigestPlan(
            articles=articles,
            more=more,
            first=last is None,
            number=last.number + 1 if last else 1,
            covered=choice.covered,
        )

    def render_next_digest(self, *, force: bool = False) -> RenderedDigest | None:
        """Render what would be sent now, without creating anything (the editors' preview).

        A digest that does not exist yet has no page in the archive: its "view in your
        browser" link points to the archive's index.
        """
        plan = self.plan_digest(force=force)
        if not plan.articles:
            return None
        return self.renderer.render(
            plan.articles,
            now=clock.now(),
            more=plan.more,
            archive_url=archive.index_url(self.config.newsletter),
            note=self.note_html(self.next_note()),
        )

    # --- the editor's note -----------------------------------------------------------------------

    def next_note(self) -> str:
        """The Markdown of the note the next digest would open with ("" for none): the note
        file's, when it exists (it is taken when that digest is created), else the note
        stored by ``set_note``. Changes nothing."""
        found = self._read_note_file()
        if found is not None:
            return found[0]
        pending = self.storage.pending_note()
        return pending.body if pending is not None else ""

    def set_note(self, body: str) -> None:
        """Make ``body`` (Markdown) the note that opens the next digest, replacing the waiting
        one. Raises ``NewsletterError`` for an empty note (``clear_note`` drops one)."""
        if not body.strip():
            raise NewsletterError("the note is empty (to drop the waiting note, use --clear)")
        self.storage.set_note(body.strip(), clock.now())

    def clear_note(self) -> bool:
        """Drop the waiting note (not the note file). False when none was waiting."""
        return self.storage.clear_note()

    def note_html(self, body: str) -> str:
        """A note's Markdown as sanitized HTML, its links absolute against the site."""
        if not body.strip():
            return ""
        rendered = MarkdownIt("commonmark").enable("table").render(body)
        return sanitize_html(rendered, self.config.newsletter.site_url)

    def _read_note_file(self) -> tuple[str, str] | None:
        """(text, identity) of ``[digest] note_file`` when it exists and is not blank. The
        identity (content hash and mtime) tells a file already taken from one written anew."""
        path = self.config.digest.note_file
        if path is None:
            return None
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"cannot read the note file {path}: {os_reason(e)}") from e
        try:
            body = data.decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            raise ConfigError(f"the note file {path} is not valid UTF-8") from e
        if not body:
            return None
        return body, f"file:{hashlib.sha256(data).hexdigest()[:32]}:{mtime}"

    def _take_note_file(self) -> None:
        """Store the note file's text as the waiting note, then rename the file
        ``<name>.sent-<UTC time>``. In that order, and idempotent: the note is stored under
        the file's identity, so a crash between the two steps leaves a file that the next
        call renames without storing it again; the rename (``rename(2)``) is atomic, so the
        file is either still there or gone whole."""
        found = self._read_note_file()
        path = self.config.digest.note_file
        if found is None or path is None:
            return
        body, origin = found
        if self.storage.set_note(body, clock.now(), origin=origin):
            log.info("editor's note read from %s", path)
        done = path.with_name(f"{path.name}.sent-{clock.now().astimezone(UTC):%Y%m%dT%H%M%S}")
        try:
            path.replace(done)
        except FileNotFoundError:
            pass  # another node took the same file first and renamed it
        except OSError as e:
            # Stored already: the next digest shows it once whether or not the file moves.
            log.error("cannot rename the note file %s: %s", path, os_reason(e))

    @cached_property
    def node(self) -> Node:
        """This process as a node: its id in leases and runs, its heartbeat, its stop event."""
        return Node(
            self.storage,
            command=self.command,
            lease=timedelta(seconds=self.config.schedule.lease_seconds),
            stopping=self.stopping,
        )

    def send_digest(
        self,
        *,
        force: bool = False,
        resend_uncertain: bool = False,
        fire: str | None = None,
        create: bool = True,
        wait_for_others: bool = False,
        progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
        on_start: Callable[[Digest, DigestCounts], None] | None = None,
    ) -> SendReport:
        """Create the next digest if there is news (or ``force``), then deliver what is pending,
        as one node among any number working on the same database.

        Safe to rerun at any point and on any number of nodes at once: a digest is created
        once per number and per scheduled ``fire`` (a node that loses the race joins the
        winner's digest); an unfinished digest is resumed rather than created again; a batch
        is sent by the node holding its lease, and a recipient recorded as sent is never sent
        again. Batches of nodes that died are re-sent where the provider de-duplicates them,
        else reported uncertain until ``resend_uncertain``. With ``create`` False only an
        unfinished digest is worked on. With ``wait_for_others``, the call returns only when
        no batch of the digest is leased by another node (it takes back those that expire).
        The report counts what *this node* did.
        """
        self.node.start()
        backend = self.backend
        reclaimed = self._reclaim()
        digest: Digest | None = None
        created = False
        if resend_uncertain:
            digest = self.storage.uncertain_digest()
            if digest is not None:
                again = self.storage.resend_uncertain(digest.id)
                log.warning(
                    "digest %d: sending %d uncertain deliveries again", digest.number, again
                )
        if digest is None and fire is not None:
            digest = self.storage.digest_for_fire(fire)
        if digest is None:
            digest = self.storage.unfinished_digest()
        if digest is None:
            if not create:
                return SendReport(digest_id=None, reason="no digest is being sent")
            plan = self.plan_digest(force=force)
            if not plan.articles:
                lookback = self.config.digest.lookback_hours
                reason = (
                    "no new articles since the last digest"
                    if not plan.first
                    else f"no articles published in the last {lookback:g} h"
                )
                return SendReport(digest_id=None, reason=reason)
            self._take_note_file()
            digest, created = self._create_digest(plan, fire)
        if created:
            self._archive_quietly(digest)

        counts = self.storage.digest_counts(digest.id)
        if on_start is not None:
            on_start(digest, counts)
        ledger = StorageLedger(
            self.storage,
            self.node,
            digest,
            self.recipient_values,
            backend,
            resend_uncertain=resend_uncertain,
        )
        sent = failed = uncertain = 0
        stopped: str | None = None
        content = self._content(digest)
        waited = False
        while True:
            outcome = backend.send(
                content,
                ledger,
                progress=progress,
                stopping=self.node.stopping,
                stop_timeout=self.config.schedule.stop_timeout_seconds,
            )
            sent, failed = sent + outcome.sent, failed + outcome.failed
            uncertain += outcome.uncertain
            if outcome.stopped is not None:
                stopped = str(outcome.stopped)
            if stopped or outcome.interrupted or not wait_for_others:
                break
            holders = self.storage.lease_holders(digest.id)
            if not holders:
                break
            # Said once at WARNING: a send that seems to hang should say what it waits for.
            (log.info if waited else log.warning)(
                "digest %d: waiting for %d deliveries leased by %s (they finish, or their "
                "lease runs out and this node takes them back)",
                digest.number,
                sum(h.recipients for h in holders),
                ", ".join(h.node for h in holders),
            )
            waited = True
            if self.node.stopping.wait(min(5.0, max(0.5, self.node.lease.total_seconds() / 4))):
                break
            uncertain += self._reclaim().uncertain
        self.storage.finish_digest(digest.id, clock.now())
        after = self.storage.digest_counts(digest.id)
        if after.uncertain:
            log.warning(
                "digest %d: %d deliveries are uncertain (their answer was lost); "
                "`newsletter send --resend-uncertain` sends them again",
                digest.number,
                after.uncertain,
            )
        return SendReport(
            digest_id=digest.id,
            created=created,
            sent=sent,
            failed=failed,
            skipped=ledger.skipped,
            uncertain=uncertain + reclaimed.uncertain + ledger.uncertain_count,
            pending=after.pending,
            articles=len(digest.article_ids),
            stopped=stopped,
            interrupted=self.node.stopping.is_set(),
            number=digest.number,
            counts=after,
        )

    def _create_digest(self, plan: DigestPlan, fire: str | None) -> tuple[Digest, bool]:
        """Render and store the next digest, numbered after the last one. Another node that
        created that number (or that fire) first wins: its digest is returned, not created."""
        for attempt in range(_NOTE_ATTEMPTS):
            try:
                digest, created, shown = self._try_create_digest(plan, fire)
                break
            except NoteChanged:
                # `newsletter note` ran while this digest was rendered: render it again.
                if attempt == _NOTE_ATTEMPTS - 1:
                    raise
        if created:
            log.info("digest %d created: %d articles", digest.number, shown)
        else:
            log.info("digest %d was created by another node; joining it", digest.number)
        return digest, created

    def _try_create_digest(
        self, plan: DigestPlan, fire: str | None, *, single: bool = False
    ) -> tuple[Digest, bool, int]:
        """One attempt of ``_create_digest``; also returns how many articles it shows. Raises
        ``NoteChanged`` when the waiting note changed while the digest was rendered. A
        ``single`` (per-item) mail neither shows nor takes the note."""
        now = clock.now()
        # The uid is made first so that the digest can link to its own archive page.
        uid = new_digest_uid()
        note = None if single else self.storage.pending_note()
        rendered = self.renderer.render(
            plan.articles,
            now=now,
            more=plan.more,
            archive_url=archive.page_url(self.config.newsletter, now, uid),
            note=self.note_html(note.body) if note is not None else "",
            single=single,
        )
        content = self._content_of(0, uid, rendered.subject, rendered.html, rendered.text)
        digest, created = self.storage.create_digest(
            number=plan.number,
            uid=uid,
            subject=rendered.subject,
            preheader=rendered.preheader,
            html=rendered.html,
            text=rendered.text,
            # Only what the digest shows: articles left out for size are in its "more".
            article_ids=[a.id for a in rendered.articles],
            covered_ids=plan.covered,
            now=now,
            batch_size=self.backend.batch_size_for(PreparedContent(content)),
            fire=fire,
            # Taken in the digest's own transaction: shown once, never lost.
            note_id=note.id if note is not None else None,
        )
        return digest, created, len(rendered.articles)

    # --- one mail per item ----------------------------------------------------------------------

    def send_items(
        self,
        *,
        create: bool = True,
        wait_for_others: bool = False,
        progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
        on_start: Callable[[Digest, DigestCounts], None] | None = None,
    ) -> list[SendReport]:
        """``[digest] mode = "per_item"``: deliver every unfinished mail, then create and
        deliver a mail per new article (``rules.next_item_mail``), one after the other. Each is
        a digest of its own, made by ``Storage.create_digest``: so it takes its article in the
        transaction that creates it, is numbered after the last, and is delivered under the
        same ledger, leases and exactly-once rules as any digest, whatever node makes or joins
        it. A single-item mail is made under the fire ``item:<article id>`` (unique), so two
        nodes racing for it make it once.

        Stops at a mail that is still being sent by other nodes (unless ``wait_for_others``)
        or when this node is stopping: a later call goes on. One report per mail this call
        worked on, oldest first."""
        reports: list[SendReport] = []
        made: int | None = None  # the mail this call created, if it did
        while not self.stopping.is_set():
            report = self.send_digest(
                create=False, wait_for_others=wait_for_others, progress=progress, on_start=on_start
            )
            if report.digest_id is not None:
                reports.append(replace(report, created=report.digest_id == made))
                unfinished = self.storage.unfinished_digest()
                if (
                    report.stopped
                    or report.interrupted
                    or (unfinished is not None and unfinished.id == report.digest_id)
                ):
                    break  # not done here: other nodes hold it, or this node stops
                continue
            if not create:
                break
            mail = self._create_item_mail()
            if mail is None:
                break
            made = mail[0].id if mail[1] else None
        return reports

    def _create_item_mail(self) -> tuple[Digest, bool] | None:
        """Create the next per-item mail (or roll-up digest), or join the one another node
        created first: (the mail, whether this call created it). None when there is nothing
        new."""
        planned = self._plan_item_mail()
        if planned is None:
            return None
        plan, single = planned
        if single:
            # The editor's note opens the next *digest*: a single article's mail leaves it
            # waiting (a roll-up digest, made below, takes it).
            article = plan.articles[0].id
            digest, created, _ = self._try_create_digest(plan, f"item:{article}", single=True)
            if created:
                log.info("mail %d created for article %d", digest.number, article)
        else:
            self._take_note_file()
            digest, created = self._create_digest(plan, None)
        if created:
            self._archive_quietly(digest)
        return digest, created

    def _plan_item_mail(self) -> tuple[DigestPlan, bool] | None:
        """The next per-item mail (``rules.next_item_mail``) and whether it is a single
        article's; None when nothing new is eligible."""
        # The last digest before the candidates, as ``plan_digest`` reads them: a node that
        # read an older last digest plans a number that is taken, and loses.
        last = self.storage.last_digest()
        mail = rules.next_item_mail(
            self.storage.undigested_articles(),
            first=last is None,
            lookback_start=clock.now() - timedelta(hours=self.config.digest.lookback_hours),
            per_item_max=self.config.digest.per_item_max,
            max_items=self.config.digest.max_items,
        )
        if mail is None:
            return None
        choice = mail.choice
        plan = DigestPlan(
            articles=tuple(
                archive.with_page_link(self.config.newsletter, a) for a in choice.articles
            ),
            more=choice.more,
            first=last is None,
            number=last.number + 1 if last else 1,
            covered=choice.covered,
        )
        return plan, mail.single

    def _reclaim(self) -> Reclaimed:
        """Take back dead nodes' batches; a digest that was waiting only for them may be
        finished now."""
        reclaimed = reclaim_expired(self.storage, self.backend)
        for digest_id in reclaimed.digests:
            self.storage.finish_digest(digest_id, clock.now())
        return reclaimed

    def resume_sending(self) -> SendReport | None:
        """Join the unfinished digest, if there is one with work left (the scheduler calls
        this on every wake-up, so a send interrupted anywhere goes on at once). Also takes
        back the batches of nodes that died. None when there was nothing to do.

        Every node repeats this on each wake-up, so it counts batches, not deliveries."""
        digest = self.storage.unfinished_digest()
        if digest is None:
            return None
        pending, leased = self.storage.open_batches(digest.id)
        if not pending and leased:
            self._reclaim()  # a dead node's batches come back, pending or uncertain
            pending, leased = self.storage.open_batches(digest.id)
        if not pending:
            self.storage.finish_digest(digest.id, clock.now())  # done unless some are leased
            return None
        return self.send_digest(create=False)

    def _archive_quietly(self, digest: Digest) -> None:
        """Write the archive before delivering, so the "view in your browser" link works when
        the first message arrives. A failure is logged and does not stop the delivery: the
        next ``build_feeds`` (``newsletter feeds``, every scheduled gather) writes it again."""
        try:
            self.write_archive()
            if digest.number == 1:
                # The archive begins: the editors' article pages gain their "Past issues"
                # link now, not at the next gather.
                self._write_article_pages(self._unlinked_articles())
        except (OutputError, RenderError) as e:
            log.error("digest %d: the web archive was not written: %s", digest.number, e)

    def _unlinked_articles(self) -> Iterator[Article]:
        offset = 0
        while batch := self.storage.articles_page(offset, 500):
            yield from (a for a in batch if not a.url)
            offset += len(batch)

    def plan_send(self, *, force: bool = False, resend_uncertain: bool = False) -> SendPlan:
        """What ``send_digest`` would do now, touching nothing (``newsletter send --dry-run``)."""
        backend = self.backend
        digest = self.storage.uncertain_digest() if resend_uncertain else None
        digest = digest or self.storage.unfinished_digest()
        leased = 0
        if digest is not None:
            counts = self.storage.digest_counts(digest.id)
            resend = counts.uncertain if resend_uncertain else 0
            recipients = counts.pending + resend
            leased = counts.leased
            subject: str | None = digest.subject
            articles = len(digest.article_ids)
            sample = self.storage.pending_addresses(digest.id, limit=5)
            uncertain = counts.uncertain - resend
        else:
            single = False
            if self.config.digest.mode == "per_item" and not force:
                # Per-item mode: the next mail, a single article or the roll-up of a burst.
                item = self._plan_item_mail()
                plan = item[0] if item else replace(self.plan_digest(), articles=())
                single = bool(item and item[1])
            else:
                plan = self.plan_digest(force=force)
            if not plan.articles:
                return SendPlan(
                    None,
                    None,
                    0,
                    0,
                    0,
                    backend.describe(),
                    backend.batch_size,
                    0,
                    (),
                    reason="no new articles since the last digest",
                )
            rendered = self.renderer.render(
                plan.articles,
                now=clock.now(),
                more=plan.more,
                note="" if single else self.note_html(self.next_note()),
                single=single,
            )
            subject = rendered.subject
            articles = len(rendered.articles)
            recipients = self.storage.count_subscribers(SubscriberStatus.ACTIVE)
            sample = tuple(
                s.email
                for _, s in zip(
                    range(5),
                    self.storage.iter_subscribers(status=SubscriberStatus.ACTIVE, batch=5),
                    strict=False,
                )
            )
            uncertain = 0
        content = (
            self._content(digest)
            if digest is not None
            else self._content_of(0, "plan", rendered.subject, rendered.html, rendered.text)
        )
        batch_size = backend.batch_size_for(PreparedContent(content))
        batches = -(-recipients // batch_size)
        return SendPlan(
            digest.id if digest else None,
            subject,
            articles,
            recipients,
            uncertain,
            backend.describe(),
            batch_size,
            batches,
            sample,
            leased=leased,
        )

    def send_test(self, address: str) -> DeliveryResult:
        """Send one copy of the next digest (or, with nothing new, of the newest articles) to
        ``address`` through the configured backend, outside the delivery ledger."""
        address = validate_address(address)
        rendered = self.render_next_digest(force=True)
        if rendered is None:
            raise NewsletterError("there are no articles yet; run `newsletter gather` first")
        content = self._content_of(
            0, f"test{secrets.token_hex(6)}", rendered.subject, rendered.html, rendered.text
        )
        recipient = Recipient(0, address, None, self.recipient_values(0, address, None))
        return self.backend.send_one(content, recipient)

    def _content(self, digest: Digest) -> MessageContent:
        return self._content_of(digest.id, digest.uid, digest.subject, digest.html, digest.text)

    def _content_of(
        self, digest_id: int, uid: str, subject: str, html: str, text: str
    ) -> MessageContent:
        nl = self.config.newsletter
        return MessageContent(
            digest_id=digest_id,
            digest_uid=uid,
            # Every backend's subject: a digest stored before subjects were scrubbed may
            # still hold a feed title's control characters.
            subject=clean_line(subject),
            from_addr=nl.sender,
            html=html,
            text=text,
            reply_to=nl.reply_to,
            list_id=self.list_id,
            message_id_domain=nl.domain,
            unsubscribe_mailto=f"mailto:{nl.sender_email}?subject=unsubscribe",
        )

    def recipient_values(self, subscriber_id: int, email: str, name: str | None) -> dict[str, str]:
        """The per-recipient values that fill a digest's placeholders."""
        token = self.tokens.make(subscriber_id, email)
        first = (name or "").split()
        return {
            "email": email,
            "name": name or "",
            "first_name": first[0] if first else self.config.digest.greeting_fallback,
            "unsubscribe_url": f"{self.config.newsletter.site_url}unsubscribe/{token}",
        }

    # --- subscribers -----------------------------------------------------------------------------

    def add_subscriber(
        self, email: str, name: str | None = None, *, force: bool = False
    ) -> tuple[Subscriber, bool]:
        """Add an active subscriber (a pending one is activated). An address that unsubscribed
        is brought back only with ``force``: otherwise a list owner could undo someone's
        unsubscribe by mistake, so it raises ``SubscriberError`` and changes nothing (the
        person can subscribe again through the form, which asks them to confirm)."""
        address = validate_address(email)
        reactivate = (
            (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.PENDING)
            if force
            else (SubscriberStatus.PENDING,)
        )
        subscriber, created = self.storage.add_subscriber(
            address, _clean_name(name), clock.now(), reactivate=reactivate
        )
        if subscriber.status == SubscriberStatus.UNSUBSCRIBED:
            raise SubscriberError(
                "unsubscribed, so not re-activated: they can subscribe again through the "
                "form (and confirm), or add them with --force if they asked you to",
                address=subscriber.email,
            )
        return subscriber, created

    def import_subscribers(
        self,
        path: Path,
        *,
        email_column: str | None = None,
        name_column: str | None = None,
        pending: bool = False,
        dry_run: bool = False,
    ) -> ImportReport:
        """Import a CSV of subscribers: an export from another service (its header recognized,
        or the columns named by ``email_column`` and ``name_column``), or ``email[,name]``
        rows; the delimiter is sniffed (see ``importing``).

        Good rows are imported in one transaction; bad rows are reported by line number.
        Nobody already stored is changed: an import brings back no one who unsubscribed.
        With ``pending``, new addresses are pending with a confirmation mail due (sent as the
        subscribe form's are), not active. With ``dry_run`` nothing is written: the report
        says what the import would do.
        """
        good: list[tuple[str, str | None]] = []
        rejected: list[tuple[int, str, str]] = []
        seen: set[str] = set()
        duplicates = 0
        for row in read_rows(path, email_column=email_column, name_column=name_column):
            if row.problem is not None:
                rejected.append((row.line, row.email, row.problem))
                continue
            try:
                address = validate_address(row.email)
                clean = _clean_name(row.name)
            except SubscriberError as e:
                rejected.append((row.line, row.email, e.message))
                continue
            if address.lower() in seen:
                duplicates += 1
                continue
            seen.add(address.lower())
            good.append((address, clean))
        if dry_run:
            present = len(self.storage.known_emails(seen))
            added = len(good) - present
        else:
            added, present = self.storage.add_subscribers(good, clock.now(), pending=pending)
        return ImportReport(
            added=added,
            already_present=present + duplicates,
            rejected=tuple(rejected),
            status=SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE,
            dry_run=dry_run,
        )

    def remove_subscriber(self, email: str, *, delete: bool = False) -> bool:
        """Unsubscribe (kept as a suppression), or with ``delete`` erase the subscriber."""
        if delete:
            self.storage.delete_subscriber(email.strip())
            return True
        return self.storage.unsubscribe(email.strip(), clock.now())

    def subscribers(self, status: SubscriberStatus | None = None) -> Iterator[Subscriber]:
        return self.storage.iter_subscribers(status=status)

    # --- the web's subscription flow -------------------------------------------------------------

    def request_subscription(self, email: str, name: str | None = None) -> Subscriber | None:
        """Double opt-in, step one: record the request (a new or unsubscribed address becomes
        pending). Returns the subscriber to send a confirmation to now, or None when no mail
        should go: already active, suppressed, or asked for within ``CONFIRM_RESEND``.
        Raises ``SubscriberError`` for an address that is not valid."""
        address = validate_address(email)
        subscriber, send = self.storage.request_subscription(
            address, _clean_name(name), clock.now(), resend_after=CONFIRM_RESEND
        )
        return subscriber if send else None

    def confirmation_url(self, subscriber: Subscriber) -> str:
        token = self.confirm_tokens.make(subscriber.id, subscriber.email)
        return f"{self.config.newsletter.site_url}confirm/{token}"

    def send_confirmation(
        self, subscriber: Subscriber, *, subject: str, html: str, text: str
    ) -> DeliveryResult:
        """Send the confirmation mail (bodies written by the caller, with the confirmation URL
        in them) through the configured backend, outside the delivery ledger. It carries the
        subscriber's unsubscribe link too: "not me" is one click away."""
        content = self._content_of(0, f"confirm{secrets.token_hex(6)}", subject, html, text)
        values = self.recipient_values(subscriber.id, subscriber.email, subscriber.name)
        recipient = Recipient(subscriber.id, subscriber.email, subscriber.name, values)
        return self.backend.send_one(content, recipient)

    def subscriber_for_confirmation(self, token: str) -> Subscriber:
        """The subscriber a confirmation token names, changing nothing (the page with the
        button, which link scanners may fetch). Raises ``TokenExpired``, or ``TokenError``."""
        subscriber_id, tag = self.confirm_tokens.verify(token)
        subscriber = self.storage.get_subscriber_by_id(subscriber_id)
        if subscriber is None or not self.confirm_tokens.tag_matches(tag, subscriber.email):
            raise TokenError("this confirmation link is not valid")
        return subscriber

    def purge_pending(self) -> int:
        """Forget addresses that asked to subscribe more than ``[web] purge_pending_days``
        ago and never confirmed (``Storage.purge_pending``). Returns how many were changed."""
        days = self.config.web.purge_pending_days
        purged = self.storage.purge_pending(clock.now() - timedelta(days=days))
        if purged:
            log.info(
                "purged %d unconfirmed subscription request(s) older than %g days", purged, days
            )
        return purged

    def confirm_subscription(self, token: str) -> Subscriber:
        """Double opt-in, step two: activate the pending subscriber the token names. Idempotent.

        Returns the subscriber afterwards: ACTIVE, or the status that stopped it (unsubscribed
        or suppressed since). Raises ``TokenExpired``, or ``TokenError`` for a bad token.
        """
        subscriber = self.subscriber_for_confirmation(token)
        confirmed = self.storage.confirm_subscriber(subscriber.id, clock.now())
        if confirmed is None:  # erased in between
            raise TokenError("this confirmation link is not valid")
        return confirmed

    def subscriber_for_unsubscribe(self, token: str) -> Subscriber:
        """The subscriber an unsubscribe token names, checked against the stored address.
        Raises ``TokenError``."""
        subscriber_id, _ = self.tokens.verify(token)
        subscriber = self.storage.get_subscriber_by_id(subscriber_id)
        if subscriber is None or not self.tokens.matches(token, subscriber.email):
            raise TokenError("this unsubscribe link is not valid")
        return subscriber

    def unsubscribe_by_token(self, token: str) -> Subscriber:
        """Unsubscribe whoever ``token`` names; committed before it returns. Idempotent.
        Raises ``TokenError``."""
        subscriber = self.subscriber_for_unsubscribe(token)
        after = self.storage.unsubscribe_id(subscriber.id, clock.now())
        if after is None:  # erased in between
            raise TokenError("this unsubscribe link is not valid")
        return after

    def suppress(self, email: str, status: SubscriberStatus, reason: str | None = None) -> bool:
        """Suppress a known address for good after a hard bounce or a spam complaint
        (``status`` BOUNCED or COMPLAINED). False when unknown or already suppressed."""
        return self.storage.suppress(email.strip(), status, reason, clock.now())

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> StatusReport:
        """Sources, the digest being sent (else the last one) with its totals across nodes and
        who holds its batches, the live nodes, subscribers."""
        digest = self.storage.unfinished_digest() or self.storage.last_digest()
        lease = timedelta(seconds=self.config.schedule.lease_seconds)
        return StatusReport(
            sources=tuple(self.storage.source_states()),
            configured_sources=tuple(c.name for c in self.config.sources if c.enabled),
            last_digest=digest,
            last_digest_counts=self.storage.digest_counts(digest.id) if digest else None,
            subscribers={s: self.storage.count_subscribers(s) for s in SubscriberStatus},
            articles=self.storage.count_articles(),
            leases=tuple(self.storage.lease_holders(digest.id)) if digest else (),
            nodes=tuple(self.storage.nodes_seen_since(clock.now() - 2 * lease)),
            uncertain_digest=self.storage.uncertain_digest(),
        )


# Control characters (C0, DEL, C1) and lone surrogates, left in a name once whitespace is
# folded. A name goes into the To: header and the greeting: a NUL or an ESC there makes every
# delivery to that subscriber fail, long after the form or the import said yes.
_NAME_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@contextmanager
def _writing(what: str, folder: Path) -> Iterator[None]:
    """Turn a failed file write into ``OutputError`` naming the path (the folder when the
    operating system does not say which file) and its reason ("No space left on device")."""
    try:
        yield
    except OSError as e:
        raise OutputError(what, path=e.filename or folder, reason=os_reason(e)) from e


def _clean_name(name: str | None) -> str | None:
    """A subscriber's name with its whitespace folded (line breaks included: a name ends up in
    the To: header, and must stay one header). Raises ``SubscriberError`` for a name with any
    other control character, or with a lone surrogate (no encoder would take it)."""
    if name is None:
        return None
    cleaned = " ".join(name.split())
    bad = _NAME_CONTROL.search(cleaned)
    if bad is not None:
        shown = bad.group().encode("unicode_escape").decode("ascii")
        raise SubscriberError(f"a name must not contain control characters (found {shown})")
    return cleaned or None
