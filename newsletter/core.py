"""``make_publisher`` wires the parts; ``Publisher`` is the one door the CLI, the scheduler and
the web app all go through.

Owns the order of the pipeline and its rules (what goes into a digest, when one is created,
what counts as sent). Does not own SQL (``storage``), HTTP or parsing (``sources``), templates
(``render``) or wire formats (``mail``).
"""

from __future__ import annotations

import csv
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from zoneinfo import ZoneInfo

import requests

from newsletter import clock
from newsletter.addresses import validate_address
from newsletter.config import Config
from newsletter.exceptions import NewsletterError, RenderError, SubscriberError
from newsletter.gather import gather
from newsletter.mail import make_backend
from newsletter.mail.base import Batch, MailBackend, PreparedContent
from newsletter.render import archive
from newsletter.render.digest import DigestRenderer, RenderedDigest
from newsletter.render.feeds import write_feeds
from newsletter.sources import Source, make_source
from newsletter.storage import Storage, new_digest_uid
from newsletter.tokens import ConfirmTokens, TokenError, UnsubscribeTokens
from newsletter.types import (
    Article,
    DeliveryResult,
    Digest,
    DigestCounts,
    DigestStatus,
    GatherResult,
    ImportReport,
    MessageContent,
    Recipient,
    SendReport,
    SourceState,
    Subscriber,
    SubscriberStatus,
)
from newsletter.websub import ping_hub

log = logging.getLogger(__name__)

SECRET_META_KEY = "generated_secret"  # noqa: S105 - a key name, not a secret
# A pending address is sent another confirmation only this long after the last one.
CONFIRM_RESEND = timedelta(minutes=10)


@dataclass(frozen=True)
class DigestPlan:
    """What the next digest would hold, computed without creating it."""

    articles: tuple[Article, ...]
    more: int  # new articles beyond ``digest.max_items``
    first: bool  # no digest was ever created


@dataclass(frozen=True)
class SendPlan:
    """What a send would do (``send --dry-run``)."""

    digest_id: int | None  # an unfinished digest that would be resumed; None: a new one
    subject: str | None
    articles: int
    recipients: int  # messages that would go out
    uncertain: int  # in flight after a crash, not re-sent without --resend-uncertain
    destination: str  # where they would go: the backend and its endpoint
    batch_size: int
    batches: int
    sample: tuple[str, ...]  # the first few addresses
    reason: str | None = None  # why nothing would be sent


@dataclass(frozen=True)
class StatusReport:
    sources: tuple[SourceState, ...]
    configured_sources: tuple[str, ...]
    last_digest: Digest | None
    last_digest_counts: DigestCounts | None
    subscribers: dict[SubscriberStatus, int]  # every status, zeros included
    articles: int

    @property
    def active_subscribers(self) -> int:
        return self.subscribers[SubscriberStatus.ACTIVE]


def make_publisher(config: Config, *, storage: Storage | None = None) -> Publisher:
    """Open the storage the config names (migrating it) and return a ``Publisher``."""
    return Publisher(config, storage or Storage(config.storage.url))


class Publisher:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage

    def close(self) -> None:
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
    def backend(self) -> MailBackend:
        return make_backend(self.config)

    @cached_property
    def tokens(self) -> UnsubscribeTokens:
        return UnsubscribeTokens(self._secret_value, self.config.newsletter.list_id)

    @cached_property
    def confirm_tokens(self) -> ConfirmTokens:
        return ConfirmTokens(
            self._secret_value,
            self.config.newsletter.list_id,
            max_age=timedelta(hours=self.config.web.confirm_hours),
        )

    @cached_property
    def _secret_value(self) -> str:
        return self._secret()

    def _secret(self) -> str:
        env = self.config.newsletter.secret_env
        value = self.config.secret(env)
        if value:
            return value
        # Without the variable, links would change on every run if we made one up each time;
        # a generated secret kept in the database (never in the repo) keeps them valid.
        log.warning(
            "$%s is not set: using a secret generated and kept in the database; "
            "set $%s to keep unsubscribe links valid across databases",
            env,
            env,
        )
        return self.storage.get_or_create_meta(SECRET_META_KEY, lambda: secrets.token_urlsafe(32))

    # --- gather and feeds ------------------------------------------------------------------------

    def sources(self, session: requests.Session) -> list[Source]:
        tz = ZoneInfo(self.config.newsletter.timezone)
        return [
            make_source(c, session=session, http=self.config.http, timezone=tz)
            for c in self.config.sources
            if c.enabled
        ]

    def gather(
        self, *, progress: Callable[[GatherResult], None] | None = None
    ) -> list[GatherResult]:
        """Fetch every enabled source and store its articles. One result per source."""
        with requests.Session() as session:
            session.headers["User-Agent"] = self.config.http.user_agent
            return gather(self.sources(session), self.storage, progress=progress)

    def build_feeds(self) -> list[Path]:
        """Rewrite the feeds (main, per tag, archive pages) from the stored articles, tell the
        WebSub hub, when one is configured, which current feeds changed, and rewrite the web
        archive of the digests.

        Returns the files (re)written; unchanged files are left untouched. A hub that refuses
        or cannot be reached is logged and does not fail the build.
        """
        storage = self.storage

        def history() -> Iterator[Article]:
            offset = 0
            while batch := storage.articles_page(offset, 500):
                yield from batch
                offset += len(batch)

        feeds = self.config.feeds
        written = write_feeds(history(), self.config.newsletter, feeds)
        if feeds.websub_hub and written.changed:
            ping_hub(
                feeds.websub_hub,
                written.changed,
                user_agent=self.config.http.user_agent,
                timeout=self.config.http.timeout,
            )
        return [*written.paths, *self.write_archive()]

    def write_archive(self) -> list[Path]:
        """Rewrite the web archive (a page per digest and the index) from the stored digests.

        Nothing is written before the first digest. Returns the files (re)written.
        """
        digests = self.storage.list_digests()
        if not digests:
            return []
        return archive.write_archive(
            digests, renderer=self.renderer, output_dir=self.config.feeds.output_dir
        )

    # --- digests ---------------------------------------------------------------------------------

    def plan_digest(self, *, force: bool = False) -> DigestPlan:
        """The articles the next digest would carry (see README, "What goes into a digest")."""
        now = clock.now()
        last = self.storage.last_digest()
        lookback = now - timedelta(hours=self.config.digest.lookback_hours)
        candidates = self.storage.digest_candidates(
            gathered_after=last.created_at if last else None,
            published_after=lookback,
            limit=None,
        )
        if not candidates and force:
            candidates = self.storage.recent_articles(self.config.digest.max_items)
        limit = self.config.digest.max_items
        return DigestPlan(
            articles=tuple(candidates[:limit]),
            more=max(0, len(candidates) - limit),
            first=last is None,
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
        )

    def send_digest(
        self,
        *,
        force: bool = False,
        resend_uncertain: bool = False,
        progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
        on_start: Callable[[Digest, DigestCounts], None] | None = None,
    ) -> SendReport:
        """Create the next digest if there is news (or ``force``), then deliver what is pending.

        Safe to rerun at any point: an unfinished digest is resumed rather than created again,
        and a recipient recorded as sent is never sent again. Deliveries left in flight by a
        crash are re-sent only when the backend is idempotent or ``resend_uncertain`` is given.
        """
        now = clock.now()
        created = False
        digest = self.storage.unfinished_digest()
        if digest is None and resend_uncertain:
            digest = self.storage.last_digest()
            if digest is not None and not self.storage.digest_counts(digest.id).inflight:
                digest = None
        if digest is None:
            plan = self.plan_digest(force=force)
            if not plan.articles:
                lookback = self.config.digest.lookback_hours
                reason = (
                    "no new articles since the last digest"
                    if not plan.first
                    else f"no articles published in the last {lookback:g} h"
                )
                return SendReport(digest_id=None, reason=reason)
            # The uid is made first so that the digest can link to its own archive page.
            uid = new_digest_uid()
            rendered = self.renderer.render(
                plan.articles,
                now=now,
                more=plan.more,
                archive_url=archive.page_url(self.config.newsletter, now, uid),
            )
            digest = self.storage.create_digest(
                subject=rendered.subject,
                preheader=rendered.preheader,
                html=rendered.html,
                text=rendered.text,
                # Only what the digest shows: articles left out for size are in its "more".
                article_ids=[a.id for a in rendered.articles],
                now=now,
                uid=uid,
            )
            created = True
            log.info("digest %d created: %d articles", digest.id, len(rendered.articles))
        self._archive_quietly(digest)

        backend = self.backend
        counts = self.storage.digest_counts(digest.id)
        if counts.inflight and (backend.idempotent or resend_uncertain):
            since = None
            if not resend_uncertain and backend.idempotency_window is not None:
                # Past the provider's memory of the key a re-send would deliver twice.
                since = now - backend.idempotency_window
            requeued = self.storage.requeue_inflight(digest.id, now, since=since)
            if requeued:
                log.warning(
                    "digest %d: re-sending %d deliveries left in flight", digest.id, requeued
                )
            counts = self.storage.digest_counts(digest.id)
        if on_start is not None:
            on_start(digest, counts)

        before = counts
        stopped: str | None = None
        if counts.pending:
            outcome = backend.send(
                self._content(digest), _StorageLedger(self, digest), progress=progress
            )
            stopped = str(outcome.stopped) if outcome.stopped is not None else None
        after = self.storage.digest_counts(digest.id)
        if after.pending == 0 and digest.status != DigestStatus.SENT:
            self.storage.finish_digest(digest.id, clock.now())
        if after.inflight:
            log.warning(
                "digest %d: %d deliveries are uncertain (in flight when a send was interrupted); "
                "`newsletter send --resend-uncertain` sends them again",
                digest.id,
                after.inflight,
            )
        return SendReport(
            digest_id=digest.id,
            created=created,
            sent=after.sent - before.sent,
            failed=after.failed - before.failed,
            skipped=after.skipped - before.skipped,
            uncertain=after.inflight,
            pending=after.pending,
            articles=len(digest.article_ids),
            stopped=stopped,
        )

    def _archive_quietly(self, digest: Digest) -> None:
        """Write the archive before delivering, so the "view in your browser" link works when
        the first message arrives. A failure is logged and does not stop the delivery: the
        next ``build_feeds`` (``newsletter feeds``, every scheduled gather) writes it again."""
        try:
            self.write_archive()
        except (OSError, RenderError) as e:
            log.error("digest %d: the web archive was not written: %s", digest.id, e)

    def plan_send(self, *, force: bool = False, resend_uncertain: bool = False) -> SendPlan:
        """What ``send_digest`` would do now, touching nothing (``newsletter send --dry-run``)."""
        backend = self.backend
        digest = self.storage.unfinished_digest()
        if digest is None and resend_uncertain:
            last = self.storage.last_digest()
            if last is not None and self.storage.digest_counts(last.id).inflight:
                digest = last
        if digest is not None:
            counts = self.storage.digest_counts(digest.id)
            resend = counts.inflight if (backend.idempotent or resend_uncertain) else 0
            recipients = counts.pending + resend
            subject: str | None = digest.subject
            articles = len(digest.article_ids)
            sample = self.storage.pending_addresses(digest.id, limit=5)
            uncertain = counts.inflight - resend
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
                    "no new articles since the last digest",
                )
            rendered = self.renderer.render(plan.articles, now=clock.now(), more=plan.more)
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
            None,
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
            subject=subject,
            from_addr=nl.sender,
            html=html,
            text=text,
            reply_to=nl.reply_to,
            list_id=nl.list_id,
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

    def add_subscriber(self, email: str, name: str | None = None) -> tuple[Subscriber, bool]:
        address = validate_address(email)
        return self.storage.add_subscriber(address, _clean_name(name), clock.now())

    def import_subscribers(self, path: Path) -> ImportReport:
        """Import a CSV of ``email[,name]`` rows (a header row is optional).

        Good rows are imported in one transaction; bad rows are reported by line number.
        Nobody who unsubscribed is brought back by an import.
        """
        good: list[tuple[str, str | None]] = []
        rejected: list[tuple[int, str, str]] = []
        seen: set[str] = set()
        duplicates = 0
        for line, email, name in _read_csv(path):
            try:
                address = validate_address(email)
            except SubscriberError as e:
                rejected.append((line, email, e.message))
                continue
            if address.lower() in seen:
                duplicates += 1
                continue
            seen.add(address.lower())
            good.append((address, _clean_name(name)))
        added, present = self.storage.add_subscribers(good, clock.now())
        return ImportReport(
            added=added, already_present=present + duplicates, rejected=tuple(rejected)
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

    def confirm_subscription(self, token: str) -> Subscriber:
        """Double opt-in, step two: activate the pending subscriber the token names. Idempotent.

        Returns the subscriber afterwards: ACTIVE, or the status that stopped it (unsubscribed
        or suppressed since). Raises ``TokenExpired``, or ``TokenError`` for a bad token.
        """
        subscriber_id, tag = self.confirm_tokens.verify(token)
        subscriber = self.storage.get_subscriber_by_id(subscriber_id)
        if subscriber is None or not self.confirm_tokens.tag_matches(tag, subscriber.email):
            raise TokenError("this confirmation link is not valid")
        confirmed = self.storage.confirm_subscriber(subscriber_id, clock.now())
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
        last = self.storage.last_digest()
        return StatusReport(
            sources=tuple(self.storage.source_states()),
            configured_sources=tuple(c.name for c in self.config.sources if c.enabled),
            last_digest=last,
            last_digest_counts=self.storage.digest_counts(last.id) if last else None,
            subscribers={s: self.storage.count_subscribers(s) for s in SubscriberStatus},
            articles=self.storage.count_articles(),
        )


class _StorageLedger:
    """Binds the mail send loop to Storage: claims mark a batch in flight before it is sent."""

    def __init__(self, publisher: Publisher, digest: Digest) -> None:
        self.publisher = publisher
        self.digest_id = digest.id
        self.key_prefix = f"nl-{digest.uid}"

    def claim(self, size: int) -> Batch | None:
        claimed = self.publisher.storage.claim_batch(
            self.digest_id, size, clock.now(), key_prefix=self.key_prefix
        )
        if claimed is None:
            return None
        key, recipients = claimed
        values = self.publisher.recipient_values
        return Batch(
            key=key,
            recipients=tuple(
                Recipient(
                    r.subscriber_id, r.email, r.name, values(r.subscriber_id, r.email, r.name)
                )
                for r in recipients
            ),
        )

    def record(self, results: Sequence[DeliveryResult]) -> None:
        self.publisher.storage.record_results(self.digest_id, results, clock.now())

    def release(self, batch: Batch) -> None:
        self.publisher.storage.release_batch(self.digest_id, batch.key, clock.now())


def _clean_name(name: str | None) -> str | None:
    if name is None:
        return None
    # A name ends up in the To: header; folding line breaks keeps it one header.
    cleaned = " ".join(name.split())
    return cleaned or None


def _read_csv(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """Yield (line number, email, name) for each data row of a subscribers CSV."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise SubscriberError(f"cannot read {path}: {e.strerror}") from e
    with handle:
        reader = csv.reader(handle)
        first = True
        try:
            for row in reader:
                line = reader.line_num
                if not row or not any(cell.strip() for cell in row):
                    continue
                if first:
                    first = False
                    if row[0].strip().lower() in ("email", "e-mail", "address", "email address"):
                        continue
                name = row[1].strip() if len(row) > 1 and row[1].strip() else None
                yield line, row[0].strip(), name
        except (csv.Error, UnicodeDecodeError) as e:
            raise SubscriberError(
                f"{path}: not a readable CSV file: {e}", line=reader.line_num
            ) from e
