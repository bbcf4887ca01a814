"""The ``Storage`` seam: what the core may ask of a database, and what each call raises.

Every method is one transaction: it either happens whole or not at all. Every method raises
``StorageError`` when the database cannot be reached or refuses the statement; other
exceptions are named where a method has them. Times passed in are timezone-aware business
times (``clock.now()``); lease times are measured by the storage's own clock (the database
server's on PostgreSQL) so that nodes with different clocks agree.

Implemented by ``SqlStorage`` (SQLite and PostgreSQL through SQLAlchemy Core); the contract
suite ``tests/test_storage_contract.py`` runs against both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Protocol

from newsletter.types import (
    Article,
    ArticleWrite,
    CachedPage,
    ClaimedBatch,
    ClaimedConfirmation,
    DeliveryResult,
    Digest,
    DigestCounts,
    EditorNote,
    ExpiredLease,
    FetchResult,
    LeaseHolder,
    NodeInfo,
    RunRecord,
    RunStatus,
    SourceState,
    StoredArticleState,
    Subscriber,
    SubscriberStatus,
)


class Storage(Protocol):
    url: str

    def close(self) -> None:
        """Release the connections. The object is not used afterwards."""

    def ping(self, *, timeout: float | None = None) -> None:
        """Answer a trivial query in a read-only transaction (which never waits for a writer),
        or raise ``StorageError``; ``timeout`` (seconds) bounds any wait it may still meet."""

    # --- meta ------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """The value kept under ``key``, or None when none was ever stored."""

    def get_or_create_meta(self, key: str, factory: Callable[[], object]) -> str:
        """The value kept under ``key``, stored as ``str(factory())`` the first time. Two
        processes racing on the first call both get the one value that was stored."""

    # --- sources and articles --------------------------------------------------------------------

    def sync_source(self, name: str, configured_url: str | None) -> SourceState:
        """Make sure the source has a row; a changed configured URL forgets its redirects
        and validators. Returns its state."""

    def source_states(self) -> list[SourceState]:
        """Every source ever seen, by name."""

    def stored_articles(self, source: str, keys: Sequence[str]) -> dict[str, StoredArticleState]:
        """What is stored of the source's articles with these keys, by key."""

    def known_fingerprints(
        self, source: str, fingerprints: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which of these (canonical URL, content hash) pairs one of the source's stored
        articles has, whatever its key: how an entry whose id changes on every fetch is
        recognized as an article already stored."""

    def store_fetch(
        self,
        name: str,
        result: FetchResult,
        writes: Sequence[ArticleWrite],
        now: datetime,
        *,
        backfill: bool,
        warning: str | None = None,
    ) -> tuple[int, int]:
        """Store a successful fetch: the decided writes and the source's new state (and, when
        ``result.pages`` is not None, exactly those as its cached pages). Returns
        (inserted, updated). An insert another process made first is skipped, an update whose
        article changed since the decision is skipped; neither is an error."""

    def store_fetch_error(self, name: str, error: str, now: datetime) -> None:
        """Record a failed fetch: its message, and one more failure in a row."""

    def cached_pages(self, source: str) -> dict[str, CachedPage]:
        """The article pages stored for the source's entries (full text), by URL: what the
        last successful fetch's ``FetchResult.pages`` held."""

    def recent_articles(self, limit: int) -> list[Article]:
        """The newest ``limit`` articles by publication date (ties by id), newest first."""

    def articles_page(self, offset: int, limit: int) -> list[Article]:
        """Articles in arrival order (first seen, published, id), oldest first: a page never
        changes its members when more arrive (RFC 5005 archive pages rely on it)."""

    def undigested_articles(self) -> list[Article]:
        """Articles no digest has covered yet (see ``create_digest``'s ``covered_ids``),
        whenever they were gathered: no time or id watermark, so neither a clock that was
        wrong at gathering nor a commit that came late can keep one out."""

    def articles_by_id(self, ids: Sequence[int]) -> list[Article]:
        """The articles with these ids, in that order; unknown ids are left out."""

    def count_articles(self) -> int:
        """How many articles are stored."""

    def content_version(self) -> str:
        """A value that changes whenever what the feeds and the archive are made of changes
        (an article stored or edited, a digest created): a node compares it to rebuild its
        own copy of the feeds only when needed."""

    # --- subscribers -----------------------------------------------------------------------------

    def add_subscriber(
        self,
        email: str,
        name: str | None,
        now: datetime,
        *,
        reactivate: Collection[SubscriberStatus] = (
            SubscriberStatus.UNSUBSCRIBED,
            SubscriberStatus.PENDING,
        ),
    ) -> tuple[Subscriber, bool]:
        """Add an active subscriber, or activate a known one whose status is in
        ``reactivate`` (unsubscribed or pending; a suppressed one never). Raises ``ValueError``
        for another status. Returns (subscriber, created)."""

    def add_subscribers(
        self, rows: Iterable[tuple[str, str | None]], now: datetime, *, pending: bool = False
    ) -> tuple[int, int]:
        """Bulk add (email, name) rows as active (with ``pending``: pending, confirmation
        due), never re-activating anyone, in one transaction. Returns (added, already
        present)."""

    def known_emails(self, emails: Iterable[str]) -> set[str]:
        """Which of these addresses are stored (lower-cased), whatever their status."""

    def get_subscriber(self, email: str) -> Subscriber | None:
        """By address (case-insensitive)."""

    def get_subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        """By id."""

    def iter_subscribers(
        self, *, status: SubscriberStatus | None = None, batch: int = 1000
    ) -> Iterator[Subscriber]:
        """Stream subscribers in id order, ``batch`` per query, one transaction per query."""

    def count_subscribers(self, status: SubscriberStatus | None = None) -> int:
        """How many, of one status or all."""

    def unsubscribe(self, email: str, now: datetime) -> bool:
        """Mark an active or pending subscriber unsubscribed. False when already gone.
        Raises ``SubscriberError`` for an unknown address."""

    def unsubscribe_id(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """``unsubscribe`` by id; the subscriber afterwards, or None when unknown."""

    def request_subscription(
        self, email: str, name: str | None, now: datetime, *, resend_after: timedelta
    ) -> tuple[Subscriber, bool]:
        """Double opt-in, step one. Returns (subscriber, send a confirmation now): only one of
        several racing requests for an address gets True."""

    def confirm_subscriber(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """Double opt-in, step two: pending becomes active. The subscriber afterwards, or None
        when unknown."""

    def purge_pending(self, requested_before: datetime) -> int:
        """Forget pending addresses last requested before ``requested_before`` (one that had
        unsubscribed or received issues goes back to unsubscribed). Safe to run from several
        processes at once. Returns how many were changed."""

    def suppress(
        self, email: str, status: SubscriberStatus, reason: str | None, now: datetime
    ) -> bool:
        """Suppress an address for good (BOUNCED or COMPLAINED). True when this call changed
        it. Raises ``ValueError`` for another status."""

    def delete_subscriber(self, email: str) -> None:
        """Erase a subscriber and their delivery history. Raises ``SubscriberError`` when
        unknown."""

    # --- digests ---------------------------------------------------------------------------------

    def create_digest(
        self,
        *,
        number: int,
        uid: str,
        subject: str,
        preheader: str,
        html: str,
        text: str,
        article_ids: Sequence[int],
        now: datetime,
        batch_size: int,
        fire: str | None = None,
        covered_ids: Sequence[int] = (),
        note_id: int | None = None,
    ) -> tuple[Digest, bool]:
        """Store digest ``number`` and freeze its recipients (every active subscriber now) in
        batches of ``batch_size``, keyed ``nl-<uid>-<n>``. The articles in ``article_ids`` and
        ``covered_ids`` that no digest covered yet are covered by this one (in no later
        digest's candidates). Returns (digest, created): when another process already created
        that number or that ``fire``, nothing is written and the existing digest is returned
        with False. ``note_id``: the waiting editor's note the digest opens with, taken by it
        in the same transaction; raises ``NoteChanged`` (and stores nothing) when that note is
        no longer the waiting one."""

    def get_digest(self, digest_id: int) -> Digest | None:
        """By id."""

    # --- the editor's note -----------------------------------------------------------------------

    def set_note(self, body: str, now: datetime, *, origin: str | None = None) -> bool:
        """Make ``body`` (Markdown) the note waiting for the next digest, replacing the one
        waiting. With ``origin`` (a note file's identity), nothing happens when a note of
        that origin was ever stored, waiting or taken: returns False."""

    def pending_note(self) -> EditorNote | None:
        """The note waiting for the next digest, if any."""

    def clear_note(self) -> bool:
        """Drop the waiting note. False when there was none."""

    def digest_note(self, digest_id: int) -> EditorNote | None:
        """The note digest ``digest_id`` took, if any."""

    def list_digests(self) -> list[Digest]:
        """Every digest, newest first."""

    def last_digest(self) -> Digest | None:
        """The digest with the highest number."""

    def unfinished_digest(self) -> Digest | None:
        """The oldest digest still sending."""

    def digest_for_fire(self, fire: str) -> Digest | None:
        """The digest a scheduled fire created, if any."""

    def uncertain_digest(self) -> Digest | None:
        """The newest digest with uncertain deliveries."""

    def finish_digest(self, digest_id: int, now: datetime) -> bool:
        """Mark it sent if nothing of it is pending or leased; True when this call did."""

    # --- batches and deliveries ------------------------------------------------------------------

    def claim_batch(self, digest_id: int, owner: str, lease: timedelta) -> ClaimedBatch | None:
        """Lease the next pending batch (in subscriber order) to ``owner`` for ``lease``,
        skipping batches another claim holds; None when no batch is pending. Its recipients
        come with their subscriber status now, for the caller to skip or send."""

    def record_results(
        self,
        digest_id: int,
        key: str,
        owner: str,
        results: Sequence[DeliveryResult],
        now: datetime,
        *,
        final: bool = True,
    ) -> bool:
        """Store recipients' outcomes, and with ``final`` mark the batch done, only while
        ``owner`` still holds it (leased, or uncertain after its own lost answer). False, with
        nothing written, when the lease was lost: another node has the batch now."""

    def release_batch(self, digest_id: int, key: str, owner: str) -> bool:
        """Give a leased batch back as pending, under its key (it was certainly not
        accepted). False when ``owner`` no longer held it."""

    def mark_uncertain(self, digest_id: int, key: str, owner: str) -> int:
        """The batch went out and its answer was lost: mark it and its open deliveries
        uncertain. Returns the deliveries marked (0: ``owner`` no longer held it)."""

    def expired_leases(self, *, limit: int = 100) -> list[ExpiredLease]:
        """Leased batches whose lease ended: their node stopped renewing it."""

    def reclaim_lease(self, lease: ExpiredLease, *, resend: bool) -> int:
        """Take an expired batch back: pending again (``resend``) or uncertain. Returns the
        deliveries moved; 0 when another node reclaimed it first or its lease was renewed."""

    def resend_uncertain(self, digest_id: int) -> int:
        """Make the digest's uncertain deliveries pending again (``send --resend-uncertain``)
        and the digest unfinished. Returns how many."""

    def digest_counts(self, digest_id: int) -> DigestCounts:
        """The digest's deliveries by state, every node included."""

    def open_batches(self, digest_id: int) -> tuple[int, int]:
        """(pending, leased) batches of the digest: cheap, batches not deliveries are
        counted, for the checks every node repeats on each wake-up."""

    def lease_holders(self, digest_id: int) -> list[LeaseHolder]:
        """The nodes holding leased batches of the digest now."""

    def pending_addresses(self, digest_id: int, *, limit: int) -> tuple[str, ...]:
        """The first ``limit`` addresses still to send (``send --dry-run``)."""

    # --- runs, nodes, the run lock ---------------------------------------------------------------

    def claim_run(
        self,
        job: str,
        fire: str,
        scheduled_at: datetime,
        node: str,
        lease: timedelta,
        now: datetime,
    ) -> bool:
        """Record that ``node`` runs this fire, leased for ``lease``. False when the fire has
        a row already: another node runs (or ran, missed, coalesced) it."""

    def take_over_run(
        self, job: str, fire: str, node: str, lease: timedelta, now: datetime
    ) -> bool:
        """Take a running fire whose lease expired (its node died). False otherwise."""

    def record_fire(
        self,
        job: str,
        fire: str,
        scheduled_at: datetime,
        status: RunStatus,
        now: datetime,
        *,
        node: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Record a fire that is not run (MISSED, COALESCED). False when it has a row."""

    def finish_run(
        self,
        job: str,
        fire: str,
        node: str,
        status: RunStatus,
        now: datetime,
        *,
        detail: str | None = None,
    ) -> bool:
        """Close ``node``'s running fire as DONE or FAILED. False when it was taken over."""

    def runs_of(self, job: str, fires: Sequence[str]) -> dict[str, RunRecord]:
        """The rows of these fires of ``job`` that exist, by fire key."""

    def latest_runs(self, job: str, *, limit: int = 1) -> list[RunRecord]:
        """The job's newest fires, by scheduled time, newest first."""

    def stale_runs(self) -> list[RunRecord]:
        """Running fires whose lease expired."""

    def register_node(self, node: NodeInfo) -> None:
        """Announce a node (``run``, ``send``); rows of nodes silent for a day are dropped."""

    def heartbeat(self, node_id: str, lease: timedelta, now: datetime) -> int:
        """Extend every lease the node holds (batches and runs) to ``lease`` from now, and
        note that it is alive. Returns the batches it holds."""

    def expire_leases(self, node_id: str) -> int:
        """End every lease the node holds now (it is exiting): other nodes take its batches
        and runs back at once instead of after the lease. Returns the batches it held."""

    def unregister_node(self, node_id: str) -> None:
        """A node stops."""

    def nodes_seen_since(self, since: datetime) -> list[NodeInfo]:
        """Nodes whose heartbeat was at or after ``since``."""

    def scheduler_lock(self) -> AbstractContextManager[None]:
        """Held while a scheduler runs. On SQLite only one may: entering raises
        ``StorageError`` naming the PID that holds it. PostgreSQL takes any number."""

    # --- what the serve processes share ----------------------------------------------------------

    def take_rate_token(
        self, key: str, *, per_minute: float, burst: float, now: datetime | None = None
    ) -> float:
        """Take a token from ``key``'s bucket (``burst`` tokens, refilled at ``per_minute``),
        atomically across every process on the database. Returns 0.0 when one was taken, else
        the seconds until one will be (> 0; a refused request takes nothing). The key is stored
        as its SHA-256 only. ``now`` defaults to the lease clock (tests pass their own). Raises
        ``ValueError`` for ``per_minute`` <= 0 or ``burst`` < 1."""

    def purge_rate_buckets(self, *, keep_at_most: int, now: datetime | None = None) -> int:
        """Delete the buckets that are full again (a full bucket and none are the same); when
        more than ``keep_at_most`` are left, delete them all. Returns how many went."""

    def remember_webhook_token(
        self, provider: str, token: str, *, expires_at: datetime, now: datetime
    ) -> bool:
        """Remember an accepted webhook token until ``expires_at``, forgetting those expired by
        ``now``. True when it was new; False when it is remembered already (a replay, from
        this process or another). Stored as a SHA-256 of provider and token."""

    def forget_webhook_token(self, provider: str, token: str) -> None:
        """Forget a token (its request failed on our side, so the provider's retry counts)."""

    def claim_confirmations(self, *, limit: int, lease: timedelta) -> list[ClaimedConfirmation]:
        """Claim up to ``limit`` confirmation mails that are due (``request_subscription``
        marked them, or a claim's lease or a retry delay ran out), oldest first, for ``lease``:
        no other claim gets them until it ends. A due mark on an address that is no longer
        pending is cleared, not claimed. Concurrent claims from any process never return the
        same confirmation. Returns [] when nothing is due."""

    def finish_confirmation(
        self, claim: ClaimedConfirmation, *, retry_in: timedelta | None
    ) -> bool:
        """Close a claim: done (``retry_in`` None: sent, or given up), or due again after
        ``retry_in``. False, with nothing written, when the claim is no longer this one (its
        lease ran out and another process claimed it, or a new request replaced it)."""
