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
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from newsletter.exceptions import SourceError
from newsletter.sources.crawl import CrawlSource, Link, absolute_link
from newsletter.sources.fetch import Fetched
from newsletter.sources.settings import SitemapSettings

log = logging.getLogger(__name__)

__all__ = ["SitemapSource", "parse_sitemap"]

_GZIP_MAGIC = b"\x1f\x8b"
# The reduced precisions of a W3C datetime (a year, a month) are not ISO 8601 fromisoformat
# reads: they are completed to the first day.
_W3C_DATE = re.compile(r"(\d{4})(?:-(\d{2})(-\d{2}.*)?)?")


class _Unreadable(Exception):
    """Raised by the parsing helpers; ``SitemapSource`` turns it into ``SourceError``."""


@dataclass(frozen=True)
class Sitemap:
    """What one sitemap document lists: pages (a ``urlset``) or other sitemaps (an index,
    as ``Link``s whose ``updated`` is their ``lastmod``)."""

    pages: tuple[Link, ...] = ()
    sitemaps: tuple[Link, ...] = ()


class SitemapSource(CrawlSource):
    """The sitemap at ``SitemapSettings.url`` and the new pages it lists."""

    settings = SitemapSettings
    listing_accept = "application/xml, text/xml;q=0.9, application/gzip;q=0.8, */*;q=0.5"

    def links(self, listing: Fetched) -> tuple[list[Link], list[str]]:
        sitemap = self._parse(listing.body, listing.url)
        problems: list[str] = []
        pages = list(sitemap.pages)
        most = self._options.max_sitemaps if isinstance(self._options, SitemapSettings) else 1
        # An index: its newest sitemaps (by lastmod; those without one last, in index order).
        for child in _newest(sitemap.sitemaps)[:most]:
            try:
                fetched = self._crawler.get(child.url, listing=True)
                pages.extend(self._parse(fetched.body, fetched.url).pages)
            except SourceError as e:
                problems.append(f"sitemap {child.url}: {e.message}")
        return _newest(_unique(pages)), problems

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
    """A W3C datetime (https://www.w3.org/TR/NOTE-datetime, which sitemaps use): ``2026``,
    ``2026-11``, ``2026-11-20`` or with a time and zone (``2026-11-20T10:00+01:00``, ``...Z``);
    a value without a zone is taken as UTC. None when absent or unreadable."""
    match = _W3C_DATE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    year, month, rest = match.groups()
    try:
        parsed = datetime.fromisoformat(f"{year}-{month or '01'}{rest or '-01'}")
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
