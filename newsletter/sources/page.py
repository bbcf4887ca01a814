"""Page sources: a listing page (a section front, a blog index) watched for links to new
articles, each new article page read and extracted.

Owns: finding the article links on the listing (lxml's HTML parser and CSS selectors through
cssselect: ``link_selector``, then ``link_pattern``), in the order the page lists them (newest
first on the pages this is for). HTML errors are wrapped here, once, into ``SourceError``.

Does not own: robots.txt, the per-host turn, which links are new and reading the articles
(``crawl``), the conditional GET (``fetch``), sanitizing and storing (``newsletter.gather``).
"""

from __future__ import annotations

import logging
import re
from typing import Self

import lxml.etree
import lxml.html
from lxml.cssselect import CSSSelector

from newsletter.config import SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext
from newsletter.sources.crawl import Crawler, Link, absolute_link, summarize
from newsletter.sources.settings import PageSettings
from newsletter.types import FetchResult, SourceState

log = logging.getLogger(__name__)

__all__ = ["PageSource", "find_links"]


class PageSource:
    """The listing page at ``PageSettings.url`` and the new articles it links to."""

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        options = config.options
        if not isinstance(options, PageSettings):
            raise ConfigError(f"page source {config.name!r} needs PageSettings")
        if options.link_selector is None and options.link_pattern is None:
            raise ConfigError(f"page source {config.name!r} needs a link_selector or link_pattern")
        self.name = config.name
        self.location = config.location
        self._options = options
        self._selector = CSSSelector(options.link_selector) if options.link_selector else None
        self._pattern = re.compile(options.link_pattern) if options.link_pattern else None
        self._crawler = Crawler(
            context.session,
            context.http,
            source=config.name,
            timeout=options.timeout,
            max_bytes=options.max_bytes,
            stored=context.stored,
        )

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"PageSource({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        listing = self._crawler.get(self._options.url, state)
        if listing.not_modified:
            return FetchResult(not_modified=True, permanent_url=listing.permanent_url)
        try:
            links = find_links(
                listing.body, listing.url, listing.charset, self._selector, self._pattern
            )
        except (lxml.etree.LxmlError, ValueError, LookupError) as e:
            raise SourceError(
                f"not a readable HTML page ({type(e).__name__}: {e})",
                source=self.name,
                url=listing.url,
            ) from e
        problems: list[str] = []
        if not links:
            problems.append("no article links on the page (check link_selector and link_pattern)")
        chosen, refused = self._crawler.new_links(links, self._options.max_links)
        entries, failed = self._crawler.articles(chosen)
        return FetchResult(
            entries=tuple(entries),
            etag=listing.etag,
            last_modified=listing.last_modified,
            permanent_url=listing.permanent_url,
            base_url=listing.url,
            warning=summarize([*problems, *refused, *failed]),
        )


def find_links(
    body: bytes,
    base_url: str,
    charset: str | None,
    selector: CSSSelector | None,
    pattern: re.Pattern[str] | None,
) -> list[Link]:
    """The article links of a listing page, in page order, each once (with the first text it
    was given). The elements ``selector`` matches give their own link, or the links inside them
    when they are not links; without a selector, every link does. ``pattern`` must then be
    found in the absolute link. The listing's own URL is never one of its articles.

    Raises what lxml raises for a document it cannot parse (``LxmlError``, ``ValueError``, a
    ``LookupError`` for an unknown charset).
    """
    parser = lxml.html.HTMLParser(encoding=charset) if charset else None
    doc = lxml.html.document_fromstring(body, parser=parser, base_url=base_url)
    # A <base href> changes what relative links mean (HTML, 4.2.3).
    base = next((b for b in doc.xpath("//base/@href")), None)
    base = absolute_link(str(base), base_url) if base else None
    anchors: list[lxml.html.HtmlElement] = []
    for element in selector(doc) if selector is not None else doc.iter("a"):
        if not isinstance(element, lxml.html.HtmlElement):
            continue
        if element.tag == "a":
            anchors.append(element)
        else:
            anchors.extend(element.iter("a"))
    own = absolute_link(base_url, base_url)
    found: dict[str, Link] = {}
    for anchor in anchors:
        href = anchor.get("href")
        url = absolute_link(href, base or base_url) if href else None
        if url is None or url == own or (pattern is not None and not pattern.search(url)):
            continue
        text = " ".join(anchor.text_content().split()) or None
        known = found.get(url)
        # The first mention fixes the order; a later one may bring the text (an image link
        # first, then the headline's).
        if known is None or (known.text is None and text):
            found[url] = Link(url=url, text=text)
    return list(found.values())
