"""Feed sources: RSS 0.9x/1.0/2.0 and Atom (through feedparser) and JSON Feed 1.0/1.1 (ours).

Owns: telling the formats apart, and mapping what the parsers found to ``EntryData``. Parsing
errors are wrapped here, once, into ``SourceError``.

Entries' pages are fetched for their full text (``full_text``) by ``newsletter.sources.fulltext``.

Does not own: getting the document's bytes (``newsletter.sources.fetch``: the conditional GET,
permanent redirects, the size cap, the total deadline, the charset from ``Content-Type``, the
mtime/size validator of a local file), sanitizing HTML, resolving links, choosing article keys
(``newsletter.gather``), remembering validators or redirects (``newsletter.storage``), retrying
a failed fetch (the next gather run is the retry).

feedparser is called on bytes we downloaded ourselves, never on a URL, with its own sanitizer off
(there is one sanitizer, in ``gather``) and without the document's URL: feedparser resolves RSS
``<guid>`` values against the document URL, which would change every article's identity when a
feed moves. Relative links are resolved later against ``FetchResult.base_url`` instead.
"""

from __future__ import annotations

import html
import io
import json
import logging
import xml.sax
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self

import feedparser
import requests

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext
from newsletter.sources.fetch import Fetcher, is_http
from newsletter.sources.fulltext import FullText
from newsletter.sources.settings import FeedSettings
from newsletter.types import EntryData, FetchResult, SourceState

log = logging.getLogger(__name__)

__all__ = ["FeedSource"]

_JSON_TYPES = frozenset({"application/feed+json", "application/json"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9,"
    " application/xml;q=0.9, application/json;q=0.8, text/xml;q=0.8, */*;q=0.5"
)


class _Unreadable(Exception):
    """Raised by the parsing helpers; ``FeedSource`` turns it into ``SourceError``."""


class FeedSource:
    """A feed at an http(s) URL or in a local file (``FeedSettings.url`` or ``.path``)."""

    def __init__(
        self, config: SourceConfig, *, session: requests.Session, http: HttpSettings
    ) -> None:
        options = config.options
        if not isinstance(options, FeedSettings) or (options.url is None) == (options.path is None):
            raise ConfigError(f"feed source {config.name!r} needs exactly one of `url` or `path`")
        self.name = config.name
        self.location = config.location
        self._options = options
        self._fetcher = Fetcher(session, user_agent=http.user_agent, accept=_ACCEPT)
        self._full_text = (
            None
            if options.full_text == "never"
            else FullText(
                session,
                user_agent=http.user_agent,
                mode=options.full_text,
                min_chars=options.full_text_min_chars,
                timeout=options.timeout,
                max_bytes=options.max_bytes,
            )
        )

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, session=context.session, http=context.http)

    def __repr__(self) -> str:
        return f"FeedSource({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        fetched = self._fetcher.document(self._options, state, source=self.name)
        if fetched.not_modified:
            return FetchResult(
                not_modified=True, etag=fetched.etag, permanent_url=fetched.permanent_url
            )
        file = self._options.path
        media_type = fetched.media_type
        # A file has no Content-Type; its suffix is the only label it carries.
        if file is not None and file.suffix.lower() == ".json":
            media_type = "application/feed+json"
        try:
            entries, own_link, warning = _parse_document(fetched.body, media_type, fetched.charset)
        except _Unreadable as e:
            raise SourceError(str(e), source=self.name, url=fetched.url) from e
        # A relative link in a feed is relative to the feed document itself; a file has no
        # useful URL of its own, so the feed's link is the next best base.
        base_url = own_link if file is not None else fetched.url
        pages = None
        problems: tuple[str, ...] = ()
        if self._full_text is not None:
            completed = self._full_text.complete(
                entries, source=self.name, base_url=base_url, cached=state.pages
            )
            entries, pages, problems = completed.entries, completed.pages, completed.problems
        return FetchResult(
            entries=entries,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            permanent_url=fetched.permanent_url,
            base_url=base_url,
            warning=warning,
            problems=problems,
            pages=pages,
        )


# --- parsing -------------------------------------------------------------------------------------


def _parse_document(
    body: bytes, media_type: str, charset: str | None
) -> tuple[tuple[EntryData, ...], str | None, str | None]:
    """Parse a feed document of any supported format.

    Returns (entries, the feed's own link, a warning or None). ``media_type`` and ``charset``
    come from the HTTP ``Content-Type``: the first helps pick JSON Feed, the second is the
    charset of an XML feed. Raises ``_Unreadable`` when the document is not a feed at all.
    """
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    # Servers mislabel feeds often; the first byte is a better witness than the header.
    if start == b"{" or (start != b"<" and media_type in _JSON_TYPES):
        return _parse_json_feed(body)
    return _parse_xml_feed(body, charset)


def _parse_xml_feed(
    body: bytes, charset: str | None
) -> tuple[tuple[EntryData, ...], str | None, str | None]:
    # RFC 7303 (which replaced RFC 3023) lets the XML declaration decide the encoding when the
    # header gives no charset, whatever the media type; feedparser still applies RFC 3023's
    # "text/xml means US-ASCII" rule. So it gets the charset alone, under a neutral media type.
    content_type = "application/xml" + (f"; charset={charset}" if charset else "")
    try:
        parsed = feedparser.parse(
            io.BytesIO(body),
            response_headers={"content-type": content_type},
            sanitize_html=False,
        )
    except Exception as failure:
        # feedparser reports most damage as "bozo", but some documents make it raise: a
        # character reference to a surrogate or past U+10FFFF (ValueError, UnicodeError), an
        # encoding name with a NUL or bytes that are not UTF-8 in it. Nothing but feedparser runs
        # inside this call, so whatever it raised is about the document.
        reason = f"{type(failure).__name__}: {failure}"
        raise _Unreadable(f"not a readable feed ({reason})") from failure
    feed = parsed.get("feed", {})
    entries = parsed.get("entries", [])
    warning = _bozo_message(parsed.get("bozo_exception")) if parsed.get("bozo") else None
    if not entries:
        if parsed.get("bozo") and not feed.get("title"):
            raise _Unreadable(f"not a readable feed ({warning})")
        if not parsed.get("version"):
            raise _Unreadable("not an RSS, Atom or JSON feed")
    own_link = feed.get("link")
    feed_author = _person(feed.get("author_detail")) or feed.get("author")
    problems: list[str] = []
    mapped: list[EntryData] = []
    for number, e in enumerate(entries, 1):
        try:
            mapped.append(_entry(e, feed_author))
        except Exception as exc:
            # One entry feedparser handed over in a shape we did not expect is that entry's
            # problem: skip it and say so, never the whole feed.
            log.exception("cannot read entry %d of a feed", number)
            problems.append(f"item {number}: skipped ({type(exc).__name__}: {_short(exc)})")
    if problems:
        warning = "; ".join(p for p in (warning, _summarize(problems)) if p)
    # A document cut off inside an item leaves feedparser an empty entry; it is not an entry.
    kept = tuple(e for e in mapped if e.title or e.guid or e.url or e.content or e.summary)
    return kept, own_link if own_link and is_http(own_link) else None, warning


def _summarize(problems: Sequence[str], shown: int = 5) -> str | None:
    """One warning line: the first few problems, then how many more (a feed of 10,000 bad
    items must not make a 10,000-part warning)."""
    if not problems:
        return None
    rest = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {rest:,} more" if rest > 0 else "")


def _short(value: object, limit: int = 120) -> str:
    """``value`` as text for a warning: a hostile document can make it any length."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bozo_message(exc: object) -> str:
    if isinstance(exc, xml.sax.SAXParseException):
        return f"malformed XML at line {exc.getLineNumber()}: {exc.getMessage()}"
    return str(exc) or type(exc).__name__


def _entry(e: Any, feed_author: str | None) -> EntryData:
    content = _content(e.get("content") or ())
    summary_detail = e.get("summary_detail")
    summary = _as_html(summary_detail) if summary_detail else e.get("summary")
    # feedparser copies an Atom entry's content into its summary when there is no summary;
    # that is not a summary, and gather derives a short one instead.
    if summary is not None and content is not None and summary.strip() == content.strip():
        summary = None
    return EntryData(
        title=e.get("title") or "",
        guid=e.get("id") or None,
        url=e.get("link") or None,
        # RFC 4287, 4.2.1: an entry without an author has the feed's.
        author=_person(e.get("author_detail")) or e.get("author") or feed_author,
        published=_datetime(e.get("published_parsed")),
        # dict.get, not e.get: for a missing "updated_parsed" feedparser's own get returns
        # "published_parsed" (and warns); gather makes that fallback itself, knowingly.
        updated=_datetime(dict.get(e, "updated_parsed")),
        summary=summary or None,
        content=content,
        tags=tuple(t["term"] for t in e.get("tags") or () if t.get("term")),
        image_url=_image(e),
    )


def _content(items: Sequence[Mapping[str, Any]]) -> str | None:
    for item in items:
        if item.get("type") in _HTML_TYPES:
            return str(item.get("value", "")) or None
    return _as_html(items[0]) if items else None


def _as_html(detail: Mapping[str, Any]) -> str | None:
    value = detail.get("value")
    if not value:
        return None
    if detail.get("type") == "text/plain":
        return html.escape(str(value))
    return str(value)


def _person(detail: Mapping[str, Any] | None) -> str | None:
    name = detail.get("name") if detail else None
    return str(name) if name else None


def _datetime(parsed: Any) -> datetime | None:
    """feedparser's ``*_parsed`` values are UTC ``struct_time`` tuples."""
    if not parsed:
        return None
    try:
        year, month, day, hour, minute, second = parsed[:6]
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        # Out of datetime's range (year 0) or not a time tuple: no date, rather than no entry.
        # A date that is merely absurd (year 9999) is kept here and clamped by gather.
        return None


def _image(e: Any) -> str | None:
    for media in e.get("media_content") or ():
        kind = str(media.get("type", ""))
        if media.get("url") and (media.get("medium") == "image" or kind.startswith("image/")):
            return str(media["url"])
    for thumb in e.get("media_thumbnail") or ():
        if thumb.get("url"):
            return str(thumb["url"])
    for enclosure in e.get("enclosures") or ():
        if str(enclosure.get("type", "")).startswith("image/") and enclosure.get("href"):
            return str(enclosure["href"])
    return None


# --- JSON Feed (https://www.jsonfeed.org/version/1.1/) -------------------------------------------


def _parse_json_feed(body: bytes) -> tuple[tuple[EntryData, ...], str | None, str | None]:
    try:
        # json.loads detects UTF-8/16/32 from the bytes, as RFC 8259 asks.
        doc = json.loads(body)
    except json.JSONDecodeError as e:
        raise _Unreadable(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise _Unreadable(f"JSON Feed is not valid UTF-8: {e.reason}") from e
    except RecursionError as e:
        # The C decoder recurses once per nesting level and gives up at the recursion limit.
        raise _Unreadable("JSON nested too deeply to be a feed") from e
    if not isinstance(doc, dict) or "jsonfeed.org/version/" not in str(doc.get("version", "")):
        raise _Unreadable("not a JSON Feed (no https://jsonfeed.org/version/ in `version`)")
    items = doc.get("items")
    if not isinstance(items, list):
        raise _Unreadable("JSON Feed has no `items` list")
    problems: list[str] = []
    feed_author = _json_author(doc)
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"item {i + 1} is not an object")
            continue
        try:
            entries.append(_json_entry(item, i + 1, feed_author, problems))
        except Exception as e:
            # One odd item (an id that cannot be printed, a nested value where text belongs)
            # is skipped and named; the rest of the feed is read.
            log.exception("cannot read item %d of a JSON Feed", i + 1)
            problems.append(f"item {i + 1}: skipped ({type(e).__name__}: {_short(e)})")
    link = _text(doc.get("home_page_url")) or _text(doc.get("feed_url"))
    warning = _summarize(problems)
    return tuple(entries), link if link and is_http(link) else None, warning


def _json_entry(
    item: Mapping[str, Any], number: int, feed_author: str | None, problems: list[str]
) -> EntryData:
    content = _text(item.get("content_html"))
    if content is None and (text := _text(item.get("content_text"))) is not None:
        content = _paragraphs(text)
    summary = _text(item.get("summary"))  # plain text, per the spec
    raw_id = item.get("id")  # a string in 1.1; 1.0 feeds sometimes used numbers
    tags = item.get("tags")
    return EntryData(
        title=_text(item.get("title")) or "",
        guid=str(raw_id) if raw_id not in (None, "") else None,
        url=_text(item.get("url")) or _text(item.get("external_url")),
        author=_json_author(item) or feed_author,
        published=_json_date(item, "date_published", number, problems),
        updated=_json_date(item, "date_modified", number, problems),
        summary=html.escape(summary) if summary else None,
        content=content,
        tags=tuple(str(t) for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        image_url=_text(item.get("image")) or _text(item.get("banner_image")),
    )


def _json_author(obj: Mapping[str, Any]) -> str | None:
    # 1.1 has an `authors` list; 1.0 had a single `author` object.
    authors = obj.get("authors")
    candidates = authors if isinstance(authors, list) else [obj.get("author")]
    names = [str(a["name"]) for a in candidates if isinstance(a, dict) and a.get("name")]
    return ", ".join(names) or None


def _json_date(
    item: Mapping[str, Any], key: str, number: int, problems: list[str]
) -> datetime | None:
    value = item.get(key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError):
        problems.append(f"item {number}: {key} is not an RFC 3339 date: {_short(repr(value))}")
        return None
    # RFC 3339 requires an offset; a feed that leaves it out most likely means UTC.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _paragraphs(text: str) -> str:
    """Plain text as HTML: blank lines separate paragraphs, single newlines become <br>."""
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    return "".join(f"<p>{html.escape(b).replace(chr(10), '<br>')}</p>" for b in blocks)
