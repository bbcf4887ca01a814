"""Feed sources: RSS 0.9x/1.0/2.0 and Atom (through feedparser) and JSON Feed 1.0/1.1 (ours).

Owns: downloading a feed over HTTP(S) with the shared ``requests`` session (a total deadline per
fetch, see ``deadline``; a size cap; conditional GET; noticing permanent redirects) or reading
it from a local file (with an mtime/size validator), telling the formats apart, and mapping what
the parsers found to ``EntryData``. ``requests`` and parsing errors are wrapped here, once, into
``SourceError``.

Does not own: sanitizing HTML, resolving links, choosing article keys (``newsletter.gather``),
remembering validators or redirects (``newsletter.storage``), retrying a failed fetch (the next
gather run is the retry).

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import requests
import urllib3.exceptions

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import deadline
from newsletter.types import EntryData, FetchResult, SourceState

log = logging.getLogger(__name__)

__all__ = ["FeedSource"]

_CHUNK = 64 * 1024
_PERMANENT = frozenset({301, 308})
_JSON_TYPES = frozenset({"application/feed+json", "application/json"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_ACCEPT = (
    "application/atom+xml, application/rss+xml, application/feed+json, application/rdf+xml;q=0.9,"
    " application/xml;q=0.9, application/json;q=0.8, text/xml;q=0.8, */*;q=0.5"
)


class _Unreadable(Exception):
    """Raised by the parsing helpers; ``FeedSource`` turns it into ``SourceError``."""


class FeedSource:
    """A feed at an http(s) URL (``config.url``) or in a local file (``config.path``)."""

    def __init__(
        self, config: SourceConfig, *, session: requests.Session, http: HttpSettings
    ) -> None:
        if (config.url is None) == (config.path is None):
            raise ConfigError(f"feed source {config.name!r} needs exactly one of `url` or `path`")
        self.name = config.name
        self.location = config.location
        self._config = config
        self._target: str | Path = config.path if config.path is not None else str(config.url)
        # The total deadline of each fetch needs the session's connections to answer to it.
        self._session = deadline.mount(session)
        self._user_agent = http.user_agent

    def __repr__(self) -> str:
        return f"FeedSource({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        if isinstance(self._target, Path):
            return self._fetch_file(self._target, state)
        return self._fetch_http(self._target, state)

    # --- HTTP ------------------------------------------------------------------------------------

    def _fetch_http(self, configured: str, state: SourceState) -> FetchResult:
        # Storage hands back where a 301/308 sent us last time; it forgets that by itself when
        # the configured URL changes.
        url = state.url if state.url and _is_http(state.url) else configured
        timeout = self._config.timeout
        headers = {"User-Agent": self._user_agent, "Accept": _ACCEPT}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        # ``timeout`` bounds the connection and each read; the total deadline bounds the whole
        # fetch (connect, every redirect hop, headers and body), so a server dribbling a byte at
        # a time cannot hold a worker for longer than ``timeout`` (see ``deadline``).
        with (
            deadline.limit(timeout) as limit,
            _requests_errors(self.name, url, timeout, limit),
            self._session.get(url, headers=headers, timeout=timeout, stream=True) as response,
        ):
            _check_deadline(limit, self.name, url)
            final_url = response.url
            permanent = _permanent_target(response, url)
            status = response.status_code
            if status == 304:
                log.debug("%s: not modified", self.name)
                return FetchResult(not_modified=True, permanent_url=permanent)
            if status >= 400:
                reason = f" {response.reason}" if response.reason else ""
                raise SourceError(
                    f"HTTP {status}{reason}", source=self.name, url=url, status=status
                )
            if not 200 <= status < 300:
                raise SourceError(
                    f"unexpected HTTP status {status}", source=self.name, url=url, status=status
                )
            body = self._read_body(response, final_url)
            # A socket cut by the watchdog can look like a body that ended early.
            _check_deadline(limit, self.name, url)
            content_type = response.headers.get("Content-Type", "")
            etag = response.headers.get("ETag")
            last_modified = response.headers.get("Last-Modified")
        try:
            entries, _, warning = _parse_document(body, content_type)
        except _Unreadable as e:
            raise SourceError(str(e), source=self.name, url=final_url) from e
        return FetchResult(
            entries=entries,
            etag=etag,
            last_modified=last_modified,
            permanent_url=permanent,
            # A relative link in a feed is relative to the feed document itself.
            base_url=final_url,
            warning=warning,
        )

    def _read_body(self, response: requests.Response, url: str) -> bytes:
        limit = self._config.max_bytes
        declared = response.headers.get("Content-Length", "")
        # Content-Length counts compressed bytes; if even those exceed the cap, so will the rest.
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(url, f"Content-Length is {int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        # iter_content decompresses, so the cap also stops a small gzip bomb from growing large.
        for chunk in response.iter_content(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise self._too_large(url, f"more than {limit:,} bytes received")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str, detail: str) -> SourceError:
        return SourceError(
            f"response too large ({detail}; the limit is max_bytes = {self._config.max_bytes:,})",
            source=self.name,
            url=url,
        )

    # --- local file ------------------------------------------------------------------------------

    def _fetch_file(self, path: Path, state: SourceState) -> FetchResult:
        try:
            st = path.stat()
            # An mtime/size validator stands in for an ETag: an untouched file is not re-parsed.
            validator = f"file:{st.st_mtime_ns:x}-{st.st_size:x}"
            if state.etag == validator:
                return FetchResult(not_modified=True, etag=validator)
            if st.st_size > self._config.max_bytes:
                raise SourceError(
                    f"file too large ({st.st_size:,} bytes; the limit is max_bytes = "
                    f"{self._config.max_bytes:,})",
                    source=self.name,
                    url=str(path),
                )
            body = path.read_bytes()
        except FileNotFoundError as e:
            raise SourceError("file not found", source=self.name, url=str(path)) from e
        except OSError as e:
            raise SourceError(
                f"cannot read file: {e.strerror or e}", source=self.name, url=str(path)
            ) from e
        content_type = "application/feed+json" if path.suffix.lower() == ".json" else ""
        try:
            entries, own_link, warning = _parse_document(body, content_type)
        except _Unreadable as e:
            raise SourceError(str(e), source=self.name, url=str(path)) from e
        # A file has no useful URL of its own; the feed's link is the next best base.
        return FetchResult(entries=entries, etag=validator, base_url=own_link, warning=warning)


# --- requests boundary ---------------------------------------------------------------------------


def _deadline_error(limit: deadline.Deadline, source: str, url: str) -> SourceError:
    return SourceError(
        f"no complete answer within {limit.seconds:g} s (total deadline)", source=source, url=url
    )


def _check_deadline(limit: deadline.Deadline, source: str, url: str) -> None:
    if limit.expired:
        raise _deadline_error(limit, source, url)


@contextmanager
def _requests_errors(
    source: str, url: str, timeout: float, limit: deadline.Deadline
) -> Iterator[None]:
    """Turn ``requests`` exceptions into ``SourceError`` (the only place that catches them)."""
    try:
        yield
    except SourceError:
        raise
    except Exception as e:
        # Once the watchdog cut the connection, whatever the cut raised (a reset, an incomplete
        # read, a TLS error) is the deadline's doing; so is a per-read timeout that ran past it.
        if limit.passed:
            raise _deadline_error(limit, source, url) from e
        if isinstance(e, requests.RequestException):
            raise _request_error(e, source, url, timeout) from e
        raise


def _request_error(
    e: requests.RequestException, source: str, url: str, timeout: float
) -> SourceError:
    if isinstance(e, requests.Timeout):
        return SourceError(f"timed out after {timeout:g}s", source=source, url=url)
    if isinstance(e, requests.ConnectionError):
        inner = e.args[0] if e.args else None
        # A read timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
        if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
            return SourceError(f"timed out after {timeout:g}s", source=source, url=url)
        return SourceError(f"cannot connect: {_connection_reason(e)}", source=source, url=url)
    if isinstance(e, requests.TooManyRedirects):
        return SourceError("too many redirects", source=source, url=url)
    return SourceError(f"request failed: {e}", source=source, url=url)


def _connection_reason(e: requests.ConnectionError) -> str:
    """The useful end of urllib3's nested message ("... Connection refused")."""
    inner = e.args[0] if e.args else e
    reason = getattr(inner, "reason", None) or inner
    # urllib3 prefixes the connection's repr: "HTTPConnection(host=..., port=...): <reason>".
    return str(reason).split("): ", 1)[-1]


def _permanent_target(response: requests.Response, requested: str) -> str | None:
    """Where the permanent redirects at the start of the chain lead, if they lead anywhere.

    Each 301/308 hop moves the resource for good (RFC 9110, 15.4.2 and 15.4.9); the first
    temporary hop ends what we may remember, so 301 -> 302 -> final remembers the 302's URL.
    """
    hops = response.history
    target: str | None = None
    for i, hop in enumerate(hops):
        if hop.status_code not in _PERMANENT:
            break
        target = hops[i + 1].url if i + 1 < len(hops) else response.url
    return target if target and target != requested else None


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


# --- parsing -------------------------------------------------------------------------------------


def _parse_document(
    body: bytes, content_type: str = ""
) -> tuple[tuple[EntryData, ...], str | None, str | None]:
    """Parse a feed document of any supported format.

    Returns (entries, the feed's own link, a warning or None). ``content_type`` is the HTTP
    header, used to pick JSON Feed and to find the charset of an XML feed. Raises
    ``_Unreadable`` when the document is not a feed at all.
    """
    media_type, charset = _split_content_type(content_type)
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    # Servers mislabel feeds often; the first byte is a better witness than the header.
    if start == b"{" or (start != b"<" and media_type in _JSON_TYPES):
        return _parse_json_feed(body)
    return _parse_xml_feed(body, charset)


def _split_content_type(value: str) -> tuple[str, str | None]:
    media_type, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'")
    return media_type.strip().lower(), charset


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
    return kept, own_link if own_link and _is_http(own_link) else None, warning


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
    return tuple(entries), link if link and _is_http(link) else None, warning


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
