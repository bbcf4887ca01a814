"""Frozen data types that cross layers, named for what they are and which way they travel.

Sources produce ``FetchResult`` holding ``EntryData`` (what a source saw, unnormalized);
``gather`` turns each into ``ArticleData`` (normalized, sanitized, ready to store); storage hands
back ``Article`` (stored, with its public id and first-seen time). Subscribers, digests and
deliveries follow the same rule: nothing crosses a layer as a loose dict.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from newsletter.exceptions import SourceError


# --- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceState:
    """What storage remembers of a source between fetches (handed to ``Source.fetch``)."""

    name: str
    url: str | None = None  # effective URL: the configured one, or where a 301/308 sent us
    etag: str | None = None
    last_modified: str | None = None
    last_fetched: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    error_count: int = 0  # consecutive failed fetches
    warning: str | None = None  # last non-fatal problem (e.g. a malformed but readable feed)
    # The article pages fetched for the source's entries (full text), by URL: a read-only
    # snapshot gather takes from storage, so a source sends conditional GETs for them.
    pages: Mapping[str, CachedPage] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Extracted:
    """The article found in a web page (``newsletter.sources.extract``).

    ``content_html`` is sanitized HTML (links absolute, tracking parameters dropped);
    ``text_length`` is the length of its text, in characters. ``published`` is timezone-aware
    (UTC when the page gave a date without an offset). ``image_url`` is the lead image (the
    page's ``og:image``, else its first figure's image); ``image_caption`` is the caption of
    the first figure, when it has one. Any of the metadata may be None.
    """

    title: str | None
    author: str | None
    published: datetime | None
    content_html: str
    image_url: str | None
    image_caption: str | None
    text_length: int


@dataclass(frozen=True)
class CachedPage:
    """An article page as last fetched for a source: its validators, for the next conditional
    GET, and what was extracted from it (None: the page held no article)."""

    url: str
    fetched: datetime
    etag: str | None = None
    last_modified: str | None = None
    article: Extracted | None = None


@dataclass(frozen=True)
class EntryData:
    """One entry as a source saw it, before normalization and sanitizing."""

    title: str
    guid: str | None = None
    url: str | None = None
    author: str | None = None
    published: datetime | None = None  # timezone-aware when known
    updated: datetime | None = None
    summary: str | None = None  # HTML (or plain text, which is valid HTML once escaped)
    content: str | None = None  # HTML
    tags: tuple[str, ...] = ()
    image_url: str | None = None


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one successful fetch. A failed fetch raises ``SourceError`` instead."""

    entries: tuple[EntryData, ...] = ()
    not_modified: bool = False  # HTTP 304 (or unchanged local file): nothing was parsed
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None  # set when a 301/308 moved the source for good
    base_url: str | None = None  # for resolving relative links in the entries
    warning: str | None = None  # a problem that did not stop parsing
    # Problems with single entries ("item <link>: ..."), reported with gather's own.
    problems: tuple[str, ...] = ()
    # The article pages the entries now refer to (full text): storage keeps exactly these for
    # the source. None: the source fetched no pages, and what storage has stays as it is.
    pages: tuple[CachedPage, ...] | None = None


@dataclass(frozen=True)
class ArticleData:
    """A normalized article, ready to store. ``key`` is stable: the guid, else the canonical URL."""

    source: str
    key: str
    title: str
    url: str | None
    author: str | None
    published: datetime | None
    updated: datetime | None
    summary: str  # sanitized HTML
    content: str  # sanitized HTML
    tags: tuple[str, ...] = ()
    image_url: str | None = None


@dataclass(frozen=True)
class StoredArticleState:
    """What gather needs of an article already stored to decide whether it changed."""

    id: int
    key: str
    content_hash: str
    published: datetime


@dataclass(frozen=True)
class ArticleWrite:
    """One article of a fetch as the rules decided to store it (``rules.article_writes``).

    ``previous_hash`` None: a new article, inserted unless another node stored it first.
    Otherwise an update, applied only while the stored hash is still ``previous_hash``.
    """

    data: ArticleData
    published: datetime
    updated: datetime
    content_hash: str
    previous_hash: str | None = None


@dataclass(frozen=True)
class Article:
    """A stored article. ``uid`` is its public id, the same in RSS, Atom and JSON Feed, forever."""

    id: int
    uid: str
    source: str
    key: str
    title: str
    url: str | None
    author: str | None
    published: datetime  # aware; the first-seen time when the source gave none or a future one
    updated: datetime
    first_seen: datetime
    summary: str
    content: str
    tags: tuple[str, ...] = ()
    image_url: str | None = None
    backfill: bool = False  # found on its source's first fetch: back catalogue, not news


@dataclass(frozen=True)
class GatherResult:
    """One source's outcome in a gather run. Errors are values: a run returns one per source."""

    source: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    not_modified: bool = False
    warning: str | None = None
    error: SourceError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --- subscribers -------------------------------------------------------------------------------


class SubscriberStatus(enum.StrEnum):
    """Only ACTIVE subscribers are sent digests.

    PENDING: asked to subscribe on the web, not confirmed yet (double opt-in). BOUNCED and
    COMPLAINED: suppressed for good after a provider reported a hard bounce or a spam
    complaint; neither an import nor a subscribe request brings them back.
    """

    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    PENDING = "pending"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


@dataclass(frozen=True)
class Subscriber:
    id: int
    email: str
    name: str | None
    status: SubscriberStatus
    created_at: datetime
    unsubscribed_at: datetime | None = None


@dataclass(frozen=True)
class ImportReport:
    """What ``subscribers import`` did: counts, and each refused row with its line number."""

    added: int  # with ``dry_run``: would be added
    already_present: int
    rejected: tuple[tuple[int, str, str], ...]  # (line, address as written, reason)
    status: SubscriberStatus = SubscriberStatus.ACTIVE  # of the added ones
    dry_run: bool = False  # nothing was written


# --- digests and delivery ----------------------------------------------------------------------


class DigestStatus(enum.StrEnum):
    SENDING = "sending"  # created, recipients frozen; deliveries may still be pending
    SENT = "sent"  # nothing pending or leased (uncertain ones are reported, not waited for)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not delivered yet; its batch may be leased by a node right now
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # unsubscribed between the digest's creation and its delivery
    # Its batch went out and no answer was recorded (a node died, an answer was lost), on a
    # provider that cannot de-duplicate a re-send: it may or may not have arrived. Re-sent only
    # on request (``send --resend-uncertain``).
    UNCERTAIN = "uncertain"


class BatchStatus(enum.StrEnum):
    """A batch of one digest's deliveries: the unit that nodes claim, lease and record."""

    PENDING = "pending"  # nobody holds it; the next claim takes it
    LEASED = "leased"  # a node holds it until ``lease_until``, extended by its heartbeat
    DONE = "done"  # every recipient's outcome is recorded
    UNCERTAIN = "uncertain"  # sent, unanswered, not safely re-sendable (see DeliveryStatus)


class RunStatus(enum.StrEnum):
    """One scheduled fire of a job (``runs`` rows)."""

    RUNNING = "running"  # claimed by a node; leased like a batch
    DONE = "done"
    FAILED = "failed"  # the job raised; not retried (the next fire is)
    MISSED = "missed"  # found later than ``misfire_grace_seconds``: not run
    COALESCED = "coalesced"  # several fires were due at once; only the latest ran


@dataclass(frozen=True)
class Digest:
    """A digest as stored: rendered and inlined once, with per-recipient placeholders left in."""

    id: int
    uid: str  # random token, part of every Message-ID of this digest
    created_at: datetime
    subject: str
    preheader: str
    html: str  # inlined HTML with placeholders (see ``newsletter.personalize``)
    text: str  # plain text with placeholders
    article_ids: tuple[int, ...]
    status: DigestStatus
    sent_at: datetime | None = None
    number: int = 0  # the issue number: 1, 2, 3, ... (unique)
    fire: str | None = None  # the scheduled fire that created it; None when sent by hand


@dataclass(frozen=True)
class EditorNote:
    """The editor's note waiting to open the next digest: Markdown, taken by one digest."""

    id: int
    body: str  # Markdown
    created_at: datetime
    origin: str | None = None  # "file:..." when read from ``[digest] note_file``


@dataclass(frozen=True)
class DigestCounts:
    """Deliveries of one digest by state, for reports (cluster-wide totals)."""

    pending: int = 0  # waiting for a node
    leased: int = 0  # in a batch a live node holds right now
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.leased + self.sent + self.failed + self.skipped + self.uncertain

    @property
    def open(self) -> int:
        """Deliveries that still need a node: the digest is not done while this is > 0."""
        return self.pending + self.leased


@dataclass(frozen=True)
class LeaseHolder:
    """A node holding leased batches of a digest (``status``)."""

    node: str
    batches: int
    recipients: int
    until: datetime | None


@dataclass(frozen=True)
class ClaimedRecipient:
    """A delivery as a claim found it, with the subscriber's status *now* (skip or send)."""

    subscriber_id: int
    email: str
    name: str | None
    status: SubscriberStatus


@dataclass(frozen=True)
class ClaimedBatch:
    """A batch leased to the claiming node: its key and its still-open deliveries."""

    digest_id: int
    key: str
    recipients: tuple[ClaimedRecipient, ...]
    attempts: int  # how many times it was claimed, this claim included
    first_sent_at: datetime | None = None  # its first claim: a provider's idempotency window


@dataclass(frozen=True)
class ExpiredLease:
    """A batch whose holder stopped renewing its lease (the node died or lost the database)."""

    digest_id: int
    key: str
    owner: str | None
    first_sent_at: datetime | None


@dataclass(frozen=True)
class RunRecord:
    job: str
    fire: str
    scheduled_at: datetime
    status: RunStatus
    node: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    """A process working on the database, as its heartbeat last said."""

    id: str
    host: str
    pid: int
    command: str
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True)
class Recipient:
    """One recipient of one digest, with the values that personalize the shared content."""

    subscriber_id: int
    email: str
    name: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)  # placeholder name -> value


@dataclass(frozen=True)
class MessageContent:
    """What every recipient of a digest shares. Bodies hold placeholders filled per recipient."""

    digest_id: int
    digest_uid: str
    subject: str
    from_addr: str  # "Name <address>"
    html: str
    text: str
    reply_to: str | None = None
    list_id: str | None = None  # RFC 2919 List-Id value
    message_id_domain: str = "localhost"
    unsubscribe_mailto: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome for one recipient, as the backend saw it."""

    subscriber_id: int
    email: str
    status: DeliveryStatus  # SENT or FAILED
    message_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class SendReport:
    """What one ``send_digest`` call did *on this node*; ``counts`` are the digest's totals."""

    digest_id: int | None  # None: there was nothing to send
    created: bool = False  # a new digest was created by this call
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0  # made uncertain by this call (its own lost answers, dead nodes' batches)
    pending: int = 0  # still to send cluster-wide: the send stopped early (see ``stopped``)
    articles: int = 0
    reason: str | None = None  # why nothing was sent
    stopped: str | None = None  # why sending stopped before the end (provider down, bad key)
    interrupted: bool = False  # a signal asked this node to stop; the rest is left to others
    number: int = 0  # the digest's issue number
    counts: DigestCounts | None = None  # the digest's totals afterwards, every node included


@dataclass(frozen=True)
class ClaimedConfirmation:
    """A confirmation mail one ``serve`` process has claimed to send (``claim_confirmations``).

    ``lease_until`` identifies the claim: finishing it succeeds only while the claim is still
    this one (no other process took it over after the lease ran out).
    """

    subscriber: Subscriber
    lease_until: datetime
    attempts: int  # claims of this confirmation so far, this one included
