"""Reading web pages politely, for the kinds that find their articles on pages (``page``,
``sitemap``): robots.txt, one request at a time per host with a pause between requests, and
turning article links into entries.

Owns: the robots.txt rules of each host (RFC 9309: fetched once per host per gather run through
the shared ``Fetcher``, so with our User-Agent, size cap and deadline, and parsed by the standard
library's ``RobotFileParser.parse``; its own ``read()`` would bypass all three), the per-host
turn (``[http] per_host_delay_seconds``, or the host's ``Crawl-delay`` when longer), which links
are new (``SourceContext.stored``), and reading each new article page with ``extract_article``.
A page that cannot be read is one item's problem, described in the warning; it never fails the
source.

Politeness is per host and per gather run, not per source: every source fetched through one
``requests.Session`` (one run) shares the hosts' turns and robots rules, so two sources on one
site still send it one request at a time.

Does not own: finding the links (``page``, ``sitemap``), the conditional GET, redirects, size
cap and deadline (``fetch``), what an article page holds (``extract``), sanitizing, keys and
storing (``newsletter.gather``).
"""

from __future__ import annotations

import abc
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Self
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import requests
from courlan import normalize_url
from trafilatura.utils import decode_file

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext, StoredKeys
from newsletter.sources.extract import extract_article
from newsletter.sources.fetch import Fetched, Fetcher, is_http
from newsletter.sources.settings import CrawlSettings
from newsletter.types import EntryData, FetchResult, SourceState

log = logging.getLogger(__name__)

__all__ = ["CrawlSource", "Crawler", "Link", "absolute_link"]

HTML_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", ""})
# RFC 9309, 2.5: a crawler must parse at least the first 500 KiB of a robots.txt.
_ROBOTS_BYTES = 512 * 1024
# A Crawl-delay past this would stall a gather run for minutes per page; the pause is capped.
_LONGEST_CRAWL_DELAY = 30.0


@dataclass(frozen=True)
class Link:
    """A link to an article page, as a listing or a sitemap gave it.

    ``url`` is absolute and normalized (no fragment, no tracking parameters): it is the
    article's key. ``text`` (the link's text, a news sitemap's title) is the title when the page
    has none; ``published`` and ``updated`` are dates the listing gives (a news sitemap's
    publication date, a sitemap's ``lastmod``).
    """

    url: str
    text: str | None = None
    published: datetime | None = None
    updated: datetime | None = None


class _Host:
    """One host's turn (a lock held for each request) and its robots.txt rules."""

    def __init__(self, delay: float) -> None:
        self.lock = threading.Lock()
        self.delay = delay
        self.ready_at = 0.0  # time.monotonic() before which the next request waits
        self.robots: RobotFileParser | None = None
        self.robots_read = False


class _Hosts:
    """The hosts of one gather run, shared by every source fetched through its session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}

    def get(self, origin: str, delay: float) -> _Host:
        with self._lock:
            host = self._hosts.get(origin)
            if host is None:
                host = self._hosts[origin] = _Host(delay)
            return host


# One ``_Hosts`` per session (per gather run), dropped with the session.
_runs: weakref.WeakKeyDictionary[requests.Session, _Hosts] = weakref.WeakKeyDictionary()
_runs_lock = threading.Lock()


def _hosts_of(session: requests.Session) -> _Hosts:
    with _runs_lock:
        hosts = _runs.get(session)
        if hosts is None:
            hosts = _runs[session] = _Hosts()
        return hosts


def absolute_link(href: str, base: str) -> str | None:
    """``href`` made absolute against ``base`` and normalized as an article key (courlan:
    lower-cased host, default port, query sorted, tracking parameters dropped; the fragment
    removed), or None when it is not an http(s) link."""
    try:
        url = urldefrag(urljoin(base, href.strip())).url
        if not is_http(url) or not urlsplit(url).hostname:
            return None
        return normalize_url(url)
    except ValueError:
        return None


class Crawler:
    """Fetches one source's listing and article pages, politely (see the module docstring).

    ``timeout`` and ``max_bytes`` hold for every page (the listing, each article, robots.txt
    within its own smaller cap); ``stored`` tells which article keys are stored already.
    """

    def __init__(
        self,
        session: requests.Session,
        http: HttpSettings,
        *,
        source: str,
        timeout: float,
        max_bytes: int,
        stored: StoredKeys | None,
        listing_accept: str = HTML_ACCEPT,
    ) -> None:
        self._fetcher = Fetcher(session, user_agent=http.user_agent, accept=HTML_ACCEPT)
        self._listing = Fetcher(session, user_agent=http.user_agent, accept=listing_accept)
        self._hosts = _hosts_of(session)
        self._delay = http.per_host_delay_seconds
        self._agent = http.user_agent
        self._source = source
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._stored = stored

    # --- one request ---------------------------------------------------------------------------

    def get(self, url: str, state: SourceState | None = None, *, listing: bool = False) -> Fetched:
        """GET ``url`` (conditionally when ``state`` has validators) in its host's turn: a
        listing (``listing_accept``), else an article page (HTML).

        Raises ``SourceError`` as ``Fetcher.get`` does, and when robots.txt disallows ``url``.
        """
        fetcher = self._listing if listing else self._fetcher
        state = state or SourceState(name=self._source)
        target = state.url if state.url and is_http(state.url) else url
        if not self.allowed(target):
            raise SourceError("robots.txt disallows it", source=self._source, url=target)
        with self._turn(target):
            return fetcher.get(
                url, state, source=self._source, timeout=self._timeout, max_bytes=self._max_bytes
            )

    def allowed(self, url: str) -> bool:
        """Whether the robots.txt of ``url``'s host lets our User-Agent fetch it."""
        host = self._host(url)
        if not host.robots_read:
            with host.lock:
                if not host.robots_read:
                    self._read_robots(url, host)
        return host.robots is None or host.robots.can_fetch(self._agent, url)

    def _host(self, url: str) -> _Host:
        parts = urlsplit(url)
        return self._hosts.get(f"{parts.scheme}://{parts.netloc}", self._delay)

    @contextmanager
    def _turn(self, url: str) -> Iterator[None]:
        host = self._host(url)
        with host.lock:
            self._wait(host)
            try:
                yield
            finally:
                host.ready_at = time.monotonic() + host.delay

    @staticmethod
    def _wait(host: _Host) -> None:
        pause = host.ready_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def _read_robots(self, url: str, host: _Host) -> None:
        """Read the host's robots.txt (called with the host's lock held, in its turn)."""
        parts = urlsplit(url)
        robots_url = f"{parts.scheme}://{parts.netloc}/robots.txt"
        parser = RobotFileParser(robots_url)
        self._wait(host)
        try:
            fetched = self._fetcher.get(
                robots_url,
                SourceState(name=self._source),
                source=self._source,
                timeout=self._timeout,
                max_bytes=_ROBOTS_BYTES,
            )
        except SourceError as e:
            if e.status is not None and 400 <= e.status < 500:
                # RFC 9309, 2.3.1.3: robots.txt "unavailable": no rules, everything allowed.
                parser.parse([])
            else:
                # RFC 9309, 2.3.1.4: "unreachable" (a server error, no connection): assume
                # everything is disallowed, for this run.
                log.warning("%s: not crawling %s: %s", self._source, robots_url, e.message)
                parser.parse(["User-agent: *", "Disallow: /"])
        else:
            parser.parse(decode_file(fetched.body).splitlines())
            delay = parser.crawl_delay(self._agent)
            if delay is not None:
                host.delay = max(host.delay, min(float(delay), _LONGEST_CRAWL_DELAY))
        finally:
            host.ready_at = time.monotonic() + host.delay
        host.robots = parser
        host.robots_read = True

    # --- the articles --------------------------------------------------------------------------

    def new_links(self, links: Sequence[Link], limit: int) -> tuple[list[Link], list[str]]:
        """The first ``limit`` of ``links`` whose article is not stored yet and that robots.txt
        lets us fetch, and a problem for each link it does not (they do not count against
        ``limit``: a listing full of members-only links still gives its public ones)."""
        stored = self._stored(self._source, [link.url for link in links]) if self._stored else ()
        chosen: list[Link] = []
        problems: list[str] = []
        for link in links:
            if link.url in stored:
                continue
            if not self.allowed(link.url):
                problems.append(f"item {link.url}: robots.txt disallows it")
            elif len(chosen) < limit:
                chosen.append(link)
        return chosen, problems

    def articles(self, links: Sequence[Link]) -> tuple[list[EntryData], list[str]]:
        """Fetch and extract each link's article. Returns the entries and, per link that gave
        none, its problem (``"item <url>: <why>"``)."""
        entries: list[EntryData] = []
        problems: list[str] = []
        for link in links:
            try:
                entries.append(self._article(link))
            except SourceError as e:
                log.info("%s: %s: %s", self._source, link.url, e.message)
                problems.append(f"item {link.url}: {e.message}")
        return entries, problems

    def _article(self, link: Link) -> EntryData:
        fetched = self.get(link.url)
        if fetched.media_type not in _HTML_TYPES:
            raise SourceError(
                f"not an HTML page ({fetched.media_type})", source=self._source, url=link.url
            )
        text = _decode(fetched)
        try:
            article = extract_article(text, fetched.url, title=link.text)
        except Exception as e:
            # A page that makes the extractor fail is that page's problem, not the source's.
            log.exception("%s: cannot extract %s", self._source, link.url)
            raise SourceError(
                f"cannot extract the article ({type(e).__name__})",
                source=self._source,
                url=link.url,
            ) from e
        if article is None:
            raise SourceError("no article found on the page", source=self._source, url=link.url)
        return EntryData(
            title=article.title or link.text or "",
            guid=link.url,
            url=link.url,
            author=article.author,
            published=link.published or article.published or link.updated,
            updated=link.updated,
            content=article.content_html or None,
            image_url=article.image_url,
        )


def _decode(fetched: Fetched) -> str:
    """The page as text: the header's charset, else what the bytes say (their BOM, meta charset
    or a guess, by trafilatura's ``decode_file``)."""
    if fetched.charset:
        try:
            return fetched.body.decode(fetched.charset, errors="replace")
        except LookupError:
            pass  # a charset Python does not know: guess instead
    return decode_file(fetched.body)


class CrawlSource(abc.ABC):
    """What the page and sitemap readers share: the listing at ``CrawlSettings.url`` read
    conditionally, its new links (``new_links``) read as articles, and one ``FetchResult``
    whose warning names what was skipped or failed.

    A subclass names its ``settings`` class and the ``Accept`` of its listing, and finds the
    links in the listing (``links``: they and the problems met, raising ``SourceError`` for a
    listing it cannot read), filtered by ``link_pattern`` here.
    """

    settings: ClassVar[type[CrawlSettings]] = CrawlSettings
    listing_accept: ClassVar[str] = HTML_ACCEPT

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        options = config.options
        if not isinstance(options, self.settings):
            raise ConfigError(
                f"{config.kind} source {config.name!r} needs {self.settings.__name__}"
            )
        self.name = config.name
        self.location = config.location
        self._options = options
        self._pattern = re.compile(options.link_pattern) if options.link_pattern else None
        self._crawler = Crawler(
            context.session,
            context.http,
            source=config.name,
            timeout=options.timeout,
            max_bytes=options.max_bytes,
            stored=context.stored,
            listing_accept=self.listing_accept,
        )

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, context)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        listing = self._crawler.get(self._options.url, state, listing=True)
        if listing.not_modified:
            return FetchResult(not_modified=True, permanent_url=listing.permanent_url)
        links, problems = self.links(listing)
        if self._pattern is not None:
            links = [link for link in links if self._pattern.search(link.url)]
        if not links:
            problems.append("no article links found (check link_selector and link_pattern)")
        chosen, refused = self._crawler.new_links(links, self._options.max_links)
        entries, failed = self._crawler.articles(chosen)
        return FetchResult(
            entries=tuple(entries),
            etag=listing.etag,
            last_modified=listing.last_modified,
            permanent_url=listing.permanent_url,
            base_url=listing.url,
            # Shown in the source's warning by gather, the first few and a count of the rest.
            problems=(*problems, *refused, *failed),
        )

    @abc.abstractmethod
    def links(self, listing: Fetched) -> tuple[list[Link], list[str]]:
        """The article links of ``listing`` and the problems met finding them."""
