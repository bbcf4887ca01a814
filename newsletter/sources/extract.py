"""Extracting the article from a web page: title, date, author, body, lead image.

Owns: ``extract_article``, a pure function from a page's HTML (and its URL) to an ``Extracted``
article, or None when the page holds no article. trafilatura does the hard part: it finds the
main text and drops navigation, sidebars, footers and comment threads (include_comments off),
and reads the metadata (``og:``/``article:`` properties, JSON-LD, bylines; dates through
htmldate). What it leaves out, or gets in our way, is done here:

- the first figure's image and its ``<figcaption>``: trafilatura keeps the ``<img>`` but drops
  every caption, so the figure is rebuilt around the image it kept;
- the lead image: ``og:image`` (trafilatura's ``image``), else that first figure's image;
- a leading heading that repeats the title is removed (the feed and the digest print the title
  already);
- tracking parameters are stripped from links with courlan (``normalize_url``, whose list of
  trackers is broader than ours), before the project's sanitizer drops the rest of ours;
- the body is sanitized with ``newsletter.sanitize.sanitize_html``, like every content we
  publish: trafilatura's HTML keeps ``javascript:`` links.

Does not own: fetching the page (``newsletter.sources.fulltext`` with the shared fetcher),
deciding when a page is worth fetching, caching, or merging the result into a feed's entry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urljoin, urlsplit

import courlan
from lxml import etree
from lxml.html import HtmlElement
from trafilatura import bare_extraction
from trafilatura.htmlprocessing import convert_to_html
from trafilatura.settings import Document
from trafilatura.utils import load_html

from newsletter.sanitize import sanitize_html
from newsletter.text import clean_line, html_to_text
from newsletter.types import Extracted

log = logging.getLogger(__name__)

__all__ = ["EXTRACTION_OPTIONS", "MIN_TEXT_CHARS", "Extracted", "extract_article"]

# htmldate's output format: the time and offset when the page gives them (its default, a bare
# date, would make every article published at midnight).
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
_HEADINGS = frozenset({"h1", "h2"})
# What trafilatura is asked for: metadata, links, images and formatting kept, comments not.
EXTRACTION_OPTIONS: dict[str, Any] = {
    "with_metadata": True,
    "include_comments": False,
    "include_images": True,
    "include_links": True,
    "include_formatting": True,
    "include_tables": True,
    "output_format": "html",
    "date_extraction_params": {"original_date": True, "outputformat": _DATE_FORMAT},
}
# Less text than this is a menu or a cookie notice that trafilatura's fallback picked up, not an
# article: a sentence or two at least.
MIN_TEXT_CHARS = 80


def extract_article(html: str, url: str, *, title: str | None = None) -> Extracted | None:
    """The article in the page ``html`` found at ``url``, or None when there is none.

    ``title`` is the title the page's article is known by elsewhere (the feed entry's): a
    leading heading repeating it, or the page's own title, is removed from the body. A page
    that cannot be parsed, or holds less than ``MIN_TEXT_CHARS`` of main text, gives None.
    """
    page = load_html(html)
    if page is None:
        return None
    try:
        document = bare_extraction(page, url=url, **EXTRACTION_OPTIONS)
    except (ValueError, TypeError, etree.LxmlError):
        # bare_extraction catches these itself for most pages; a few paths (metadata of an odd
        # document) let them through. Either way: no article in this page.
        log.debug("no article extracted from %s", url, exc_info=True)
        return None
    if not isinstance(document, Document) or document.body is None:
        return None
    converted = convert_to_html(document.body)
    # convert_to_html wraps the body in <html>.
    body = converted.find("body") if converted.tag == "html" else converted
    if body is None:
        return None
    page_title = clean_line(document.title or "") or None
    _drop_repeated_heading(body, (title, page_title))
    # The article's first figure: a figure neither kept in the body nor inside the article (a
    # header's, an ad's) is passed over.
    figure = next((f for f in _figures(page, url) if _restore_caption(body, f, url)), None)
    for link in body.iter("a"):
        href = link.get("href")
        if href:
            link.set("href", _untracked(href))
    inner = escape(body.text or "", quote=False) + "".join(
        etree.tostring(child, encoding="unicode", method="html") for child in body
    )
    content = sanitize_html(inner, url)
    text = html_to_text(content)
    if len(text) < MIN_TEXT_CHARS:
        return None
    lead = _http_url(document.image, url) or (figure.src if figure is not None else None)
    return Extracted(
        title=page_title,
        author=clean_line(document.author or "") or None,
        published=_date(document.date),
        content_html=content,
        image_url=lead,
        image_caption=figure.caption if figure is not None else None,
        text_length=len(text),
    )


# --- what trafilatura leaves out -----------------------------------------------------------------


@dataclass(frozen=True)
class _Figure:
    src: str  # absolute
    alt: str
    caption: str | None
    in_article: bool  # inside the page's <article> or <main>


def _figures(page: HtmlElement, url: str) -> Iterator[_Figure]:
    """The page's ``<figure>`` elements that hold an image, in order, with their captions."""
    for figure in page.iter("figure"):
        for img in figure.iter("img"):
            src = _http_url(_image_source(img), url)
            if src is None:
                continue
            caption_element = next(figure.iter("figcaption"), None)
            caption = (
                clean_line(caption_element.text_content()) if caption_element is not None else ""
            )
            in_article = any(a.tag in ("article", "main") for a in figure.iterancestors())
            yield _Figure(src, clean_line(img.get("alt") or ""), caption or None, in_article)
            break


def _image_source(img: Any) -> str:
    # Lazy-loading pages put the real image in data-src and a placeholder in src.
    for attribute in ("data-src", "src"):
        value = (img.get(attribute) or "").strip()
        if value and not value.startswith("data:"):
            return str(value)
    srcset = (img.get("srcset") or "").strip()
    return srcset.split(",")[0].split()[0] if srcset else ""


def _restore_caption(body: Any, figure: _Figure, url: str) -> bool:
    """Put the first figure, with its caption, where trafilatura left its bare image (or at the
    top of the body when it dropped an image that stood inside the article). False when the
    figure was neither."""
    kept = next(
        (img for img in body.iter("img") if _http_url(img.get("src"), url) == figure.src), None
    )
    if kept is None and not figure.in_article:
        return False
    element = etree.Element("figure")
    img = etree.SubElement(element, "img", src=figure.src)
    if figure.alt:
        img.set("alt", figure.alt)
    if figure.caption:
        etree.SubElement(element, "figcaption").text = figure.caption
    if kept is not None:
        element.tail = kept.tail
        parent = kept.getparent()
        # An image alone in a paragraph: the figure replaces the paragraph (a <figure> inside
        # a <p> is not valid HTML and parsers would split the paragraph).
        if parent is not None and parent.tag == "p" and len(parent) == 1 and not _has_text(parent):
            kept, parent = parent, parent.getparent()
            element.tail = kept.tail
        if parent is not None:
            parent.replace(kept, element)
        return True
    body.insert(0, element)
    return True


def _has_text(element: Any) -> bool:
    return bool("".join(element.itertext()).strip())


def _drop_repeated_heading(body: Any, titles: tuple[str | None, ...]) -> None:
    first = next(iter(body), None)
    if first is None or first.tag not in _HEADINGS or (body.text or "").strip():
        return
    heading = _comparable("".join(first.itertext()))
    if heading and any(heading == _comparable(t or "") for t in titles):
        body.remove(first)
        if first.tail and first.tail.strip():
            body.text = (body.text or "") + first.tail


def _comparable(text: str) -> str:
    return " ".join(text.split()).casefold().strip(" .:!?")


def _untracked(href: str) -> str:
    """``href`` without the tracking parameters courlan knows (its query order sorted)."""
    if urlsplit(href).scheme not in ("http", "https"):
        return href
    try:
        return str(courlan.normalize_url(href))
    except (ValueError, AttributeError):
        return href


def _http_url(value: str | None, base: str) -> str | None:
    if not value or not value.strip():
        return None
    try:
        absolute = urljoin(base, value.strip())
    except ValueError:
        return None
    return absolute if urlsplit(absolute).scheme in ("http", "https") else None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
