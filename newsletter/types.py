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

    added: int
    already_present: int
    rejected: tuple[tuple[int, str, str], ...]  # (line, address as written, reason)


# --- digests and delivery ----------------------------------------------------------------------


class DigestStatus(enum.StrEnum):
    SENDING = "sending"  # created, recipients frozen; deliveries may still be pending
    SENT = "sent"  # every delivery is sent, failed or skipped (uncertain ones are reported)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    INFLIGHT = "inflight"  # handed to the backend; the outcome is not recorded yet
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # unsubscribed between the digest's creation and its delivery


@dataclass(frozen=True)
class Digest:
    """A digest as stored: rendered and inlined once, with per-recipient placeholders left in."""

    id: int
    uid: str  # random token, part of every Message-ID of this digest
    created_at: datetime
    subject: str
    preheader: str
    html: str  # inlined HTML with placeholders (see ``render.personalize``)
    text: str  # plain text with placeholders
    article_ids: tuple[int, ...]
    status: DigestStatus
    sent_at: datetime | None = None


@dataclass(frozen=True)
class DigestCounts:
    """Deliveries of one digest by status, for reports."""

    pending: int = 0
    inflight: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.inflight + self.sent + self.failed + self.skipped


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
    """What a ``send_digest`` call did."""

    digest_id: int | None  # None: there was nothing to send
    created: bool = False  # a new digest was created by this call
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0  # left in flight by a crash, on a backend that cannot safely retry
    pending: int = 0  # still to send: the send stopped early (see ``stopped``)
    articles: int = 0
    reason: str | None = None  # why nothing was sent
    stopped: str | None = None  # why sending stopped before the end (provider down, bad key)
