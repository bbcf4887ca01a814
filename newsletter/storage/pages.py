"""The full-text page cache: the article pages fetched for each source's entries.

A source's pages are read whole before its fetch (``cached_pages``, handed to the source in
``SourceState.pages``) and replaced whole, in the transaction that stores the fetch
(``replace_pages``, called by ``store_fetch``), by the pages its entries refer to now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, select

from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.types import CachedPage, Extracted


class PagesMixin(StorageBase):
    def cached_pages(self, source: str) -> dict[str, CachedPage]:
        with self._read() as conn:
            rows = conn.execute(select(s.pages).where(s.pages.c.source == source)).all()
        return {r.url: _page(r) for r in rows}


def replace_pages(
    storage: StorageBase, conn: Connection, source: str, pages: Sequence[CachedPage]
) -> None:
    """Make ``pages`` the source's cached pages, inside the caller's transaction. Another node
    storing the same source at once may insert a row first; its copy is as good as ours."""
    conn.execute(delete(s.pages).where(s.pages.c.source == source))
    for page in pages:
        storage._insert_row(conn, s.pages, ["source", "url"], _row(source, page))


def _row(source: str, page: CachedPage) -> dict[str, Any]:
    article = page.article
    return {
        "source": source,
        "url": page.url,
        "fetched": page.fetched,
        "etag": page.etag,
        "last_modified": page.last_modified,
        "has_article": article is not None,
        "title": article.title if article else None,
        "author": article.author if article else None,
        "published": article.published if article else None,
        "content": article.content_html if article else None,
        "image_url": article.image_url if article else None,
        "image_caption": article.image_caption if article else None,
        "text_length": article.text_length if article else None,
    }


def _page(row: Any) -> CachedPage:
    article = (
        Extracted(
            title=row.title,
            author=row.author,
            published=row.published,
            content_html=row.content or "",
            image_url=row.image_url,
            image_caption=row.image_caption,
            text_length=row.text_length or 0,
        )
        if row.has_article
        else None
    )
    return CachedPage(
        url=row.url,
        fetched=row.fetched,
        etag=row.etag,
        last_modified=row.last_modified,
        article=article,
    )
