"""Write the public feeds: ``rss.xml`` (RSS 2.0), ``atom.xml`` (Atom 1.0) and ``feed.json``.

Owns: turning stored ``Article`` values into the three formats, keeping one id per article
across all of them (``Article.uid``), and writing the files atomically. RSS and Atom go through
feedgen, which is imported nowhere else: it validates late, has no types and raises bare
``ValueError``s, so every call to it happens inside ``_feedgen_errors``. JSON Feed 1.1 is small
enough to write with ``json``.

Does not own: choosing the articles (the caller passes the newest first; this module only
caps them at ``max_items``), sanitizing their HTML (``gather`` did that), or serving the files.

Every date written comes from the data, never from the clock, so rebuilding unchanged data
produces byte-identical files and ``atomic_write`` leaves them (and their mtime) alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedgen.feed import FeedGenerator

from newsletter import __version__
from newsletter.config import FeedSettings, NewsletterSettings
from newsletter.exceptions import RenderError
from newsletter.files import atomic_write
from newsletter.text import html_to_text
from newsletter.types import Article

log = logging.getLogger(__name__)

RSS_FILE = "rss.xml"
ATOM_FILE = "atom.xml"
JSON_FILE = "feed.json"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "newsletter"
GENERATOR_URI = "https://github.com/newsletter-publisher/newsletter"

# Atom requires <updated> on the feed (RFC 4287 4.1.1). A feed with no articles has no date of
# its own; a fixed one keeps rebuilds of an empty feed byte-identical.
EMPTY_FEED_UPDATED = datetime(1970, 1, 1, tzinfo=UTC)

# XML 1.0 (section 2.2) forbids most C0 controls, lone surrogates and U+FFFE/U+FFFF; lxml
# refuses them with ValueError. One stray control character in a title must not stop the feed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def write_feeds(
    articles: Sequence[Article], newsletter: NewsletterSettings, settings: FeedSettings
) -> list[Path]:
    """Write the three feeds into ``settings.output_dir``; return the paths (re)written.

    ``articles`` are newest first and keep that order; at most ``settings.max_items`` are
    written. A file whose content did not change is left alone (and its mtime with it), and is
    not in the returned list. Raises ``RenderError`` when feedgen refuses the data; nothing is
    written then.
    """
    items = [_Item(a) for a in articles[: settings.max_items]]
    feed_dir = newsletter.site_url + "feeds/"
    outputs = {
        RSS_FILE: _rss_bytes(items, newsletter, settings, feed_dir + RSS_FILE),
        ATOM_FILE: _atom_bytes(items, newsletter, settings, feed_dir + ATOM_FILE),
        JSON_FILE: _json_bytes(items, newsletter, feed_dir + JSON_FILE),
    }
    written = []
    for name, data in outputs.items():
        path = settings.output_dir / name
        if atomic_write(path, data):
            log.info("wrote %s (%d items)", path, len(items))
            written.append(path)
        else:
            log.debug("%s unchanged", path)
    return written


class _Item:
    """One article's feed fields, cleaned once and shared by the three formats."""

    def __init__(self, article: Article) -> None:
        self.id = _clean(article.uid)
        self.title = _clean(article.title)
        self.url = article.url
        self.author = _clean(article.author) if article.author else None
        self.published = article.published.astimezone(UTC)
        # A source that dates an update before the publication is wrong; readers sort by it.
        self.updated = max(article.updated, article.published).astimezone(UTC)
        self.summary_html = _clean(article.summary)
        # Full content where the source gave it; the summary is all we have otherwise.
        self.content_html = _clean(article.content) or self.summary_html
        self.tags = [_clean(t) for t in article.tags if t.strip()]
        self.image_url = article.image_url


def _clean(text: str) -> str:
    return _NOT_XML_CHAR.sub("", text)


def _last_updated(items: Sequence[_Item]) -> datetime:
    return max((i.updated for i in items), default=EMPTY_FEED_UPDATED)


@contextmanager
def _feedgen_errors(file: str) -> Iterator[None]:
    """The feedgen boundary. feedgen has no exceptions of its own: it raises ``ValueError``,
    ``ImportError`` and ``NotImplementedError`` for bad input and lets lxml's errors through,
    so everything raised while it builds a document becomes one ``RenderError``."""
    try:
        yield
    except Exception as e:
        raise RenderError(f"cannot build the feed: {e}", template=file) from e


def _generator(
    items: Sequence[_Item],
    newsletter: NewsletterSettings,
    settings: FeedSettings,
    self_url: str,
    self_type: str,
) -> Any:
    fg = FeedGenerator()
    # RSS has no author element without an e-mail address; Dublin Core's creator carries the
    # name (the usual practice, and what feedparser reads back as the author). Atom has
    # <author><name> of its own, so the extension is RSS-only.
    fg.load_extension("dc", atom=False, rss=True)
    fg.id(newsletter.site_url)
    fg.title(_clean(newsletter.title))
    # RSS requires a non-empty channel description (RSS 2.0 "Required channel elements").
    fg.description(_clean(newsletter.description) or _clean(newsletter.title))
    # Atom requires an author on the feed unless every entry has one (RFC 4287 4.1.1).
    fg.author({"name": _clean(newsletter.sender_name)})
    fg.link(href=self_url, rel="self", type=self_type)
    # Added last on purpose: feedgen uses the last link it was given as the RSS <link>.
    fg.link(href=newsletter.site_url, rel="alternate", type="text/html")
    fg.language(newsletter.language)
    fg.ttl(settings.ttl_minutes)
    fg.generator(GENERATOR, version=__version__, uri=GENERATOR_URI)
    # feedgen stamps lastBuildDate and <updated> with the current time unless told otherwise.
    fg.updated(_last_updated(items))
    for item in items:
        entry = fg.add_entry(order="append")
        entry.id(item.id)  # also the RSS guid, with isPermaLink="false"
        entry.title(item.title)
        if item.url:
            entry.link(href=item.url, rel="alternate", type="text/html")
        if item.author:
            entry.author({"name": item.author})
            entry.dc.dc_creator(item.author)
        entry.published(item.published)
        entry.updated(item.updated)
        if item.summary_html:
            entry.summary(item.summary_html, type="html")
        # Not CDATA: text is escaped, so a literal "]]>" in an article cannot end the section.
        entry.content(item.content_html, type="html")
        for tag in item.tags:
            entry.category(term=tag)
    return fg


def _rss_bytes(
    items: Sequence[_Item], newsletter: NewsletterSettings, settings: FeedSettings, self_url: str
) -> bytes:
    with _feedgen_errors(RSS_FILE):
        fg = _generator(items, newsletter, settings, self_url, "application/rss+xml")
        data: bytes = fg.rss_str(pretty=True)
    return data


def _atom_bytes(
    items: Sequence[_Item], newsletter: NewsletterSettings, settings: FeedSettings, self_url: str
) -> bytes:
    with _feedgen_errors(ATOM_FILE):
        fg = _generator(items, newsletter, settings, self_url, "application/atom+xml")
        data: bytes = fg.atom_str(pretty=True)
    return data


def _json_bytes(items: Sequence[_Item], newsletter: NewsletterSettings, self_url: str) -> bytes:
    """JSON Feed 1.1 (https://www.jsonfeed.org/version/1.1/)."""
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": _clean(newsletter.title),
        "home_page_url": newsletter.site_url,
        "feed_url": self_url,
    }
    if newsletter.description:
        feed["description"] = _clean(newsletter.description)
    feed["language"] = newsletter.language
    feed["authors"] = [{"name": _clean(newsletter.sender_name)}]
    feed["items"] = [_json_item(item) for item in items]
    text = json.dumps(feed, ensure_ascii=False, indent=2) + "\n"
    return text.encode("utf-8")


def _json_item(item: _Item) -> dict[str, Any]:
    out: dict[str, Any] = {"id": item.id}
    if item.url:
        out["url"] = item.url
    out["title"] = item.title
    # The spec requires content_html or content_text; content_html is always present here.
    out["content_html"] = item.content_html
    # JSON Feed's summary is plain text ("a plain text sentence or two").
    summary = html_to_text(item.summary_html)
    if summary:
        out["summary"] = summary
    if item.image_url:
        out["image"] = item.image_url
    out["date_published"] = item.published.isoformat()
    out["date_modified"] = item.updated.isoformat()
    if item.author:
        out["authors"] = [{"name": item.author}]
    if item.tags:
        out["tags"] = item.tags
    return out
