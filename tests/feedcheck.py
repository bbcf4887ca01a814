"""Strict feed checks written from the specifications, not from our own code.

Each ``check_*`` function takes a document's bytes and returns the problems found, one
sentence each naming the rule; an empty list means the document passed. Sources:

- RSS 2.0 (https://www.rssboard.org/rss-specification) and the RSS Advisory Board's Best
  Practices Profile (https://www.rssboard.org/rss-profile), plus what the W3C Feed Validation
  Service reports as an error or a warning for RSS (a guid per item, an ``atom:link`` to
  itself, RFC 822 dates with a four-digit year and the right day of the week, a
  ``description`` before ``content:encoded``).
- Atom, RFC 4287, and Feed Paging and Archiving, RFC 5005 (section 4, archived feeds).
- JSON Feed 1.1 (https://www.jsonfeed.org/version/1.1/).

Beyond the specs, one rule of ours: every URL is absolute (a feed is read far from the site).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ATOM = "http://www.w3.org/2005/Atom"
CONTENT = "http://purl.org/rss/1.0/modules/content/"
FH = "http://purl.org/syndication/history/1.0"
XHTML = "http://www.w3.org/1999/xhtml"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# RFC 822 section 5, as RSS 2.0 uses it, with RFC 1123's four-digit year (which RSS 2.0's own
# examples and the RSS Best Practices Profile require).
_RFC822 = re.compile(
    rf"(?:(?P<day>{'|'.join(_DAYS)}), )?\d{{1,2}} (?:{_MONTHS}) \d{{4}} "
    r"\d{2}:\d{2}(?::\d{2})? (?:[+-]\d{4}|UT|GMT|[ECMP][SD]T)"
)
# RFC 3339 section 5.6 date-time, with RFC 4287 3.3's upper-case "T" and "Z".
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
# RFC 2045 section 5.1 type "/" subtype, parameters allowed.
_MIME = re.compile(r'[^\s()<>@,;:\\"/\[\]?=]+/[^\s()<>@,;:\\"/\[\]?=]+(?:\s*;.*)?')
# RFC 5646 language tags, in the shape that matters here.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
# RFC 4287 link relations and the registered ones feeds use (IANA link relations registry).
_RELATIONS = {
    "alternate",
    "related",
    "self",
    "enclosure",
    "via",
    "hub",
    "current",
    "prev-archive",
    "next-archive",
    "first",
    "last",
    "next",
    "previous",
    "license",
    "replies",
}
_RFC5005 = {"current", "prev-archive", "next-archive", "first", "last", "next", "previous"}
_JSON_FEED_KEYS = {
    "version",
    "title",
    "home_page_url",
    "feed_url",
    "description",
    "user_comment",
    "next_url",
    "icon",
    "favicon",
    "authors",
    "author",
    "language",
    "expired",
    "hubs",
    "items",
}
_JSON_ITEM_KEYS = {
    "id",
    "url",
    "external_url",
    "title",
    "content_html",
    "content_text",
    "summary",
    "image",
    "banner_image",
    "date_published",
    "date_modified",
    "authors",
    "author",
    "tags",
    "language",
    "attachments",
}


def check_file(path: Path) -> list[str]:
    """Check a feed file, choosing the format by its name."""
    data = path.read_bytes()
    if path.name.endswith(".json"):
        return check_json_feed(data)
    if path.name == "atom.xml":
        return check_atom(data)
    return check_rss(data)


def is_absolute_url(value: str | None) -> bool:
    if not value or value != value.strip():
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def is_rfc822(value: str | None) -> bool:
    """An RSS date: RFC 822 form, four-digit year, a real date whose weekday (if given) fits."""
    if value is None:
        return False
    match = _RFC822.fullmatch(value)
    if match is None:
        return False
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return match["day"] is None or _DAYS[parsed.weekday()] == match["day"]


def is_rfc3339(value: Any) -> bool:
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- RSS 2.0 ------------------------------------------------------------------------------------


def check_rss(data: bytes) -> list[str]:
    problems: list[str] = []
    root = _parse_xml(data, problems)
    if root is None:
        return problems
    if root.tag != "rss" or root.get("version") != "2.0":
        return [*problems, 'the root must be <rss version="2.0">']
    channels = root.findall("channel")
    if len(channels) != 1:
        return [*problems, "an RSS document has exactly one <channel>"]
    channel = channels[0]
    for name in ("title", "link", "description"):
        if len(channel.findall(name)) != 1:
            problems.append(f"channel: <{name}> is required, once")
    for name in (
        "language",
        "copyright",
        "managingEditor",
        "webMaster",
        "pubDate",
        "lastBuildDate",
        "generator",
        "docs",
        "ttl",
        "image",
        "cloud",
    ):
        if len(channel.findall(name)) > 1:
            problems.append(f"channel: <{name}> appears more than once")
    if not (channel.findtext("title") or "").strip():
        problems.append("channel: <title> is blank")
    if not is_absolute_url(channel.findtext("link")):
        problems.append(f"channel: <link> is not an absolute URL: {channel.findtext('link')!r}")
    language = channel.findtext("language")
    if language is None:
        problems.append("channel: no <language> (the W3C validator warns)")
    elif not _LANGUAGE.fullmatch(language):
        problems.append(f"channel: <language> is not a language tag: {language!r}")
    for name in ("pubDate", "lastBuildDate"):
        value = channel.findtext(name)
        if value is not None and not is_rfc822(value):
            problems.append(f"channel: <{name}> is not an RFC 822 date: {value!r}")
    ttl = channel.findtext("ttl")
    if ttl is not None and not (ttl.isdigit() and int(ttl) > 0):
        problems.append(f"channel: <ttl> is not a positive number of minutes: {ttl!r}")
    docs = channel.findtext("docs")
    if docs is not None and not is_absolute_url(docs):
        problems.append(f"channel: <docs> is not an absolute URL: {docs!r}")
    links = _atom_links(channel, "channel", problems)
    _check_self_and_history(links, channel.find(f"{{{FH}}}archive") is not None, problems)
    selfs = [link for link in links if link.get("rel") == "self"]
    if selfs and selfs[0].get("type") != "application/rss+xml":
        problems.append("channel: the self atom:link should say type application/rss+xml")
    guids: set[str] = set()
    for n, item in enumerate(channel.findall("item"), 1):
        problems.extend(f"item {n}: {p}" for p in _check_rss_item(item, guids))
    return problems


def _check_rss_item(item: ET.Element, guids: set[str]) -> Iterable[str]:
    title, description = item.find("title"), item.find("description")
    if title is None and description is None:
        yield "has neither <title> nor <description>"
    if title is not None and not (title.text or "").strip():
        yield "<title> is blank"
    for name in ("title", "link", "description", "guid", "pubDate", "comments", "source"):
        if len(item.findall(name)) > 1:
            yield f"<{name}> appears more than once"
    link = item.findtext("link")
    if link is not None and not is_absolute_url(link):
        yield f"<link> is not an absolute URL: {link!r}"
    comments = item.findtext("comments")
    if comments is not None and not is_absolute_url(comments):
        yield f"<comments> is not an absolute URL: {comments!r}"
    guid = item.find("guid")
    if guid is None:
        yield "no <guid> (the W3C validator warns)"
    else:
        value = guid.text or ""
        if not value.strip():
            yield "<guid> is blank"
        elif value in guids:
            yield f"<guid> {value!r} is not unique"
        guids.add(value)
        permalink = guid.get("isPermaLink", "true")
        if permalink not in ("true", "false"):
            yield f'isPermaLink must be "true" or "false", got {permalink!r}'
        elif permalink == "true" and not is_absolute_url(value):
            yield f"a permalink <guid> must be a URL: {value!r}"
    pub_date = item.findtext("pubDate")
    if pub_date is not None and not is_rfc822(pub_date):
        yield f"<pubDate> is not an RFC 822 date: {pub_date!r}"
    author = item.findtext("author")
    if author is not None and "@" not in author:
        yield f"<author> must be an e-mail address (use dc:creator for a name): {author!r}"
    for category in item.findall("category"):
        if not (category.text or "").strip():
            yield "<category> is blank"
    enclosures = item.findall("enclosure")
    if len(enclosures) > 1:
        yield "more than one <enclosure> (the Best Practices Profile says at most one)"
    for enclosure in enclosures:
        if not is_absolute_url(enclosure.get("url")):
            yield f"<enclosure> url is not an absolute URL: {enclosure.get('url')!r}"
        length = enclosure.get("length")
        if length is None or not length.isdigit():
            yield f"<enclosure> length must be a whole number of bytes (0 if unknown): {length!r}"
        if not _MIME.fullmatch(enclosure.get("type") or ""):
            yield f"<enclosure> type is not a MIME type: {enclosure.get('type')!r}"
    encoded = item.find(f"{{{CONTENT}}}encoded")
    for element in (description, encoded):
        if element is not None and len(element):
            yield f"<{element.tag}> holds elements: HTML must be escaped"
    if encoded is not None:
        children = list(item)
        if description is None or children.index(description) > children.index(encoded):
            yield "content:encoded must come after <description>"
    for link in item.findall(f"{{{ATOM}}}link"):
        if link.get("rel") in _RFC5005:
            yield f"feed paging relation {link.get('rel')!r} in an item"


# --- Atom (RFC 4287) ----------------------------------------------------------------------------


def check_atom(data: bytes) -> list[str]:
    problems: list[str] = []
    root = _parse_xml(data, problems)
    if root is None:
        return problems
    if root.tag != f"{{{ATOM}}}feed":
        return [*problems, "the root must be atom:feed"]
    a = f"{{{ATOM}}}"
    _check_atom_metadata(root, "feed", problems)
    for name in ("icon", "logo", "rights", "subtitle", "generator"):
        if len(root.findall(a + name)) > 1:
            problems.append(f"feed: atom:{name} appears more than once")
    generator = root.find(a + "generator")
    if generator is not None and generator.get("uri") and not is_absolute_url(generator.get("uri")):
        problems.append("feed: atom:generator uri is not absolute")
    links = _atom_links(root, "feed", problems)
    _check_self_and_history(links, root.find(f"{{{FH}}}archive") is not None, problems)
    feed_author = bool(root.findall(a + "author"))
    ids: set[str] = set()
    for n, entry in enumerate(root.findall(a + "entry"), 1):
        where = f"entry {n}"
        _check_atom_metadata(entry, where, problems)
        entry_id = entry.findtext(a + "id") or ""
        if entry_id in ids:
            problems.append(f"{where}: atom:id {entry_id!r} is not unique in the feed")
        ids.add(entry_id)
        if not feed_author and not entry.findall(a + "author"):
            problems.append(f"{where}: no atom:author, and the feed has none (RFC 4287 4.1.1)")
        for name in ("content", "summary", "published", "rights", "source"):
            if len(entry.findall(a + name)) > 1:
                problems.append(f"{where}: atom:{name} appears more than once")
        published = entry.findtext(a + "published")
        if published is not None and not is_rfc3339(published):
            problems.append(f"{where}: atom:published is not an RFC 3339 date: {published!r}")
        entry_links = _atom_links(entry, where, problems)
        for link in entry_links:
            if link.get("rel") in _RFC5005:
                problems.append(f"{where}: feed paging relation {link.get('rel')!r} in an entry")
        content = entry.find(a + "content")
        if content is None:
            if not any(link.get("rel", "alternate") == "alternate" for link in entry_links):
                problems.append(f"{where}: no atom:content and no alternate link (4.1.1.3)")
            if entry.find(a + "summary") is None:
                problems.append(f"{where}: no atom:content and no atom:summary")
        else:
            _check_text(content, f"{where}: atom:content", problems, content=True)
        for category in entry.findall(a + "category"):
            if not (category.get("term") or "").strip():
                problems.append(f"{where}: atom:category without a term")
    return problems


def _check_atom_metadata(element: ET.Element, where: str, problems: list[str]) -> None:
    a = f"{{{ATOM}}}"
    for name in ("id", "title", "updated"):
        if len(element.findall(a + name)) != 1:
            problems.append(f"{where}: atom:{name} is required, once")
    element_id = element.findtext(a + "id")
    if element_id is not None:
        scheme = urlsplit(element_id).scheme
        if not scheme or element_id != element_id.strip() or " " in element_id:
            problems.append(f"{where}: atom:id is not an absolute IRI: {element_id!r}")
    updated = element.findtext(a + "updated")
    if updated is not None and not is_rfc3339(updated):
        problems.append(f"{where}: atom:updated is not an RFC 3339 date: {updated!r}")
    for name in ("title", "subtitle", "summary", "rights"):
        for text in element.findall(a + name):
            _check_text(text, f"{where}: atom:{name}", problems)
    title = element.find(a + "title")
    if title is not None and not "".join(title.itertext()).strip():
        problems.append(f"{where}: atom:title is blank")
    for author in element.findall(a + "author"):
        if len(author.findall(a + "name")) != 1:
            problems.append(f"{where}: an atom:author has exactly one atom:name")
    alternates: set[tuple[str | None, str | None]] = set()
    for link in element.findall(a + "link"):
        if link.get("rel", "alternate") != "alternate":
            continue
        key = (link.get("type"), link.get("hreflang"))
        if key in alternates:
            problems.append(f"{where}: two alternate links with the same type and hreflang")
        alternates.add(key)


def _check_text(
    element: ET.Element, where: str, problems: list[str], content: bool = False
) -> None:
    kind = element.get("type", "text")
    if kind in ("text", "html"):
        if len(element):
            problems.append(f"{where}: type {kind!r} holds elements: HTML must be escaped")
    elif kind == "xhtml":
        if len(element) != 1 or element[0].tag != f"{{{XHTML}}}div":
            problems.append(f"{where}: xhtml content is one xhtml:div")
    elif not content or not _MIME.fullmatch(kind):
        problems.append(f"{where}: unknown type {kind!r}")
    if content and element.get("src") is not None and (element.text or len(element)):
        problems.append(f"{where}: content with src must be empty")


# --- shared by RSS and Atom ---------------------------------------------------------------------


def _parse_xml(data: bytes, problems: list[str]) -> ET.Element | None:
    if not data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>") and not data.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>'
    ):
        problems.append("no XML declaration saying UTF-8")
    try:
        data.decode("utf-8")
        return ET.fromstring(data)
    except (UnicodeDecodeError, ET.ParseError) as e:
        problems.append(f"not well-formed XML: {e}")
        return None


def _atom_links(parent: ET.Element, where: str, problems: list[str]) -> list[ET.Element]:
    links = parent.findall(f"{{{ATOM}}}link")
    for link in links:
        rel = link.get("rel", "alternate")
        href = link.get("href")
        if not is_absolute_url(href):
            problems.append(f"{where}: a {rel!r} link's href is not an absolute URL: {href!r}")
        if rel not in _RELATIONS and not urlsplit(rel).scheme:
            problems.append(f"{where}: unregistered link relation {rel!r}")
        if link.get("type") is not None and not _MIME.fullmatch(link.get("type") or ""):
            problems.append(f"{where}: a link type is not a MIME type: {link.get('type')!r}")
        length = link.get("length")
        if length is not None and not length.isdigit():
            problems.append(f"{where}: a link length is not a number: {length!r}")
    return links


def _check_self_and_history(links: list[ET.Element], archive: bool, problems: list[str]) -> None:
    rels = [link.get("rel", "alternate") for link in links]
    if rels.count("self") != 1:
        problems.append("exactly one link rel=self is expected (the validator warns without)")
    for rel in ("current", "prev-archive", "next-archive", "hub"):
        if rels.count(rel) > 1:
            problems.append(f"more than one {rel!r} link")
    if archive:
        # RFC 5005 section 4: an archive document links to the current (subscription) one.
        if "current" not in rels:
            problems.append("an archive document (fh:archive) needs a 'current' link")
        if "hub" in rels:
            problems.append("an archive document never changes: a hub link makes no sense")
    elif "next-archive" in rels or "current" in rels:
        problems.append("only archive documents (fh:archive) have next-archive/current links")


# --- JSON Feed 1.1 ------------------------------------------------------------------------------


def check_json_feed(data: bytes) -> list[str]:
    try:
        feed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return [f"not UTF-8 JSON: {e}"]
    if not isinstance(feed, dict):
        return ["a JSON Feed is an object"]
    problems: list[str] = []
    if feed.get("version") != JSON_FEED_VERSION:
        problems.append(f"version must be {JSON_FEED_VERSION!r}, got {feed.get('version')!r}")
    if not isinstance(feed.get("title"), str) or not feed["title"].strip():
        problems.append("title is required")
    for key in ("home_page_url", "feed_url", "next_url", "icon", "favicon"):
        if key in feed and not is_absolute_url(feed[key]):
            problems.append(f"{key} is not an absolute URL: {feed[key]!r}")
    if "next_url" in feed and feed["next_url"] == feed.get("feed_url"):
        problems.append("next_url must not be the feed_url")
    for key in ("description", "user_comment"):
        if key in feed and not isinstance(feed[key], str):
            problems.append(f"{key} must be a string")
    if "language" in feed and not _LANGUAGE.fullmatch(str(feed["language"])):
        problems.append(f"language is not a language tag: {feed['language']!r}")
    if "expired" in feed and not isinstance(feed["expired"], bool):
        problems.append("expired must be true or false")
    problems.extend(_check_authors(feed.get("authors"), "feed"))
    hubs = feed.get("hubs", [])
    if not isinstance(hubs, list) or not all(
        isinstance(h, dict) and isinstance(h.get("type"), str) and is_absolute_url(h.get("url"))
        for h in hubs
    ):
        problems.append("hubs must be a list of {type, url} with absolute URLs")
    problems.extend(_unknown_keys(feed, _JSON_FEED_KEYS, "feed"))
    items = feed.get("items")
    if not isinstance(items, list):
        return [*problems, "items is required (a list)"]
    ids: set[str] = set()
    for n, item in enumerate(items, 1):
        problems.extend(f"item {n}: {p}" for p in _check_json_item(item, ids))
    return problems


def _check_json_item(item: Any, ids: set[str]) -> Iterable[str]:
    if not isinstance(item, dict):
        yield "an item is an object"
        return
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        yield f"id must be a non-empty string, got {item_id!r}"
    elif item_id in ids:
        yield f"id {item_id!r} is not unique"
    else:
        ids.add(item_id)
    if not any(isinstance(item.get(k), str) for k in ("content_html", "content_text")):
        yield "content_html or content_text is required"
    for key in ("url", "external_url", "image", "banner_image"):
        if key in item and not is_absolute_url(item[key]):
            yield f"{key} is not an absolute URL: {item[key]!r}"
    for key in ("title", "summary", "content_html", "content_text"):
        if key in item and not isinstance(item[key], str):
            yield f"{key} must be a string"
    for key in ("date_published", "date_modified"):
        if key in item and not is_rfc3339(item[key]):
            yield f"{key} is not an RFC 3339 date: {item[key]!r}"
    tags = item.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        yield "tags must be a list of non-empty strings"
    for attachment in item.get("attachments", []):
        if not is_absolute_url(attachment.get("url")) or not _MIME.fullmatch(
            str(attachment.get("mime_type", ""))
        ):
            yield "an attachment needs an absolute url and a mime_type"
    yield from _check_authors(item.get("authors"), "item")
    yield from _unknown_keys(item, _JSON_ITEM_KEYS, "item")


def _check_authors(authors: Any, where: str) -> list[str]:
    if authors is None:
        return []
    if not isinstance(authors, list):
        return [f"{where}: authors must be a list"]
    problems = []
    for author in authors:
        if not isinstance(author, dict) or not any(
            author.get(k) for k in ("name", "url", "avatar")
        ):
            problems.append(f"{where}: an author needs a name, url or avatar")
            continue
        for key in ("url", "avatar"):
            if key in author and not is_absolute_url(author[key]):
                problems.append(f"{where}: author {key} is not an absolute URL")
    return problems


def _unknown_keys(obj: dict[str, Any], known: set[str], where: str) -> list[str]:
    # JSON Feed 1.1, "Extending JSON Feed": custom keys start with an underscore.
    return [f"{where}: unknown key {k!r}" for k in obj if k not in known and not k.startswith("_")]
