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

import lxml.etree
import lxml.html
from lxml.cssselect import CSSSelector

from newsletter.config import SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext
from newsletter.sources.crawl import CrawlSource, Link, absolute_link
from newsletter.sources.fetch import Fetched
from newsletter.sources.settings import PageSettings

log = logging.getLogger(__name__)

__all__ = ["PageSource", "find_links"]


class PageSource(CrawlSource):
    """The listing page at ``PageSettings.url`` and the new articles it links to."""

    settings = PageSettings

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        options = config.options
        selector = options.link_selector if isinstance(options, PageSettings) else None
        if selector is None and self._pattern is None:
            raise ConfigError(f"page source {config.name!r} needs a link_selector or link_pattern")
        self._selector = CSSSelector(selector) if selector else None

    def links(self, listing: Fetched) -> tuple[list[Link], list[str]]:
        try:
            links = find_links(listing.body, listing.url, listing.charset, self._selector)
        except (lxml.etree.LxmlError, ValueError, LookupError) as e:
            raise SourceError(
                f"not a readable HTML page ({type(e).__name__}: {e})",
                source=self.name,
                url=listing.url,
            ) from e
        return links, []


def find_links(
    body: bytes,
    base_url: str,
    charset: str | None,
    selector: CSSSelector | None,
) -> list[Link]:
    """The article links of a listing page, in page order, each once (with the first text it
    was given). The elements ``selector`` matches give their own link, or the links inside them
    when they are not links; without a selector, every link does. The listing's own URL is
    never one of its articles.

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
        if url is None or url == own:
            continue
        text = " ".join(anchor.text_content().split()) or None
        known = found.get(url)
        # The first mention fixes the order; a later one may bring the text (an image link
        # first, then the headline's).
        if known is None or (known.text is None and text):
            found[url] = Link(url=url, text=text)
    return list(found.values())
