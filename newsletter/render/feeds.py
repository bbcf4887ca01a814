"""Write the public feeds: RSS 2.0, Atom 1.0 and JSON Feed 1.1, for everything and per tag, each
with RFC 5005 archive pages.

Layout under ``settings.output_dir``, served at ``<site_url>feeds/``::

    rss.xml  atom.xml  feed.json          the current feed: the newest ``max_items`` articles
    pages/<n>/rss.xml|atom.xml|feed.json  archive page n, page 1 holding the oldest articles
    tags/<slug>/...                       the same three files and pages/ for one tag
    tags/index.json                       which tag has which slug (for the archive's index)

Every feed is a log of articles in the order they arrived (``Storage.articles_page``). It is
cut into fixed pages of ``page_size`` from the oldest, so page n always holds the same
articles: an archive page is written once, rewritten only when one of its articles is edited
or when the next page fills up and it gains a ``next-archive`` link, and never renumbered.
The newest, partial page is not published as a page; the current feed (the newest
``max_items``, never fewer than a page) covers it. Current feeds link ``prev-archive`` to
the newest page; a page carries ``<fh:archive/>`` and links ``self``, ``current``,
``prev-archive`` and ``next-archive`` (RFC 5005, section 4), as ``atom:link`` in RSS.
JSON Feed has no archives, only ``next_url`` ("the next n items"): a current feed's points to
the newest page, each page's to the page before it, page 1 has none, and every page's
``feed_url`` is the current feed's, the one feed they all belong to. Inside a document items
are newest first by publication date. A page and the current feed may share articles; both
RFC 5005 and JSON Feed readers merge by id. Arrival, not publication, decides where an
article goes: a source added later with a back catalogue fills the current feed for a while,
but an article never lands in a page a reader has already walked. Current feeds (never the
pages, which do not change) name the WebSub hub when one is configured.

An article's id (``Article.uid``) is its RSS ``guid``, Atom ``id`` and JSON Feed ``id``, in
every document, and never changes when the article is edited. Every date written comes from
the data, never from the clock, so rebuilding unchanged data produces byte-identical files
and ``atomic_write`` leaves them (and their mtime) alone.

Owns: the file layout and URLs, tag slugs, paging, the three formats and writing them; RSS
and Atom go through feedgen, imported nowhere else: it validates late, has no types and raises
bare ``ValueError``s, so every call to it happens inside ``_feedgen_errors``. JSON Feed is
written with ``json``. Does not own: reading articles (the caller streams them), sanitizing
their HTML (``gather``), pinging a WebSub hub (``websub``) or serving the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from feedgen.feed import FeedGenerator
from feedgen.util import xml_elem

from newsletter._version import __version__
from newsletter.config import FeedSettings, NewsletterSettings
from newsletter.exceptions import RenderError
from newsletter.files import atomic_write
from newsletter.grouping import RelatedLink
from newsletter.text import clean_line, html_to_text, shorten
from newsletter.types import Article

log = logging.getLogger(__name__)

RSS_FILE = "rss.xml"
ATOM_FILE = "atom.xml"
JSON_FILE = "feed.json"
FEED_FILES = (RSS_FILE, ATOM_FILE, JSON_FILE)
MEDIA_TYPES = {
    RSS_FILE: "application/rss+xml",
    ATOM_FILE: "application/atom+xml",
    JSON_FILE: "application/feed+json",
}
FEEDS_PATH = "feeds/"  # where the output folder is served, under the site URL
PAGES_DIR = "pages"
TAGS_DIR = "tags"
TAG_INDEX = "index.json"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "newsletter"
GENERATOR_URI = "https://github.com/newsletter-publisher/newsletter"
JSON_EXTENSION = "_newsletter"  # JSON Feed 1.1, "Extending JSON Feed"
RSS_DOCS = "https://www.rssboard.org/rss-specification"
UNTITLED = "Untitled"

ATOM_NS = "http://www.w3.org/2005/Atom"
FH_NS = "http://purl.org/syndication/history/1.0"  # RFC 5005

# Atom requires <updated> on the feed (RFC 4287 4.1.1). A feed with no articles has no date of
# its own; a fixed one keeps rebuilds of an empty feed byte-identical. The W3C validator
# calls any date before 1990 implausible, hence not the Unix epoch.
EMPTY_FEED_UPDATED = datetime(2000, 1, 1, tzinfo=UTC)
# strftime("%Y") writes years before 1000 with fewer digits on glibc, and RFC 822 dates need
# four; such a date is noise from a source anyway.
_OLDEST_DATE = datetime(1000, 1, 1, tzinfo=UTC)

# XML 1.0 (section 2.2) forbids most C0 controls, lone surrogates and U+FFFE/U+FFFF; lxml
# refuses them with ValueError. One stray control character in a title must not stop the feed.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# A lead image becomes an enclosure only when its type is known, and the type comes from the
# URL's extension: from this table, not from the system's mime.types, so that every machine
# writes the same bytes. An unknown type leaves the image to JSON Feed's ``image``.
_IMAGE_TYPES = {
    ".avif": "image/avif",
    ".gif": "image/gif",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}

_PLAIN_TAG = re.compile(r"[a-z0-9]+(?:[ _-]+[a-z0-9]+)*")
_SLUG_MAX = 60
# Bounds on what stored data can make us write, whatever a source sent before gathering
# capped it: tags listed per item (``write_feeds(max_tags=...)``, the same
# ``[http] max_tags_per_item`` that gathering applies), characters of a tag's name, and tag
# feeds per build. Each tag feed is three documents plus pages, so the tag feeds are what
# grows: past the cap, the tags that arrived first keep their feeds (a stable choice) and the
# rest are counted in a warning.
MAX_ITEM_TAGS = 50
MAX_TAG_CHARS = 100
MAX_TAG_FEEDS = 500


@dataclass(frozen=True)
class WrittenFeeds:
    """What ``write_feeds`` did."""

    paths: tuple[Path, ...]  # feed documents (re)written, current feeds and archive pages
    changed: tuple[str, ...]  # public URLs of the current feeds among them (to ping a hub)
    removed: tuple[Path, ...]  # files of tags that no longer exist, or pages past the end
    tags_without_feed: int = 0  # tags past MAX_TAG_FEEDS: listed in items, no feed of their own


@dataclass(frozen=True)
class TagFeed:
    """A tag that has feeds: its name as first written, and its folder under ``tags/``."""

    name: str
    slug: str

    def url(self, newsletter: NewsletterSettings, file: str) -> str:
        return feed_url(newsletter, f"{TAGS_DIR}/{self.slug}/{file}")


def feed_url(newsletter: NewsletterSettings, path: str) -> str:
    """The public URL of ``path``, relative to the feeds' output folder."""
    return newsletter.site_url + FEEDS_PATH + path


def tag_slug(tag: str) -> str:
    """The folder name of a tag's feeds: lower-case ASCII letters, digits and hyphens.

    Tags that differ only in case or in their separators ("Machine Learning",
    "machine-learning") share a slug, and so a feed. Any other tag ("C++", "Grüße", "日本")
    gets a hash of its normalized name appended, so that it keeps its own feed; the slug
    depends on the tag alone and never changes when other tags come or go.
    """
    key = _tag_key(tag)
    ascii_text = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if _PLAIN_TAG.fullmatch(key) and len(words) <= _SLUG_MAX:
        return words
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    words = words[:_SLUG_MAX].rstrip("-")
    return f"{words}-{digest}" if words else f"tag-{digest}"


def read_tag_index(output_dir: Path) -> list[TagFeed]:
    """The tags that have feeds, sorted by slug, as the last ``write_feeds`` left them.

    No index (no feeds written yet, or no tags) is an empty list; so is an unreadable one,
    with a warning: the next ``write_feeds`` rewrites it.
    """
    path = output_dir / TAGS_DIR / TAG_INDEX
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [TagFeed(name=str(t["name"]), slug=str(t["slug"])) for t in data["tags"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s cannot be read (%s); tag feeds are not listed", path, e)
        return []


def write_feeds(
    history: Iterable[Article],
    newsletter: NewsletterSettings,
    settings: FeedSettings,
    *,
    max_tags: int = MAX_ITEM_TAGS,
    max_tag_feeds: int = MAX_TAG_FEEDS,
    related: Mapping[int, Sequence[RelatedLink]] | None = None,
) -> WrittenFeeds:
    """Write every feed and archive page into ``settings.output_dir`` from ``history``.

    ``history`` is every stored article in arrival order, oldest first, as
    ``Storage.articles_page`` returns them; it is read once, and only the pages being built
    are held in memory. A file whose content did not change is left alone (and its mtime
    with it). Pages past the last full one and the folders of tags no article carries any
    more are deleted. An item lists (and gets a tag feed for) its first ``max_tags`` tags;
    at most ``max_tag_feeds`` tags get a feed. Raises ``RenderError`` when feedgen refuses
    the data: the newsletter's own fields are checked before anything is written. Raises
    ``OSError`` when a file cannot be written or removed.

    ``related`` maps an article's id to the other versions of its story (``grouping``): every
    item stays (a feed reader expects each source's), and each links to the others.
    """
    writer = _Writer(newsletter, settings)
    main = _Feed.main(newsletter)
    writer.render(_Doc(main, page=None, items=(), prev_page=None, next_page=None))
    everything = _Pager(main, writer, settings)
    # The tag -> articles index is built in this one pass over the history: each item is
    # added to its own tags' pagers, so the work is the number of (article, tag) pairs, and
    # every tag document lists each of its items' few tags, never every tag there is.
    pagers: dict[str, _Pager] = {}  # by tag slug
    tag_names: dict[str, str] = {}
    without_feed: set[str] = set()
    for article in history:
        item = _Item(article, max_tags, related.get(article.id, ()) if related else ())
        everything.add(item)
        for slug, name in item.tag_slugs:
            pager = pagers.get(slug)
            if pager is None:
                if len(pagers) >= max_tag_feeds:
                    without_feed.add(slug)
                    continue
                # A tag's name is its spelling on the oldest article that carries it: fixed
                # once written, whatever later articles call it.
                tag_names[slug] = name
                feed = _Feed.tag(newsletter, name=name, slug=slug)
                pager = pagers[slug] = _Pager(feed, writer, settings)
            pager.add(item)
    everything.finish()
    for slug in sorted(pagers):
        pagers[slug].finish()
    if without_feed:
        log.warning(
            "%d tags get no feed of their own: at most %d tag feeds are written (the tags "
            "that appeared first)",
            len(without_feed),
            max_tag_feeds,
        )
    tags = [TagFeed(name=tag_names[slug], slug=slug) for slug in sorted(tag_names)]
    writer.finish_tags(tags)
    return WrittenFeeds(
        tuple(writer.written), tuple(writer.changed), tuple(writer.removed), len(without_feed)
    )


# --- what goes where ----------------------------------------------------------------------------


class _Item:
    """One article's feed fields, cleaned once and shared by every document that lists it."""

    def __init__(
        self,
        article: Article,
        max_tags: int = MAX_ITEM_TAGS,
        related: Sequence[RelatedLink] = (),
    ) -> None:
        self.id = _clean(article.uid)
        # Titles, names and tags are one line of text: no control character a source sent
        # (stored before gathering scrubbed them) reaches a reader.
        self.title = _clean(clean_line(article.title)) or UNTITLED
        self.url = _clean(article.url) if article.url else None
        self.author = _clean(clean_line(article.author or "")) or None
        self.published = _date(article.published)
        # A source that dates an update before the publication is wrong; readers sort by it.
        self.updated = max(_date(article.updated), self.published)
        self.order = (self.published, article.id)
        self.summary_html = _clean(article.summary)
        # Full content where the source gave it; the summary is all we have otherwise. With
        # neither, the title (linked): RSS items need a title or a description, but Atom
        # entries without content draw a validator warning, and JSON Feed items need content.
        self.content_html = _clean(article.content) or self.summary_html
        if not self.content_html.strip():
            text = escape(self.title, quote=False)
            link = f'<a href="{escape(self.url)}">{text}</a>' if self.url else text
            self.content_html = f"<p>{link}</p>"
        tags = dict.fromkeys(t for t in (_tag_name(t) for t in article.tags) if t)
        self.tags = list(tags)[:max_tags]
        slugs: dict[str, str] = {}
        for tag in self.tags:
            slugs.setdefault(tag_slug(tag), tag)
        self.tag_slugs = list(slugs.items())
        image = _clean(article.image_url) if article.image_url else None
        self.image_url = image if _is_web_url(image) else None
        suffix = Path(urlsplit(self.image_url).path).suffix.lower() if self.image_url else ""
        self.image_type = _IMAGE_TYPES.get(suffix)
        # The other versions of the same story. XML links need an href: one without a web
        # address is listed in JSON Feed only, by its id.
        self.related = [
            RelatedLink(_clean(r.uid), _clean(r.url) if r.url and _is_web_url(r.url) else None)
            for r in related
        ]


@dataclass(frozen=True)
class _Feed:
    """One logical feed: the main one, or one tag's. ``root`` is its folder ("" or
    "tags/<slug>/") relative to the output folder."""

    root: str
    id: str
    title: str
    description: str

    @classmethod
    def main(cls, newsletter: NewsletterSettings) -> _Feed:
        title = _clean(newsletter.title)
        # RSS requires a non-empty channel description (RSS 2.0 "Required channel elements").
        return cls("", newsletter.site_url, title, _clean(newsletter.description) or title)

    @classmethod
    def tag(cls, newsletter: NewsletterSettings, *, name: str, slug: str) -> _Feed:
        root = f"{TAGS_DIR}/{slug}/"
        title = _clean(newsletter.title)
        return cls(
            root,
            feed_url(newsletter, root),
            f"{title}: {name}",
            f"Articles tagged “{name}” in {title}.",
        )


@dataclass(frozen=True)
class _Doc:
    """One document in three formats: a feed's current document (``page`` None) or one of
    its archive pages. ``items`` are in document order."""

    feed: _Feed
    page: int | None
    items: Sequence[_Item]
    prev_page: int | None  # the older page this one links to ("prev-archive")
    next_page: int | None  # the newer page ("next-archive"); current feeds have none

    def folder(self, page: int | None) -> str:
        return self.feed.root if page is None else f"{self.feed.root}{PAGES_DIR}/{page}/"

    @property
    def updated(self) -> datetime:
        return max((i.updated for i in self.items), default=EMPTY_FEED_UPDATED)


class _Pager:
    """Cuts one feed's articles, arriving oldest first, into archive pages, and writes each
    page once the next one has filled (a page links to the one after it). Holds at most the
    page being filled, the last full page and the newest ``max_items`` articles."""

    def __init__(self, feed: _Feed, writer: _Writer, settings: FeedSettings) -> None:
        self.feed = feed
        self.writer = writer
        # The config refuses a page larger than the current feed: the newest partial page,
        # covered by no archive page yet, would not fit in it, and articles would be lost.
        self.size = min(settings.page_size, settings.max_items)
        self.recent: deque[_Item] = deque(maxlen=settings.max_items)
        self.filling: list[_Item] = []
        self.full: list[_Item] | None = None  # page number ``self.pages``, not yet written
        self.pages = 0

    def add(self, item: _Item) -> None:
        self.recent.append(item)
        self.filling.append(item)
        if len(self.filling) == self.size:
            if self.full is not None:
                self._write_page(self.full, self.pages, has_next=True)
            self.full, self.filling = self.filling, []
            self.pages += 1

    def finish(self) -> None:
        if self.full is not None:
            self._write_page(self.full, self.pages, has_next=False)
        self.writer.write(
            _Doc(
                self.feed,
                page=None,
                items=_newest_first(self.recent),
                prev_page=self.pages or None,
                next_page=None,
            )
        )
        self.writer.prune_pages(self.feed, self.pages)

    def _write_page(self, items: list[_Item], page: int, *, has_next: bool) -> None:
        self.writer.write(
            _Doc(
                self.feed,
                page=page,
                items=_newest_first(items),
                prev_page=page - 1 if page > 1 else None,
                next_page=page + 1 if has_next else None,
            )
        )


class _Writer:
    """Renders documents, writes the files that changed, and deletes stale ones."""

    def __init__(self, newsletter: NewsletterSettings, settings: FeedSettings) -> None:
        self.newsletter = newsletter
        self.settings = settings
        self.out = settings.output_dir
        self.written: list[Path] = []
        self.changed: list[str] = []
        self.removed: list[Path] = []

    def render(self, doc: _Doc) -> dict[str, bytes]:
        return {
            RSS_FILE: _rss_bytes(doc, self.newsletter, self.settings),
            ATOM_FILE: _atom_bytes(doc, self.newsletter, self.settings),
            JSON_FILE: _json_bytes(doc, self.newsletter, self.settings),
        }

    def write(self, doc: _Doc) -> None:
        folder = doc.folder(doc.page)
        for name, data in self.render(doc).items():
            path = self.out / folder / name
            if atomic_write(path, data):
                log.info("wrote %s (%d items)", path, len(doc.items))
                self.written.append(path)
                if doc.page is None:
                    self.changed.append(feed_url(self.newsletter, folder + name))
            else:
                log.debug("%s unchanged", path)

    def prune_pages(self, feed: _Feed, pages: int) -> None:
        """Delete the pages of ``feed`` past ``pages`` (articles were deleted)."""
        folder = self.out / feed.root / PAGES_DIR
        for page_dir in _page_dirs(folder):
            if int(page_dir.name) > pages:
                self._remove_documents(page_dir)
        _remove_if_empty(folder)

    def finish_tags(self, tags: Sequence[TagFeed]) -> None:
        """Write the tag index and delete the feeds of tags that no longer exist."""
        folder = self.out / TAGS_DIR
        live = {t.slug for t in tags}
        if folder.is_dir():
            for tag_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                if tag_dir.name not in live:
                    log.info("removing the feeds of a tag no article carries: %s", tag_dir)
                    for page_dir in _page_dirs(tag_dir / PAGES_DIR):
                        self._remove_documents(page_dir)
                    _remove_if_empty(tag_dir / PAGES_DIR)
                    self._remove_documents(tag_dir)
        if not tags and not (folder / TAG_INDEX).exists():
            return
        index = {"tags": [{"slug": t.slug, "name": t.name} for t in tags]}
        text = json.dumps(index, ensure_ascii=False, indent=2) + "\n"
        atomic_write(folder / TAG_INDEX, text.encode("utf-8"))

    def _remove_documents(self, folder: Path) -> None:
        """Delete our three files in ``folder``, then the folder if nothing else is left."""
        for name in FEED_FILES:
            path = folder / name
            if path.is_file():
                path.unlink()
                self.removed.append(path)
                log.info("removed %s", path)
        _remove_if_empty(folder)


def _page_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _newest_first(items: Iterable[_Item]) -> list[_Item]:
    return sorted(items, key=lambda i: i.order, reverse=True)


def _links(
    doc: _Doc, newsletter: NewsletterSettings, hub: str | None, file: str
) -> list[dict[str, str]]:
    """The feed-level links of ``doc`` in the format of ``file``, except the site's own page."""
    kind = MEDIA_TYPES[file]

    def to(page: int | None) -> str:
        return feed_url(newsletter, doc.folder(page) + file)

    links = [{"href": to(doc.page), "rel": "self", "type": kind}]
    if doc.page is None:
        if hub:
            links.append({"href": hub, "rel": "hub"})
    else:
        links.append({"href": to(None), "rel": "current", "type": kind})
    if doc.prev_page is not None:
        links.append({"href": to(doc.prev_page), "rel": "prev-archive", "type": kind})
    if doc.next_page is not None:
        links.append({"href": to(doc.next_page), "rel": "next-archive", "type": kind})
    return links


def _clean(text: str) -> str:
    return _NOT_XML_CHAR.sub("", text)


def _tag_name(tag: str) -> str:
    """A tag as feeds show it (in categories and in its feed's title): one clean line."""
    name = _clean(clean_line(tag))
    return name if len(name) <= MAX_TAG_CHARS else shorten(name, MAX_TAG_CHARS)


def _tag_key(tag: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", tag).casefold().split())


def _date(value: datetime) -> datetime:
    return max(value.astimezone(UTC), _OLDEST_DATE)


def _is_web_url(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


# --- RSS and Atom, through feedgen -------------------------------------------------------------


@contextmanager
def _feedgen_errors(file: str) -> Iterator[None]:
    """The feedgen boundary. feedgen has no exceptions of its own: it raises ``ValueError``,
    ``ImportError`` and not-implemented errors for bad input and lets lxml's errors through,
    so everything raised while it builds a document becomes one ``RenderError``."""
    try:
        yield
    except Exception as e:
        raise RenderError(f"cannot build the feed: {e}", template=file) from e


class _FeedExtension:
    """What feedgen cannot say at the feed level, added to the tree it builds (feedgen's
    extension protocol: ``extend_ns``, ``extend_rss``, ``extend_atom``).

    RSS: feedgen writes only the ``self`` atom:link, so the others (hub, RFC 5005) are added
    here. Both: RFC 5005's ``<fh:archive/>`` on archive pages.
    """

    def __init__(self) -> None:
        self.rss_links: list[dict[str, str]] = []
        self.archive = False

    def extend_ns(self) -> dict[str, str]:
        return {"fh": FH_NS} if self.archive else {}

    def extend_rss(self, rss: Any) -> Any:
        channel = rss.find("channel")
        for link in self.rss_links:
            xml_elem(f"{{{ATOM_NS}}}link", channel, **link)
        if self.archive:
            xml_elem(f"{{{FH_NS}}}archive", channel)
        return rss

    def extend_atom(self, feed: Any) -> Any:
        if self.archive:
            xml_elem(f"{{{FH_NS}}}archive", feed)
        return feed


class _EntryExtension:
    """Per entry: feedgen 1.0 drops ``rel`` and ``type`` from an Atom entry's links (it reads
    them back from the element it has just created), and its enclosures share that path, so
    an Atom enclosure would come out as a second, untyped "alternate" link. The article link
    is put back in shape here and the lead image added in both formats."""

    def __init__(self) -> None:
        self.item: _Item | None = None

    def extend_ns(self) -> dict[str, str]:
        return {}

    def extend_atom(self, entry: Any) -> Any:
        for link in entry.findall("link"):
            if "rel" not in link.attrib:  # the only link feedgen is given is the article's
                link.set("rel", "alternate")
                link.set("type", "text/html")
        item = self.item
        if item is not None and item.image_url and item.image_type:
            # Atom's length is optional (RFC 4287 4.2.7.6): left out rather than guessed.
            attrs = {"href": item.image_url, "rel": "enclosure", "type": item.image_type}
            xml_elem("link", entry, **attrs)
        if item is not None:
            # RFC 4287 4.2.7.2: "related" is a resource related to the entry, here the same
            # story told by another source; any number of them is allowed.
            for other in item.related:
                if other.url:
                    xml_elem("link", entry, href=other.url, rel="related", type="text/html")
        return entry

    def extend_rss(self, element: Any) -> Any:
        item = self.item
        if item is not None and item.image_url and item.image_type:
            # RSS 2.0 requires url, length and type. We never fetch the image to learn its
            # size; the RSS Best Practices Profile says a publisher that cannot determine
            # it SHOULD use 0, which the W3C validator accepts.
            attrs = {"url": item.image_url, "length": "0", "type": item.image_type}
            xml_elem("enclosure", element, **attrs)
        if item is not None:
            # RSS 2.0 has no element for a related link. RSS allows namespaced elements in an
            # item, and atom:link is the one RSS readers already know (feedparser reads it
            # into the entry's links with its rel), as the channel's self link does.
            for other in item.related:
                if other.url:
                    attrs = {"href": other.url, "rel": "related", "type": "text/html"}
                    xml_elem(f"{{{ATOM_NS}}}link", element, **attrs)
        return element


def _generator(doc: _Doc, newsletter: NewsletterSettings, settings: FeedSettings, file: str) -> Any:
    fg = FeedGenerator()
    # RSS has no author element without an e-mail address; Dublin Core's creator carries the
    # name (the usual practice, and what feedparser reads back as the author). Atom has
    # <author><name> of its own, so the extension is RSS-only.
    fg.load_extension("dc", atom=False, rss=True)
    fg.register_extension("nl", _FeedExtension, _EntryExtension, atom=True, rss=True)
    fg.id(doc.feed.id)
    fg.title(doc.feed.title)
    fg.description(doc.feed.description)
    # Atom requires an author on the feed unless every entry has one (RFC 4287 4.1.1).
    fg.author({"name": _clean(newsletter.sender_name)})
    links = _links(doc, newsletter, settings.websub_hub, file)
    for link in links:
        fg.link(**link)
    fg.nl.rss_links = [link for link in links if link["rel"] != "self"]
    fg.nl.archive = doc.page is not None
    # Added last on purpose: feedgen uses the last link it was given as the RSS <link>.
    fg.link(href=newsletter.site_url, rel="alternate", type="text/html")
    fg.language(newsletter.language)
    fg.ttl(settings.ttl_minutes)
    fg.docs(RSS_DOCS)
    if file == RSS_FILE:
        # RSS's <generator> is one string; feedgen would write the bare name.
        fg.generator(f"{GENERATOR} {__version__}")
    else:
        fg.generator(GENERATOR, version=__version__, uri=GENERATOR_URI)
    # feedgen stamps lastBuildDate and <updated> with the current time unless told otherwise.
    fg.updated(doc.updated)
    for item in doc.items:
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
        entry.nl.item = item
    return fg


def _rss_bytes(doc: _Doc, newsletter: NewsletterSettings, settings: FeedSettings) -> bytes:
    with _feedgen_errors(RSS_FILE):
        fg = _generator(doc, newsletter, settings, RSS_FILE)
        data: bytes = fg.rss_str(pretty=True)
    return data


def _atom_bytes(doc: _Doc, newsletter: NewsletterSettings, settings: FeedSettings) -> bytes:
    with _feedgen_errors(ATOM_FILE):
        fg = _generator(doc, newsletter, settings, ATOM_FILE)
        data: bytes = fg.atom_str(pretty=True)
    return data


# --- JSON Feed ----------------------------------------------------------------------------------


def _json_bytes(doc: _Doc, newsletter: NewsletterSettings, settings: FeedSettings) -> bytes:
    """JSON Feed 1.1 (https://www.jsonfeed.org/version/1.1/)."""
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": doc.feed.title,
        "home_page_url": newsletter.site_url,
        "feed_url": feed_url(newsletter, doc.folder(None) + JSON_FILE),
    }
    if doc.prev_page is not None:
        feed["next_url"] = feed_url(newsletter, doc.folder(doc.prev_page) + JSON_FILE)
    if newsletter.description or doc.feed.root:
        feed["description"] = doc.feed.description
    feed["language"] = newsletter.language
    feed["authors"] = [{"name": _clean(newsletter.sender_name)}]
    if doc.page is None and settings.websub_hub:
        feed["hubs"] = [{"type": "WebSub", "url": settings.websub_hub}]
    feed["items"] = [_json_item(item) for item in doc.items]
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
    if item.related:
        # JSON Feed 1.1 has no related items; an extension object (its key starts with "_",
        # which readers that do not know it ignore) carries them with their ids, the ones
        # every format shares, so a reader can merge the story as the digest does.
        out[JSON_EXTENSION] = {
            "about": GENERATOR_URI,
            "related": [{"id": r.uid, **({"url": r.url} if r.url else {})} for r in item.related],
        }
    return out
