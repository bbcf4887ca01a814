"""Sources and articles: what was fetched, from where, and the articles it held.

Writes are conflict-safe: two nodes gathering the same source at once both succeed, and an
article is stored once (``ON CONFLICT DO NOTHING`` on its source and key; an update applies
only while the stored content is the one the decision was made on). What is new or changed,
and which dates an article keeps, is decided by ``rules.article_writes``, not here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.storage.pages import replace_pages
from newsletter.types import Article, ArticleWrite, FetchResult, SourceState, StoredArticleState

# Namespace for article uids: uuid5(namespace, source + "\n" + key) never changes for an article.
ARTICLE_NAMESPACE = uuid.UUID("6f1b4f6e-3c55-4f43-9a59-5d2b8c0f7a11")


def article_uid(source: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(ARTICLE_NAMESPACE, source + chr(10) + key)}"


class ArticlesMixin(StorageBase):
    # --- sources ---------------------------------------------------------------------------------

    def sync_source(self, name: str, configured_url: str | None) -> SourceState:
        src = s.sources
        with self._tx() as conn:
            self._insert_row(
                conn,
                src,
                ["name"],
                {"name": name, "configured_url": configured_url, "url": configured_url},
            )
            conn.execute(
                update(src)
                .where(src.c.name == name, src.c.configured_url.is_distinct_from(configured_url))
                .values(
                    configured_url=configured_url, url=configured_url, etag=None, last_modified=None
                )
            )
            row = conn.execute(select(src).where(src.c.name == name)).one()
        return _source_state(row)

    def source_states(self) -> list[SourceState]:
        with self._read() as conn:
            rows = conn.execute(select(s.sources).order_by(s.sources.c.name)).all()
        return [_source_state(r) for r in rows]

    def stored_articles(self, source: str, keys: Sequence[str]) -> dict[str, StoredArticleState]:
        a = s.articles.c
        found: dict[str, StoredArticleState] = {}
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(
                    select(a.id, a.key, a.content_hash, a.published).where(
                        a.source == source, a.key.in_(list(keys[start : start + 500]))
                    )
                ).all()
                for r in rows:
                    found[r.key] = StoredArticleState(r.id, r.key, r.content_hash, r.published)
        return found

    def known_fingerprints(
        self, source: str, fingerprints: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        a = s.articles.c
        wanted = set(fingerprints)
        hashes = sorted({h for _, h in wanted})
        found: set[tuple[str, str]] = set()
        with self._read() as conn:
            # By hash first (it is nearly unique), then the link is compared here: the
            # (source, key) index narrows the scan to the source's own rows.
            for start in range(0, len(hashes), 500):
                rows = conn.execute(
                    select(a.url, a.content_hash).where(
                        a.source == source, a.content_hash.in_(hashes[start : start + 500])
                    )
                ).all()
                found.update(
                    (r.url, r.content_hash) for r in rows if (r.url, r.content_hash) in wanted
                )
        return found

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
        a = s.articles
        new = updated = 0
        with self._tx() as conn:
            for w in writes:
                d = w.data
                values: dict[str, Any] = {
                    "url": d.url,
                    "title": d.title,
                    "author": d.author,
                    "published": w.published,
                    "updated": w.updated,
                    "summary": d.summary,
                    "content": d.content,
                    "tags": json.dumps(list(d.tags)),
                    "image_url": d.image_url,
                    "content_hash": w.content_hash,
                }
                if w.previous_hash is None:
                    values.update(
                        uid=article_uid(name, d.key),
                        source=name,
                        key=d.key,
                        first_seen=now,
                        backfill=backfill,
                    )
                    # No conflict target: the uid (made from source and key) is unique too, and
                    # a racing insert may hit either index first.
                    new += self._insert_row(conn, a, None, values)
                else:
                    changed = conn.execute(
                        update(a)
                        .where(
                            a.c.source == name,
                            a.c.key == d.key,
                            a.c.content_hash == w.previous_hash,
                        )
                        .values(**values)
                    )
                    updated += changed.rowcount
            state: dict[str, Any] = dict(
                last_fetched=now, last_success=now, last_error=None, error_count=0, warning=warning
            )
            if not result.not_modified:
                state.update(etag=result.etag, last_modified=result.last_modified)
            if result.permanent_url:
                state["url"] = result.permanent_url
            conn.execute(update(s.sources).where(s.sources.c.name == name).values(**state))
            if result.pages is not None:
                replace_pages(self, conn, name, result.pages)
        return new, updated

    def store_fetch_error(self, name: str, error: str, now: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                update(s.sources)
                .where(s.sources.c.name == name)
                .values(last_fetched=now, last_error=error, error_count=s.sources.c.error_count + 1)
            )

    # --- articles --------------------------------------------------------------------------------

    def recent_articles(self, limit: int) -> list[Article]:
        with self._read() as conn:
            rows = conn.execute(
                select(s.articles)
                .order_by(s.articles.c.published.desc(), s.articles.c.id.desc())
                .limit(limit)
            ).all()
        return [_article(r) for r in rows]

    def articles_page(self, offset: int, limit: int) -> list[Article]:
        a = s.articles.c
        with self._read() as conn:
            rows = conn.execute(
                select(s.articles)
                .order_by(a.first_seen, a.published, a.id)
                .offset(offset)
                .limit(limit)
            ).all()
        return [_article(r) for r in rows]

    def undigested_articles(self) -> list[Article]:
        with self._read() as conn:
            rows = conn.execute(
                select(s.articles)
                .where(s.articles.c.covered_by.is_(None))
                .order_by(s.articles.c.id)
            ).all()
        return [_article(r) for r in rows]

    def articles_by_id(self, ids: Sequence[int]) -> list[Article]:
        with self._read() as conn:
            rows = conn.execute(select(s.articles).where(s.articles.c.id.in_(list(ids)))).all()
        by_id = {r.id: _article(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def content_version(self) -> str:
        a, d = s.articles.c, s.digests.c
        with self._read() as conn:
            articles = conn.execute(
                select(func.count(), func.max(a.updated), func.max(a.first_seen))
            ).one()
            digests = conn.execute(select(func.count(), func.max(d.id))).one()
        return repr((tuple(articles), tuple(digests)))

    def count_articles(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(s.articles)).scalar_one())


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
        backfill=bool(row.backfill),
    )
