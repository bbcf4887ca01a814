"""The settings of the built-in source kinds, each parsed from its ``[[sources]]`` table.

Owns: each kind's keys, their types, ranges and the rules between them (a feed reads exactly
one of ``url`` and ``path``), and ``FetchSettings``, what ``fetch`` needs to read one document
(where it is, ``timeout``, ``max_bytes``), which any kind reading a URL or a file can reuse.

Kept apart from the readers (``feed``, ``folder``) so that loading a config imports none of
feedparser, requests or a Markdown parser. Does not own: the keys every source has (``name``,
``kind``, ``enabled``: ``newsletter.config``) or the registry of kinds (``newsletter.sources``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from newsletter.config import Table, is_http_url
from newsletter.sources import COMMON_KEYS

__all__ = [
    "FULL_TEXT_MODES",
    "FeedSettings",
    "FetchSettings",
    "FolderSettings",
    "PageSettings",
    "SitemapSettings",
]

_HOUR_S = 3600


@dataclass(frozen=True)
class FetchSettings:
    """One document at an http(s) URL or in a local file, and the limits of reading it.

    Exactly one of ``url`` and ``path`` is set in a loaded config (the reader checks it again
    for settings built by hand). ``timeout`` bounds the connection, each read and the whole
    fetch; a document over ``max_bytes`` is refused. A kind that reads one document subclasses
    this and names its reader in ``source``; one with keys of its own extends ``keys`` and
    ``parse`` (``fetch_fields`` reads the shared ones).
    """

    url: str | None = None
    path: Path | None = None
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024

    keys: ClassVar[tuple[str, ...]] = ("url", "path", "timeout", "max_bytes")

    @property
    def location(self) -> str:
        return self.url if self.url is not None else str(self.path)

    @classmethod
    def parse(cls, t: Table) -> Self:
        t.allow(*COMMON_KEYS, *cls.keys)
        return cls(**cls.fetch_fields(t))

    @classmethod
    def fetch_fields(cls, t: Table) -> dict[str, Any]:
        """The shared keys, checked, as keyword arguments of the settings class."""
        url = t.text("url", None)
        path = t.path_value("path", None)
        if (url is None) == (path is None):
            kind = t.data.get("kind")
            raise t.error("url", f"a {kind} source needs exactly one of `url` or `path`")
        if url is not None and not is_http_url(url):
            raise t.error("url", f"expected an http(s) URL, got {url!r}")
        return {
            "url": url,
            "path": path,
            "timeout": float(t.number("timeout", cls.timeout, minimum=0.1, maximum=_HOUR_S)),
            "max_bytes": t.number(
                "max_bytes", cls.max_bytes, minimum=1024, maximum=2**30, integer=True
            ),
        }


FULL_TEXT_MODES = ("never", "auto", "always")


@dataclass(frozen=True)
class FeedSettings(FetchSettings):
    """``kind = "feed"``: RSS, Atom or JSON Feed at ``url`` or in the file at ``path``.

    ``full_text`` says when to fetch an entry's page and take the article from it: ``never``
    (the default), ``auto`` (when the entry carries less text than ``full_text_min_chars``: a
    summary-only feed) or ``always``. Off by default, as Miniflux's per-feed crawler is and as
    rss2email never fetches: it means a request to the publisher's site per entry and putting
    a whole page of theirs into our feeds and digest, which is the editor's choice to make.

    ``full_content``: the digest shows each item's whole body (within the digest's size
    budget) instead of an excerpt; off by default, a feed's item usually has a page to read.
    """

    full_text: str = "never"
    full_text_min_chars: int = 600
    full_content: bool = False

    keys: ClassVar[tuple[str, ...]] = (
        *FetchSettings.keys,
        "full_text",
        "full_text_min_chars",
        "full_content",
    )
    source: ClassVar[str] = "newsletter.sources.feed:FeedSource"

    @classmethod
    def parse(cls, t: Table) -> Self:
        t.allow(*COMMON_KEYS, *cls.keys)
        mode = t.text("full_text", cls.full_text)
        if mode not in FULL_TEXT_MODES:
            raise t.error(
                "full_text", f"expected one of {', '.join(FULL_TEXT_MODES)}, got {mode!r}"
            )
        return cls(
            **cls.fetch_fields(t),
            full_text=mode,
            full_text_min_chars=t.number(
                "full_text_min_chars",
                cls.full_text_min_chars,
                minimum=0,
                maximum=10**6,
                integer=True,
            ),
            full_content=t.get("full_content", bool, False, "true or false"),
        )


@dataclass(frozen=True)
class FolderSettings:
    """``kind = "folder"``: the Markdown files under the directory ``path``.

    ``full_content`` (on by default): the digest shows each article whole, links kept, since
    an editor's article is written for the readers of this newsletter.
    """

    path: Path
    full_content: bool = True

    keys: ClassVar[tuple[str, ...]] = ("path", "full_content")
    source: ClassVar[str] = "newsletter.sources.folder:FolderSource"

    @property
    def location(self) -> str:
        return str(self.path)

    @classmethod
    def parse(cls, t: Table) -> Self:
        # Said before the unknown-key check: `url` is the likeliest key to find here, and this
        # names the one a folder needs instead.
        if "url" in t.data:
            raise t.error("path", "a folder source needs `path` (and no `url`)")
        t.allow(*COMMON_KEYS, *cls.keys)
        path = t.path_value("path", None)
        if path is None:
            raise t.error("path", "a folder source needs `path` (and no `url`)")
        return cls(path=path, full_content=t.get("full_content", bool, True, "true or false"))


@dataclass(frozen=True)
class CrawlSettings:
    """What the kinds that find articles on web pages share (``page``, ``sitemap``).

    ``url`` is the document listing the articles (a section front, a sitemap), read with a
    conditional GET under ``timeout`` and ``max_bytes``, like each article page it links to.
    ``link_pattern`` (a regular expression, searched in each absolute link) keeps only the
    links it matches; ``max_links`` caps the article pages fetched per run (links already
    stored are not fetched and do not count).
    """

    url: str
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024
    link_pattern: str | None = None
    max_links: int = 20

    keys: ClassVar[tuple[str, ...]] = ("url", "timeout", "max_bytes", "link_pattern", "max_links")

    @property
    def location(self) -> str:
        return self.url

    @classmethod
    def parse(cls, t: Table) -> Self:
        return cls(**cls.crawl_fields(t))

    @classmethod
    def crawl_fields(cls, t: Table) -> dict[str, Any]:
        kind = t.data.get("kind")
        if "path" in t.data:
            raise t.error("path", f"a {kind} source reads a web page: it needs `url`, not `path`")
        t.allow(*COMMON_KEYS, *cls.keys)
        url = t.text("url", None)
        if url is None or not is_http_url(url):
            got = "none" if url is None else repr(url)
            raise t.error("url", f"a {kind} source needs an http(s) `url`, got {got}")
        pattern = t.text("link_pattern", None)
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise t.error("link_pattern", f"not a regular expression: {e}") from e
        return {
            "url": url,
            "timeout": float(t.number("timeout", cls.timeout, minimum=0.1, maximum=_HOUR_S)),
            "max_bytes": t.number(
                "max_bytes", cls.max_bytes, minimum=1024, maximum=2**30, integer=True
            ),
            "link_pattern": pattern,
            "max_links": t.number(
                "max_links", cls.max_links, minimum=1, maximum=1000, integer=True
            ),
        }


@dataclass(frozen=True)
class PageSettings(CrawlSettings):
    """``kind = "page"``: a listing page at ``url`` watched for links to new articles.

    The links are those of the elements ``link_selector`` (a CSS selector) matches (an element
    that is not a link stands for the links inside it), or every link on the page when it is
    not set; ``link_pattern`` then filters them. At least one of the two is required: every link
    of a page would be its navigation too.
    """

    link_selector: str | None = None

    keys: ClassVar[tuple[str, ...]] = (*CrawlSettings.keys, "link_selector")
    source: ClassVar[str] = "newsletter.sources.page:PageSource"

    @classmethod
    def parse(cls, t: Table) -> Self:
        fields = cls.crawl_fields(t)
        selector = t.text("link_selector", None)
        if selector is None and fields["link_pattern"] is None:
            raise t.error(
                "link_selector", "a page source needs `link_selector` or `link_pattern` (or both)"
            )
        if selector is not None:
            # Imported only for a config with a page source: loading any other stays light.
            from cssselect import GenericTranslator, SelectorError

            try:
                GenericTranslator().css_to_xpath(selector)
            except SelectorError as e:
                raise t.error("link_selector", f"not a CSS selector we can use: {e}") from e
        return cls(**fields, link_selector=selector)


@dataclass(frozen=True)
class SitemapSettings(CrawlSettings):
    """``kind = "sitemap"``: a sitemap at ``url`` (a ``urlset``, a sitemap index or a Google
    News sitemap), its newest ``max_links`` pages by date read as articles. ``max_sitemaps``
    caps the sitemaps of an index read per run, newest first."""

    max_sitemaps: int = 5

    keys: ClassVar[tuple[str, ...]] = (*CrawlSettings.keys, "max_sitemaps")
    source: ClassVar[str] = "newsletter.sources.sitemap:SitemapSource"

    @classmethod
    def parse(cls, t: Table) -> Self:
        fields = cls.crawl_fields(t)
        most = t.number("max_sitemaps", cls.max_sitemaps, minimum=1, maximum=100, integer=True)
        return cls(**fields, max_sitemaps=most)
