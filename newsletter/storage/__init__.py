"""The ``Storage`` facade: the only code that writes SQL. No business rules live here.

Each public method is one transaction. Methods that a crash could interrupt halfway (gathering a
source, creating a digest, claiming a batch of deliveries) do all their writes in that one
transaction, so a rerun finds either everything or nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from newsletter.exceptions import StorageError, SubscriberError
from newsletter.storage import schema as s
from newsletter.types import (
    Article,
    ArticleData,
    DeliveryResult,
    DeliveryStatus,
    Digest,
    DigestCounts,
    DigestStatus,
    FetchResult,
    Recipient,
    SourceState,
    Subscriber,
    SubscriberStatus,
)

log = logging.getLogger(__name__)

__all__ = ["Storage"]

# Statuses that receive mail (or are about to: pending is waiting for its confirmation).
_RECEIVING = (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
# Statuses an admin's `subscribers add` may bring back; suppressed addresses stay suppressed.
_REACTIVATABLE = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.PENDING)
_SUPPRESSED = (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)

# Namespace for article uids: uuid5(namespace, source + "\n" + key) never changes for an article.
ARTICLE_NAMESPACE = uuid.UUID("6f1b4f6e-3c55-4f43-9a59-5d2b8c0f7a11")


def new_digest_uid() -> str:
    """A fresh public id for a digest: random, URL- and Message-ID-safe."""
    return secrets.token_hex(8)


def article_uid(source: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(ARTICLE_NAMESPACE, source + chr(10) + key)}"


def _content_hash(a: ArticleData) -> str:
    payload = json.dumps(
        [
            a.title,
            a.url,
            a.author,
            a.published and a.published.isoformat(),
            a.updated and a.updated.isoformat(),
            a.summary,
            a.content,
            list(a.tags),
            a.image_url,
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Storage:
    """Open (and migrate) the database at ``url``. Raises ``StorageError`` when it cannot."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url)
            if self.engine.dialect.name == "sqlite":
                _configure_sqlite(self.engine)
            with self.engine.begin() as conn:
                before, after = s.migrate(conn)
        except (SQLAlchemyError, RuntimeError) as e:
            raise StorageError(f"cannot open database {_safe_url(url)}: {e}") from e
        if before != after:
            log.info("database %s: schema version %d -> %d", _safe_url(url), before, after)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {e}") from e

    # --- meta ----------------------------------------------------------------------------------

    def get_or_create_meta(self, key: str, factory: Any) -> str:
        """A value kept in the database, created once by ``factory()`` (e.g. a generated secret)."""
        with self._tx() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).first()
            if row is not None:
                return str(row.value)
            value = str(factory())
            conn.execute(insert(s.meta).values(key=key, value=value))
            return value

    # --- sources ---------------------------------------------------------------------------------

    def sync_source(self, name: str, configured_url: str | None) -> SourceState:
        """Make sure a row exists; a changed configured URL forgets redirects and validators."""
        with self._tx() as conn:
            row = conn.execute(select(s.sources).where(s.sources.c.name == name)).first()
            if row is None:
                conn.execute(
                    insert(s.sources).values(
                        name=name, configured_url=configured_url, url=configured_url, error_count=0
                    )
                )
            elif row.configured_url != configured_url:
                conn.execute(
                    update(s.sources)
                    .where(s.sources.c.name == name)
                    .values(
                        configured_url=configured_url,
                        url=configured_url,
                        etag=None,
                        last_modified=None,
                    )
                )
            row = conn.execute(select(s.sources).where(s.sources.c.name == name)).one()
            return _source_state(row)

    def source_states(self) -> list[SourceState]:
        with self._tx() as conn:
            rows = conn.execute(select(s.sources).order_by(s.sources.c.name)).all()
        return [_source_state(r) for r in rows]

    def store_fetch(
        self,
        name: str,
        result: FetchResult,
        articles: Sequence[ArticleData],
        now: datetime,
        *,
        warning: str | None = None,
    ) -> tuple[int, int, int]:
        """Store a successful fetch: upsert its articles and the source's state, atomically.

        Returns (new, updated, unchanged). An article seen again is updated in place when its
        content changed and left alone otherwise; it is never duplicated.
        """
        new = updated = unchanged = 0
        with self._tx() as conn:
            state = conn.execute(select(s.sources).where(s.sources.c.name == name)).one()
            backfill = state.last_success is None
            for a in articles:
                digest = _content_hash(a)
                row = conn.execute(
                    select(
                        s.articles.c.id,
                        s.articles.c.content_hash,
                        s.articles.c.first_seen,
                        s.articles.c.published,
                    ).where(s.articles.c.source == name, s.articles.c.key == a.key)
                ).first()
                if row is None:
                    # No date, or one in the future: the time we first saw it is the honest one.
                    published = a.published if a.published and a.published <= now else now
                    conn.execute(
                        insert(s.articles).values(
                            uid=article_uid(name, a.key),
                            source=name,
                            key=a.key,
                            url=a.url,
                            title=a.title,
                            author=a.author,
                            published=published,
                            updated=max(a.updated or published, published),
                            first_seen=now,
                            summary=a.summary,
                            content=a.content,
                            tags=json.dumps(list(a.tags)),
                            image_url=a.image_url,
                            content_hash=digest,
                            backfill=backfill,
                        )
                    )
                    new += 1
                elif row.content_hash != digest:
                    published = a.published if a.published and a.published <= now else row.published
                    changed = a.updated if a.updated and a.updated <= now else now
                    conn.execute(
                        update(s.articles)
                        .where(s.articles.c.id == row.id)
                        .values(
                            url=a.url,
                            title=a.title,
                            author=a.author,
                            published=published,
                            updated=max(changed, published),
                            summary=a.summary,
                            content=a.content,
                            tags=json.dumps(list(a.tags)),
                            image_url=a.image_url,
                            content_hash=digest,
                        )
                    )
                    updated += 1
                else:
                    unchanged += 1
            values: dict[str, Any] = dict(
                last_fetched=now, last_success=now, last_error=None, error_count=0, warning=warning
            )
            if not result.not_modified:
                values.update(etag=result.etag, last_modified=result.last_modified)
            if result.permanent_url:
                values["url"] = result.permanent_url
            conn.execute(update(s.sources).where(s.sources.c.name == name).values(**values))
        return new, updated, unchanged

    def store_fetch_error(self, name: str, error: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                update(s.sources)
                .where(s.sources.c.name == name)
                .values(last_fetched=now, last_error=error, error_count=s.sources.c.error_count + 1)
            )

    # --- articles --------------------------------------------------------------------------------

    def recent_articles(self, limit: int) -> list[Article]:
        """The newest ``limit`` articles, newest first (ties broken by id, so order is stable)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(s.articles)
                .order_by(s.articles.c.published.desc(), s.articles.c.id.desc())
                .limit(limit)
            ).all()
        return [_article(r) for r in rows]

    def articles_page(self, offset: int, limit: int) -> list[Article]:
        """``limit`` articles from ``offset``, in the order they arrived, oldest first.

        Arrival order is first-seen time, then publication time (one fetch stores many
        articles at once), then id. New articles always sort after the ones stored before
        them, so a page of this order never changes its members when more arrive: what
        ``render.feeds`` needs for archive pages that stay put (RFC 5005).
        """
        a = s.articles.c
        with self._tx() as conn:
            rows = conn.execute(
                select(s.articles)
                .order_by(a.first_seen, a.published, a.id)
                .offset(offset)
                .limit(limit)
            ).all()
        return [_article(r) for r in rows]

    def digest_candidates(
        self, *, gathered_after: datetime | None, published_after: datetime, limit: int | None
    ) -> list[Article]:
        """Articles in no digest yet, gathered after the last digest, newest first.

        On the first digest (``gathered_after`` is None) only articles published after
        ``published_after`` count; later, a source's back catalogue (found on its first fetch)
        is held to the same look-back, while everything else gathered since counts.
        """
        in_digest = (
            select(s.digest_articles.c.article_id)
            .where(s.digest_articles.c.article_id == s.articles.c.id)
            .exists()
        )
        recent = s.articles.c.published >= published_after
        if gathered_after is None:
            cond = recent
        else:
            cond = and_(
                s.articles.c.first_seen > gathered_after,
                or_(s.articles.c.backfill.is_(False), recent),
            )
        query = (
            select(s.articles)
            .where(~in_digest, cond)
            .order_by(s.articles.c.published.desc(), s.articles.c.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [_article(r) for r in rows]

    def count_articles(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(s.articles)).scalar_one())

    # --- subscribers -----------------------------------------------------------------------------

    def add_subscriber(
        self, email: str, name: str | None, now: datetime, *, reactivate: bool = True
    ) -> tuple[Subscriber, bool]:
        """Add (with ``reactivate``, re-activate) a subscriber. Returns (subscriber, created).

        Re-activating brings back an unsubscribed or pending address, never a suppressed one
        (bounced or complained).
        """
        email = email.lower()
        with self._tx() as conn:
            row = conn.execute(select(s.subscribers).where(s.subscribers.c.email == email)).first()
            if row is None:
                conn.execute(
                    insert(s.subscribers).values(
                        email=email, name=name, status=SubscriberStatus.ACTIVE, created_at=now
                    )
                )
                created = True
            else:
                created = False
                if reactivate and row.status in _REACTIVATABLE:
                    conn.execute(
                        update(s.subscribers)
                        .where(s.subscribers.c.id == row.id)
                        .values(
                            status=SubscriberStatus.ACTIVE,
                            unsubscribed_at=None,
                            name=name or row.name,
                        )
                    )
            row = conn.execute(select(s.subscribers).where(s.subscribers.c.email == email)).one()
        return _subscriber(row), created

    def add_subscribers(
        self, rows: Iterable[tuple[str, str | None]], now: datetime
    ) -> tuple[int, int]:
        """Bulk add in one transaction, never re-activating anyone. Returns (added, present).

        Rows go in chunks of ``chunk`` with ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL
        both have it), so a million-row import is a few thousand statements, not a million.
        """
        total = present = 0
        count = select(func.count()).select_from(s.subscribers)
        with self._tx() as conn:
            before = int(conn.execute(count).scalar_one())
            for chunk in _chunks(rows, 1000):
                values = [
                    {
                        "email": e.lower(),
                        "name": n,
                        "status": SubscriberStatus.ACTIVE,
                        "created_at": now,
                    }
                    for e, n in chunk
                ]
                total += len(values)
                conn.execute(self._insert_ignore(s.subscribers, ["email"]), values)
            added = int(conn.execute(count).scalar_one()) - before
        present = total - added
        return added, present

    def _insert_ignore(self, table: Table, keys: list[str]) -> Any:
        """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for the engine's dialect."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)

    def get_subscriber(self, email: str) -> Subscriber | None:
        with self._tx() as conn:
            row = conn.execute(
                select(s.subscribers).where(s.subscribers.c.email == email.lower())
            ).first()
        return _subscriber(row) if row is not None else None

    def iter_subscribers(
        self, *, status: SubscriberStatus | None = None, batch: int = 1000
    ) -> Iterator[Subscriber]:
        """Stream subscribers in id order, ``batch`` rows per query (keyset pagination)."""
        last = 0
        while True:
            query = select(s.subscribers).where(s.subscribers.c.id > last)
            if status is not None:
                query = query.where(s.subscribers.c.status == status)
            with self._tx() as conn:
                rows = conn.execute(query.order_by(s.subscribers.c.id).limit(batch)).all()
            if not rows:
                return
            for row in rows:
                yield _subscriber(row)
            last = rows[-1].id

    def count_subscribers(self, status: SubscriberStatus | None = None) -> int:
        query = select(func.count()).select_from(s.subscribers)
        if status is not None:
            query = query.where(s.subscribers.c.status == status)
        with self._tx() as conn:
            return int(conn.execute(query).scalar_one())

    def unsubscribe(self, email: str, now: datetime) -> bool:
        """Mark an active or pending subscriber unsubscribed (kept, so an import cannot bring
        them back). False when already gone; raises ``SubscriberError`` when unknown."""
        with self._tx() as conn:
            result = conn.execute(
                update(s.subscribers)
                .where(
                    s.subscribers.c.email == email.lower(),
                    s.subscribers.c.status.in_(_RECEIVING),
                )
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
            )
            if result.rowcount:
                return True
            row = conn.execute(
                select(s.subscribers.c.id).where(s.subscribers.c.email == email.lower())
            ).first()
        if row is None:
            raise SubscriberError("no such subscriber", address=email)
        return False

    def get_subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self._tx() as conn:
            row = conn.execute(
                select(s.subscribers).where(s.subscribers.c.id == subscriber_id)
            ).first()
        return _subscriber(row) if row is not None else None

    def request_subscription(
        self, email: str, name: str | None, now: datetime, *, resend_after: timedelta
    ) -> tuple[Subscriber, bool]:
        """Record a web subscription request, in one transaction. Returns (subscriber, send):
        whether a confirmation mail should go out now.

        A new address is added as pending; an unsubscribed one becomes pending again. A pending
        address gets another confirmation only when the last one was asked for more than
        ``resend_after`` ago, so repeated requests cannot flood a mailbox. Active and
        suppressed addresses are left exactly as they are, and get nothing.
        """
        email = email.lower()
        sub = s.subscribers
        with self._tx() as conn:
            conn.execute(
                self._insert_ignore(sub, ["email"]),
                [
                    {
                        "email": email,
                        "name": name,
                        "status": SubscriberStatus.PENDING,
                        "created_at": now,
                    }
                ],
            )
            # The claim is one conditional UPDATE, so two requests racing for the same address
            # cannot both decide to send.
            claimed = conn.execute(
                update(sub)
                .where(
                    sub.c.email == email,
                    or_(
                        sub.c.status == SubscriberStatus.UNSUBSCRIBED,
                        and_(
                            sub.c.status == SubscriberStatus.PENDING,
                            or_(
                                sub.c.confirm_sent_at.is_(None),
                                sub.c.confirm_sent_at <= now - resend_after,
                            ),
                        ),
                    ),
                )
                .values(
                    status=SubscriberStatus.PENDING,
                    confirm_sent_at=now,
                    name=func.coalesce(literal(name, Text), sub.c.name),
                )
            )
            row = conn.execute(select(sub).where(sub.c.email == email)).one()
        return _subscriber(row), bool(claimed.rowcount)

    def confirm_subscriber(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """Activate a pending subscriber (double opt-in, step two). Returns the subscriber as it
        is afterwards (unchanged when it was not pending), or None when unknown."""
        sub = s.subscribers
        with self._tx() as conn:
            conn.execute(
                update(sub)
                .where(sub.c.id == subscriber_id, sub.c.status == SubscriberStatus.PENDING)
                .values(status=SubscriberStatus.ACTIVE, confirmed_at=now, unsubscribed_at=None)
            )
            row = conn.execute(select(sub).where(sub.c.id == subscriber_id)).first()
        return _subscriber(row) if row is not None else None

    def unsubscribe_id(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """``unsubscribe`` by id (the web's unsubscribe links). Committed before it returns.
        Returns the subscriber as it is afterwards, or None when unknown."""
        sub = s.subscribers
        with self._tx() as conn:
            conn.execute(
                update(sub)
                .where(sub.c.id == subscriber_id, sub.c.status.in_(_RECEIVING))
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
            )
            row = conn.execute(select(sub).where(sub.c.id == subscriber_id)).first()
        return _subscriber(row) if row is not None else None

    def suppress(
        self, email: str, status: SubscriberStatus, reason: str | None, now: datetime
    ) -> bool:
        """Suppress a known address for good (``status`` BOUNCED or COMPLAINED), whatever its
        status was; the first suppression is kept. True when this call changed it."""
        if status not in _SUPPRESSED:
            raise ValueError(f"{status} is not a suppression")
        sub = s.subscribers
        with self._tx() as conn:
            result = conn.execute(
                update(sub)
                .where(sub.c.email == email.lower(), sub.c.status.not_in(_SUPPRESSED))
                .values(
                    status=status,
                    status_reason=(reason or "")[:1000] or None,
                    unsubscribed_at=func.coalesce(
                        sub.c.unsubscribed_at, literal(now, s.UTCDateTime)
                    ),
                )
            )
        return bool(result.rowcount)

    def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers a query."""
        with self._tx() as conn:
            conn.execute(select(literal(1))).one()

    def delete_subscriber(self, email: str) -> None:
        """Erase a subscriber and their delivery history (a data-protection request)."""
        with self._tx() as conn:
            row = conn.execute(
                select(s.subscribers.c.id).where(s.subscribers.c.email == email.lower())
            ).first()
            if row is None:
                raise SubscriberError("no such subscriber", address=email)
            conn.execute(s.deliveries.delete().where(s.deliveries.c.subscriber_id == row.id))
            conn.execute(s.subscribers.delete().where(s.subscribers.c.id == row.id))

    # --- digests ---------------------------------------------------------------------------------

    def create_digest(
        self,
        *,
        subject: str,
        preheader: str,
        html: str,
        text: str,
        article_ids: Sequence[int],
        now: datetime,
        uid: str | None = None,
    ) -> Digest:
        """Store a rendered digest and freeze its recipient list (every active subscriber now).

        ``uid`` is the digest's public id (random when not given); a caller that needs it
        before the digest exists (for links inside the digest) makes it with ``new_digest_uid``.
        """
        uid = uid or new_digest_uid()
        with self._tx() as conn:
            inserted = conn.execute(
                insert(s.digests).values(
                    uid=uid,
                    created_at=now,
                    subject=subject,
                    preheader=preheader,
                    html=html,
                    text=text,
                    status=DigestStatus.SENDING,
                )
            )
            assert inserted.inserted_primary_key is not None
            digest_id = int(inserted.inserted_primary_key[0])
            if article_ids:
                conn.execute(
                    insert(s.digest_articles),
                    [
                        {"digest_id": digest_id, "article_id": aid, "position": i}
                        for i, aid in enumerate(article_ids)
                    ],
                )
            active = select(
                literal(digest_id),
                s.subscribers.c.id,
                s.subscribers.c.email,
                s.subscribers.c.name,
                literal(DeliveryStatus.PENDING.value),
                literal(now, s.UTCDateTime),
            ).where(s.subscribers.c.status == SubscriberStatus.ACTIVE)
            conn.execute(
                insert(s.deliveries).from_select(
                    ["digest_id", "subscriber_id", "email", "name", "status", "updated_at"], active
                )
            )
        digest = self.get_digest(int(digest_id))
        assert digest is not None
        return digest

    def get_digest(self, digest_id: int) -> Digest | None:
        with self._tx() as conn:
            row = conn.execute(select(s.digests).where(s.digests.c.id == digest_id)).first()
            if row is None:
                return None
            ids = (
                conn.execute(
                    select(s.digest_articles.c.article_id)
                    .where(s.digest_articles.c.digest_id == digest_id)
                    .order_by(s.digest_articles.c.position)
                )
                .scalars()
                .all()
            )
        return _digest(row, tuple(ids))

    def list_digests(self) -> list[Digest]:
        """Every digest, newest first (the web archive lists them all)."""
        with self._tx() as conn:
            rows = conn.execute(select(s.digests).order_by(s.digests.c.id.desc())).all()
            links = conn.execute(
                select(s.digest_articles.c.digest_id, s.digest_articles.c.article_id).order_by(
                    s.digest_articles.c.digest_id, s.digest_articles.c.position
                )
            ).all()
        ids: dict[int, list[int]] = {}
        for link in links:
            ids.setdefault(link.digest_id, []).append(link.article_id)
        return [_digest(row, tuple(ids.get(row.id, ()))) for row in rows]

    def last_digest(self) -> Digest | None:
        with self._tx() as conn:
            row = conn.execute(select(s.digests.c.id).order_by(s.digests.c.id.desc())).first()
        return self.get_digest(row.id) if row is not None else None

    def unfinished_digest(self) -> Digest | None:
        with self._tx() as conn:
            row = conn.execute(
                select(s.digests.c.id)
                .where(s.digests.c.status == DigestStatus.SENDING)
                .order_by(s.digests.c.id)
            ).first()
        return self.get_digest(row.id) if row is not None else None

    def articles_by_id(self, ids: Sequence[int]) -> list[Article]:
        with self._tx() as conn:
            rows = conn.execute(select(s.articles).where(s.articles.c.id.in_(list(ids)))).all()
        by_id = {r.id: _article(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def claim_batch(
        self, digest_id: int, size: int, now: datetime, *, key_prefix: str
    ) -> tuple[str, list[Recipient]] | None:
        """Take up to ``size`` pending deliveries and mark them in flight, in one transaction.

        Returns (batch key, recipients), or None when nothing is pending. A batch that went
        back to pending (released, or re-queued after a crash) is claimed again whole, under
        its old key, before any new batch is formed; a new batch's key is ``key_prefix`` and
        its lowest subscriber id, unique within the digest. Recipients who unsubscribed since
        the digest was created are marked skipped instead. A batch is recorded as in flight
        *before* it is handed to a backend, so a crash between the two leaves it visible as
        uncertain, never silently pending.
        """
        d = s.deliveries
        columns = (d.c.subscriber_id, d.c.email, d.c.name, d.c.batch, s.subscribers.c.status)
        pending = (
            select(*columns)
            .join(s.subscribers, s.subscribers.c.id == d.c.subscriber_id)
            .where(d.c.digest_id == digest_id, d.c.status == DeliveryStatus.PENDING)
        )
        with self._tx() as conn:
            while True:
                old = conn.execute(
                    select(d.c.batch)
                    .where(
                        d.c.digest_id == digest_id,
                        d.c.status == DeliveryStatus.PENDING,
                        d.c.batch.is_not(None),
                    )
                    .order_by(d.c.batch)
                    .limit(1)
                ).first()
                if old is not None:
                    key = str(old.batch)
                    rows = conn.execute(
                        pending.where(d.c.batch == key).order_by(d.c.subscriber_id)
                    ).all()
                else:
                    rows = conn.execute(
                        pending.where(d.c.batch.is_(None)).order_by(d.c.subscriber_id).limit(size)
                    ).all()
                    if not rows:
                        return None
                    key = f"{key_prefix}-{rows[0].subscriber_id}"
                live = [r for r in rows if r.status == SubscriberStatus.ACTIVE]
                gone = [r.subscriber_id for r in rows if r.status != SubscriberStatus.ACTIVE]
                for status, ids in (
                    (DeliveryStatus.INFLIGHT, [r.subscriber_id for r in live]),
                    (DeliveryStatus.SKIPPED, gone),
                ):
                    if ids:
                        conn.execute(
                            update(d)
                            .where(d.c.digest_id == digest_id, d.c.subscriber_id.in_(ids))
                            .values(status=status, batch=key, updated_at=now)
                        )
                if live:
                    recipients = [Recipient(r.subscriber_id, r.email, r.name) for r in live]
                    return key, recipients

    def pending_addresses(self, digest_id: int, *, limit: int) -> tuple[str, ...]:
        with self._tx() as conn:
            rows = conn.execute(
                select(s.deliveries.c.email)
                .where(
                    s.deliveries.c.digest_id == digest_id,
                    s.deliveries.c.status == DeliveryStatus.PENDING,
                )
                .order_by(s.deliveries.c.subscriber_id)
                .limit(limit)
            ).all()
        return tuple(r.email for r in rows)

    def release_batch(self, digest_id: int, key: str, now: datetime) -> int:
        """Put an in-flight batch back to pending (it was certainly not accepted)."""
        with self._tx() as conn:
            result = conn.execute(
                update(s.deliveries)
                .where(
                    s.deliveries.c.digest_id == digest_id,
                    s.deliveries.c.batch == key,
                    s.deliveries.c.status == DeliveryStatus.INFLIGHT,
                )
                .values(status=DeliveryStatus.PENDING, updated_at=now)
            )
        return int(result.rowcount)

    def record_results(
        self, digest_id: int, results: Sequence[DeliveryResult], now: datetime
    ) -> None:
        """Store each recipient's outcome: one executemany for the whole batch."""
        if not results:
            return
        d = s.deliveries
        statement = (
            update(d)
            .where(d.c.digest_id == digest_id, d.c.subscriber_id == bindparam("sid"))
            .values(
                status=bindparam("st"),
                message_id=bindparam("mid"),
                error=bindparam("err"),
                updated_at=now,
            )
        )
        rows = [
            {"sid": r.subscriber_id, "st": r.status.value, "mid": r.message_id, "err": r.error}
            for r in results
        ]
        with self._tx() as conn:
            conn.execute(statement, rows)

    def requeue_inflight(
        self, digest_id: int, now: datetime, *, since: datetime | None = None
    ) -> int:
        """Put in-flight deliveries back to pending (after a crash, when resending is safe);
        with ``since``, only those that went in flight after it. They keep their batch key."""
        d = s.deliveries
        condition = [d.c.digest_id == digest_id, d.c.status == DeliveryStatus.INFLIGHT]
        if since is not None:
            condition.append(d.c.updated_at > since)
        with self._tx() as conn:
            result = conn.execute(
                update(d).where(*condition).values(status=DeliveryStatus.PENDING, updated_at=now)
            )
        return int(result.rowcount)

    def digest_counts(self, digest_id: int) -> DigestCounts:
        with self._tx() as conn:
            rows = conn.execute(
                select(s.deliveries.c.status, func.count())
                .where(s.deliveries.c.digest_id == digest_id)
                .group_by(s.deliveries.c.status)
            ).all()
        return DigestCounts(**{str(status): int(n) for status, n in rows})

    def finish_digest(self, digest_id: int, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                update(s.digests)
                .where(s.digests.c.id == digest_id)
                .values(status=DigestStatus.SENT, sent_at=now)
            )


# --- row mapping ---------------------------------------------------------------------------------


def _chunks(
    rows: Iterable[tuple[str, str | None]], size: int
) -> Iterator[list[tuple[str, str | None]]]:
    chunk: list[tuple[str, str | None]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _source_state(row: Any) -> SourceState:
    return SourceState(
        name=row.name,
        url=row.url,
        etag=row.etag,
        last_modified=row.last_modified,
        last_fetched=row.last_fetched,
        last_success=row.last_success,
        last_error=row.last_error,
        error_count=row.error_count or 0,
        warning=row.warning,
    )


def _article(row: Any) -> Article:
    return Article(
        id=row.id,
        uid=row.uid,
        source=row.source,
        key=row.key,
        title=row.title,
        url=row.url,
        author=row.author,
        published=row.published,
        updated=row.updated,
        first_seen=row.first_seen,
        summary=row.summary,
        content=row.content,
        tags=tuple(json.loads(row.tags)),
        image_url=row.image_url,
    )


def _subscriber(row: Any) -> Subscriber:
    return Subscriber(
        id=row.id,
        email=row.email,
        name=row.name,
        status=SubscriberStatus(row.status),
        created_at=row.created_at,
        unsubscribed_at=row.unsubscribed_at,
    )


def _digest(row: Any, article_ids: tuple[int, ...]) -> Digest:
    return Digest(
        id=row.id,
        uid=row.uid,
        created_at=row.created_at,
        subject=row.subject,
        preheader=row.preheader,
        html=row.html,
        text=row.text,
        article_ids=article_ids,
        status=DigestStatus(row.status),
        sent_at=row.sent_at,
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "<unparseable database URL>"


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and real BEGINs (pysqlite's own are unreliable).

    The BEGIN handling follows SQLAlchemy's documented recipe for "Serializable isolation /
    Savepoints / Transactional DDL" with pysqlite.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
