"""Sitemap sources: the pages a sitemap lists (https://www.sitemaps.org/protocol.html), newest
first, each new one read and extracted as an article.

Owns: reading a ``urlset`` (``loc``, ``lastmod``, and a Google News sitemap's ``news:title`` and
``news:publication_date``), a sitemap index (its newest ``max_sitemaps`` sitemaps, one level
deep) and gzip-compressed sitemaps, and choosing the newest links by date. XML is parsed with
defusedxml, which refuses a DTD outright (a sitemap never needs one, and entity expansion is
how an XML bomb works). XML errors are wrapped here, once, into ``SourceError``.

Does not own: robots.txt, the per-host turn, which links are new and reading the articles
(``crawl``), the conditional GET (``fetch``), sanitizing and storing (``newsletter.gather``).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from newsletter.config import SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext
from newsletter.sources.crawl import Crawler, Link, absolute_link, summarize
from newsletter.sources.settings import SitemapSettings
from newsletter.types import FetchResult, SourceState

log = logging.getLogger(__name__)

__all__ = ["SitemapSource", "parse_sitemap"]

_ACCEPT = "application/xml, text/xml;q=0.9, application/gzip;q=0.8, */*;q=0.5"
_GZIP_MAGIC = b"\x1f\x8b"


class _Unreadable(Exception):
    """Raised by the parsing helpers; ``SitemapSource`` turns it into ``SourceError``."""


@dataclass(frozen=True)
class Sitemap:
    """What one sitemap document lists: pages (a ``urlset``) or other sitemaps (an index,
    as ``Link``s whose ``updated`` is their ``lastmod``)."""

    pages: tuple[Link, ...] = ()
    sitemaps: tuple[Link, ...] = ()


class SitemapSource:
    """The sitemap at ``SitemapSettings.url`` and the new pages it lists."""

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        options = config.options
        if not isinstance(options, SitemapSettings):
            raise ConfigError(f"sitemap source {config.name!r} needs SitemapSettings")
        self.name = config.name
        self.location = config.location
        self._options = options
        self._pattern = re.compile(options.link_pattern) if options.link_pattern else None
        self._crawler = Crawler(
            context.session,
            context.http,
            source=config.name,
            timeout=options.timeout,
            max_bytes=options.max_bytes,
            stored=context.stored,
        )
        self._sitemaps = Crawler(
            context.session,
            context.http,
            source=config.name,
            timeout=options.timeout,
            max_bytes=options.max_bytes,
            stored=None,
            accept=_ACCEPT,
        )

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"SitemapSource({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        top = self._sitemaps.get(self._options.url, state)
        if top.not_modified:
            return FetchResult(not_modified=True, permanent_url=top.permanent_url)
        sitemap = self._parse(top.body, top.url)
        problems: list[str] = []
        pages = list(sitemap.pages)
        # An index: its newest sitemaps (by lastmod; those without one last, in index order).
        for child in _newest(sitemap.sitemaps)[: self._options.max_sitemaps]:
            try:
                fetched = self._sitemaps.get(child.url)
                pages.extend(self._parse(fetched.body, fetched.url).pages)
            except SourceError as e:
                problems.append(f"sitemap {child.url}: {e.message}")
        if self._pattern is not None:
            pages = [p for p in pages if self._pattern.search(p.url)]
        chosen, refused = self._crawler.new_links(_newest(_unique(pages)), self._options.max_links)
        entries, failed = self._crawler.articles(chosen)
        return FetchResult(
            entries=tuple(entries),
            etag=top.etag,
            last_modified=top.last_modified,
            permanent_url=top.permanent_url,
            base_url=top.url,
            warning=summarize([*problems, *refused, *failed]),
        )

    def _parse(self, body: bytes, url: str) -> Sitemap:
        try:
            return parse_sitemap(body, url, self._options.max_bytes)
        except _Unreadable as e:
            raise SourceError(str(e), source=self.name, url=url) from e


def parse_sitemap(body: bytes, url: str, max_bytes: int) -> Sitemap:
    """The pages or sitemaps that the sitemap ``body`` (fetched from ``url``, perhaps gzipped)
    lists. Raises ``_Unreadable`` for what is not a sitemap, has a DTD, or unzips to more than
    ``max_bytes``."""
    if body.startswith(_GZIP_MAGIC):
        body = _gunzip(body, max_bytes)
    try:
        root = defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
    except DefusedXmlException as e:
        raise _Unreadable(f"refused XML ({type(e).__name__}): a sitemap needs no DTD") from e
    except ParseError as e:
        line, column = e.position
        raise _Unreadable(f"malformed XML at line {line}, column {column}") from e
    kind = _local(root.tag)
    if kind == "urlset":
        return Sitemap(pages=tuple(_links(root, "url", url, pages=True)))
    if kind == "sitemapindex":
        return Sitemap(sitemaps=tuple(_links(root, "sitemap", url, pages=False)))
    raise _Unreadable(f"not a sitemap (the root element is <{kind}>)")


def _links(root: Element, tag: str, base: str, *, pages: bool) -> Iterable[Link]:
    for item in root:
        if _local(item.tag) != tag:
            continue
        fields = {_local(child.tag): child for child in item}
        loc = _text(fields.get("loc"))
        url = absolute_link(loc, base) if loc else None
        if url is None:
            continue
        news = fields.get("news")
        published = title = None
        if pages and news is not None:
            details = {_local(child.tag): child for child in news}
            published = _date(_text(details.get("publication_date")))
            title = _text(details.get("title"))
        yield Link(
            url=url, text=title, published=published, updated=_date(_text(fields.get("lastmod")))
        )


def _newest(links: Iterable[Link]) -> list[Link]:
    """Newest first by their date (publication, else lastmod); undated ones last, in order."""
    dated = [(link.published or link.updated, i, link) for i, link in enumerate(links)]
    dated.sort(key=lambda d: (d[0] is None, -d[0].timestamp() if d[0] else 0.0, d[1]))
    return [link for _, _, link in dated]


def _unique(links: Iterable[Link]) -> list[Link]:
    seen: dict[str, Link] = {}
    for link in links:
        seen.setdefault(link.url, link)
    return list(seen.values())


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    # A .xml.gz sitemap is served as a gzip file, not with Content-Encoding, so requests leaves
    # it compressed; the cap holds for what it unzips to (a small gzip bomb stays small).
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise _Unreadable(f"not a readable gzip file: {e}") from e
    if len(data) > max_bytes:
        raise _Unreadable(f"unzips to more than max_bytes = {max_bytes:,}")
    return data


def _local(tag: str) -> str:
    # Namespaced tags read "{uri}name"; sitemaps written without the namespace are common.
    return tag.rpartition("}")[2]


def _text(element: Element | None) -> str | None:
    text = (element.text or "").strip() if element is not None else ""
    return text or None


def _date(value: str | None) -> datetime | None:
    """A W3C datetime (``2026-11-20``, ``2026-11-20T10:00:00+01:00``, ``...Z``), aware; a
    date without a zone is taken as UTC. None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
