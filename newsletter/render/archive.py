"""Write the web archive: one standalone page per digest, and an index linking every issue.

Layout, under the feeds' output folder (served at ``<site_url>archive/``)::

    archive/index.html                  every issue, newest first, with feed autodiscovery
                                        and a link to each tag's feeds
    archive/<YYYY-MM-DD>-<uid>.html     one digest as a web page
    archive/articles/<slug>-<id>.html   one article that has no link of its own (an
                                        editor's Markdown without a ``url``), in full

A page's name comes from the digest's creation date (UTC, so that changing the newsletter's
time zone never renames a page) and its ``uid``, the random id that is also part of every
Message-ID of that digest. Both are known before the digest is stored, so the digest can carry
its own "view in your browser" link (``page_url``), and the name never changes afterwards.

A page is the digest's inlined HTML exactly as stored, with the per-recipient placeholders
filled for an anonymous reader (``anonymous_values``): no name, no address, and an
"unsubscribe" link to the site's subscription page instead of anyone's personal token, so a
shared link unsubscribes nobody.

An article without a link of its own gets a page: its name is a slug of its key (a Markdown
file's name, or its ``id``) and the first hex digits of its public ``uid``, both fixed once the
article is stored, so the link in the feeds and the digests never changes when its title is
edited. The page has the site's look, the feeds' autodiscovery links and a subscribe form
(template ``article.html``); ``with_page_link`` gives such an article that page as its ``url``.

Owns: the archive's file names and URLs, filling pages and rendering the index (template
``archive.html``) and the article pages (``article.html``), found like every other template.
Does not own: choosing or storing digests (``core``, ``storage``) or serving the files (the
web app, or any static host).
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from newsletter.config import NewsletterSettings
from newsletter.files import atomic_write
from newsletter.personalize import Template
from newsletter.render.digest import DigestRenderer, template_errors
from newsletter.render.feeds import ATOM_FILE, JSON_FILE, RSS_FILE, read_tag_index
from newsletter.types import Article, Digest

log = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"
INDEX_FILE = "index.html"
INDEX_TEMPLATE = "archive.html"
ARTICLES_DIR = "articles"  # under ARCHIVE_DIR
ARTICLE_TEMPLATE = "article.html"
_SLUG_MAX = 60
FEEDS_PATH = "feeds/"  # where render.feeds says the feeds live under the site URL
# Where the anonymous copy's "unsubscribe" link goes: the page that explains how to subscribe
# and leave. Only the link in each subscriber's own copy carries a token.
SUBSCRIBE_PATH = "subscribe"


@dataclass(frozen=True)
class FeedLink:
    """One feed as the index links it (``<link rel="alternate">`` and a visible link)."""

    url: str
    type: str  # media type, as feed readers expect it in autodiscovery
    title: str
    label: str


@dataclass(frozen=True)
class TagFeeds:
    """One tag's feeds, as the index lists them (never in autodiscovery: that is for the
    newsletter's own feeds)."""

    name: str
    feeds: tuple[FeedLink, ...]


@dataclass(frozen=True)
class Issue:
    """One digest as the index lists it."""

    url: str  # relative to the index
    subject: str
    preheader: str
    date: datetime  # creation time, aware


def page_name(created_at: datetime, uid: str) -> str:
    """The file name of a digest's page: ``<YYYY-MM-DD>-<uid>.html`` (UTC date)."""
    return f"{created_at.astimezone(UTC):%Y-%m-%d}-{uid}.html"


def index_url(newsletter: NewsletterSettings) -> str:
    """The archive's public URL (its index page)."""
    return f"{newsletter.site_url}{ARCHIVE_DIR}/"


def page_url(newsletter: NewsletterSettings, created_at: datetime, uid: str) -> str:
    """The public URL of a digest's page: the "view in your browser" link."""
    return index_url(newsletter) + page_name(created_at, uid)


def article_page_name(article: Article) -> str:
    """The file name of an article's page: ``<slug>-<8 hex digits of its uid>.html``.

    The slug is the last segment of the article's key (``folder:notes/welcome.md`` gives
    ``welcome``), the uid's digits keep two articles with the same file name in two folders
    (or two sources) apart."""
    stem = article.key.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    stem = stem[:-3] if stem.lower().endswith(".md") else stem
    ascii_text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:_SLUG_MAX].rstrip("-")
    digits = re.sub(r"[^0-9a-f]", "", article.uid.removeprefix("urn:uuid:").lower())[:8]
    return f"{slug or 'article'}-{digits}.html"


def article_page_url(newsletter: NewsletterSettings, article: Article) -> str:
    """The public URL of an article's page in the archive."""
    return f"{index_url(newsletter)}{ARTICLES_DIR}/{article_page_name(article)}"


def with_page_link(newsletter: NewsletterSettings, article: Article) -> Article:
    """``article`` with its archive page as its ``url`` when it has no link of its own (an
    editor's Markdown without ``url``): the link the feeds and the digest show."""
    if article.url:
        return article
    return replace(article, url=article_page_url(newsletter, article))


def anonymous_values(newsletter: NewsletterSettings, greeting_fallback: str) -> dict[str, str]:
    """Placeholder values for a reader we do not know: the archive's copy of a digest.

    ``email`` becomes "you", so the default footer reads "because you subscribed".
    """
    return {
        "email": "you",
        "name": "",
        "first_name": greeting_fallback,
        "unsubscribe_url": newsletter.site_url + SUBSCRIBE_PATH,
    }


_FORMATS = (
    (RSS_FILE, "application/rss+xml", "RSS"),
    (ATOM_FILE, "application/atom+xml", "Atom"),
    (JSON_FILE, "application/feed+json", "JSON Feed"),
)


def feed_links(newsletter: NewsletterSettings) -> tuple[FeedLink, ...]:
    base = newsletter.site_url + FEEDS_PATH
    title = newsletter.title
    return tuple(
        FeedLink(base + file, kind, f"{title} ({label})", label) for file, kind, label in _FORMATS
    )


def tag_feed_links(newsletter: NewsletterSettings, output_dir: Path) -> tuple[TagFeeds, ...]:
    """The feeds of every tag that has them (``render.feeds`` keeps the list), by slug."""
    out = []
    for tag in read_tag_index(output_dir):
        title = f"{newsletter.title}: {tag.name}"
        out.append(
            TagFeeds(
                tag.name,
                tuple(
                    FeedLink(tag.url(newsletter, file), kind, f"{title} ({label})", label)
                    for file, kind, label in _FORMATS
                ),
            )
        )
    return tuple(out)


def write_archive(
    digests: Sequence[Digest], *, renderer: DigestRenderer, output_dir: Path
) -> list[Path]:
    """Write a page for each digest and the index into ``output_dir/archive``.

    Returns the files (re)written; a file whose content is unchanged is left alone, so
    rebuilding an unchanged archive writes nothing. Pages of digests that are no longer
    stored are not deleted. Raises ``RenderError`` for a broken ``archive.html`` and
    ``OSError`` when a file cannot be written.
    """
    newsletter = renderer.newsletter
    folder = output_dir / ARCHIVE_DIR
    values = anonymous_values(newsletter, renderer.settings.greeting_fallback)
    discovery = _discovery_tags(feed_links(newsletter))
    outputs: dict[str, str] = {}
    newest_first = sorted(digests, key=lambda d: (d.created_at, d.id), reverse=True)
    for digest in newest_first:
        page = Template(digest.html, is_html=True).fill(values)
        outputs[page_name(digest.created_at, digest.uid)] = _add_to_head(page, discovery)
    issues = [
        Issue(
            url=page_name(d.created_at, d.uid),
            subject=d.subject,
            preheader=d.preheader,
            date=d.created_at,
        )
        for d in newest_first
    ]
    tags = tag_feed_links(newsletter, output_dir)
    with template_errors(INDEX_TEMPLATE):
        index = renderer.env.get_template(INDEX_TEMPLATE).render(
            newsletter=newsletter, issues=issues, feeds=feed_links(newsletter), tag_feeds=tags
        )
    outputs[INDEX_FILE] = _add_tag_feeds(index, tags)
    written = []
    for name, text in outputs.items():
        path = folder / name
        if atomic_write(path, text.encode()):
            written.append(path)
    if written:
        log.info("archive: wrote %d files in %s (%d issues)", len(written), folder, len(issues))
    return written


def write_article_pages(
    articles: Iterable[Article],
    *,
    renderer: DigestRenderer,
    output_dir: Path,
    has_issues: bool = True,
) -> list[Path]:
    """Write the page of each article in ``articles`` that has no link of its own into
    ``output_dir/archive/articles`` (template ``article.html``). Without ``has_issues`` (no
    digest yet, so no archive index) the pages link to no past issues.

    Returns the files (re)written; unchanged pages are left alone. Raises ``RenderError`` for
    a broken template and ``OSError`` when a file cannot be written.
    """
    newsletter = renderer.newsletter
    folder = output_dir / ARCHIVE_DIR / ARTICLES_DIR
    feeds = feed_links(newsletter)
    written = []
    with template_errors(ARTICLE_TEMPLATE):
        template = renderer.env.get_template(ARTICLE_TEMPLATE)
        for article in articles:
            if article.url:
                continue
            page = template.render(
                newsletter=newsletter,
                article=article,
                url=article_page_url(newsletter, article),
                feeds=feeds,
                archive_url=index_url(newsletter) if has_issues else None,
                subscribe_url=newsletter.site_url + SUBSCRIBE_PATH,
            )
            path = folder / article_page_name(article)
            if atomic_write(path, page.encode()):
                written.append(path)
    if written:
        log.info("archive: wrote %d article pages in %s", len(written), folder)
    return written


def _discovery_tags(feeds: Sequence[FeedLink]) -> str:
    return "".join(
        f'<link rel="alternate" type="{f.type}" title="{html.escape(f.title)}" '
        f'href="{html.escape(f.url)}">\n'
        for f in feeds
    )


def _add_tag_feeds(page: str, tags: Sequence[TagFeeds]) -> str:
    """``page`` with a list of the tag feeds before its ``<footer>`` (else at the end of its
    ``<main>`` or ``<body>``), unless the template listed them itself (its context has
    ``tag_feeds``)."""
    if not tags or tags[0].feeds[0].url in page:
        return page
    rows = "".join(
        f"<li>{html.escape(t.name)}: "
        + ", ".join(f'<a href="{html.escape(f.url)}">{f.label}</a>' for f in t.feeds)
        + "</li>\n"
        for t in tags
    )
    section = f'<section class="tag-feeds">\n<h2>Feeds by tag</h2>\n<ul>\n{rows}</ul>\n</section>\n'
    lower = page.lower()
    for mark in ("<footer", "</main>", "</body>"):
        at = lower.rfind(mark)
        if at >= 0:
            return page[:at] + section + page[at:]
    return page + section


def _add_to_head(page: str, tags: str) -> str:
    """``page`` with ``tags`` at the end of its ``<head>`` (unchanged when it has none)."""
    at = page.lower().find("</head>")
    if at < 0:
        return page
    return page[:at] + tags + page[at:]
