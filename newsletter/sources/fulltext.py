"""Full text for a source's entries: fetching each entry's page and taking the article from it.

Owns: deciding which entries need their page (``wants_page``: ``always``, or ``auto`` when the
entry carries less text than the source's ``full_text_min_chars``), fetching those pages with
the shared fetcher (a conditional GET when the page was fetched before), concurrently but at
most ``per_host`` at once on one host, extracting the article (``extract.extract_article``),
and putting it into the entry (``with_article``). A page that cannot be fetched or holds no
article leaves its entry as the feed gave it and becomes a problem of that item, never an
error of the source.

The page cache crosses the storage boundary as values: gather hands the source a snapshot of
the pages stored for it (``SourceState.pages``); ``FullText.complete`` returns every page the
entries now refer to (fetched now, or confirmed unchanged by a 304, or kept from before when a
fetch failed) and storage keeps exactly those. A page answered with 304 is not extracted again.

Does not own: the HTTP details (``fetch``), extraction (``extract``), storing (``storage``), the
sanitizing every entry gets later (``gather``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import requests
from trafilatura.utils import decode_file

from newsletter import clock
from newsletter.exceptions import SourceError
from newsletter.sanitize import canonical_url
from newsletter.sources.extract import extract_article
from newsletter.sources.fetch import Fetched, Fetcher
from newsletter.text import clean_line, html_to_text, shorten
from newsletter.types import CachedPage, EntryData, Extracted, SourceState

log = logging.getLogger(__name__)

__all__ = ["PER_HOST", "Completed", "FullText", "wants_page", "with_article"]

PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.1"
_HTML_TYPES = frozenset({"", "text/html", "application/xhtml+xml"})
# At most this many requests at once to one host: a feed of 50 new items must not open 50
# connections to the site that published them.
PER_HOST = 2
# At most this many page fetches at once for one source, all hosts together.
WORKERS = 6
# All of one source's page fetches start within this many times its ``timeout`` (60 s for the
# default 20): a feed of hundreds of items on a slow site must not hold its gather for an hour.
# Pages not started by then keep the feed's text (or the copy fetched before) and are tried
# by the next gather; a fetch started in time still ends within its own ``timeout``.
BUDGET_TIMEOUTS = 3
_LABEL_CHARS = 120
_OUT_OF_TIME = "out of time"  # a marker, compared by identity; worded once in ``complete``


def wants_page(entry: EntryData, mode: str, min_chars: int) -> bool:
    """Whether ``entry``'s page should be fetched under the ``full_text`` ``mode``."""
    if mode == "always":
        return True
    if mode == "auto":
        return len(html_to_text(entry.content or entry.summary)) < min_chars
    return False


def with_article(entry: EntryData, article: Extracted) -> EntryData:
    """``entry`` with the article from its page: the page's body becomes the content when it
    has more text than the entry (what the feed gave is kept as the summary), and the page's
    author, date, lead image and title fill in what the feed left out."""
    own = entry.content or entry.summary
    longer = article.text_length > len(html_to_text(own))
    return replace(
        entry,
        title=entry.title or article.title or "",
        author=entry.author or article.author,
        published=entry.published or article.published,
        content=article.content_html if longer else entry.content,
        summary=(entry.summary or entry.content) if longer else entry.summary,
        image_url=entry.image_url or article.image_url,
    )


@dataclass(frozen=True)
class Completed:
    """The entries with their pages' articles put in, every page they refer to (for storage
    to keep), and one line per item whose page could not be used."""

    entries: tuple[EntryData, ...]
    pages: tuple[CachedPage, ...]
    problems: tuple[str, ...]


class FullText:
    """Fetches the pages of one source's entries through ``session`` (shared, thread-safe for
    ``get``), each under ``timeout`` and ``max_bytes`` as the source's own document is."""

    def __init__(
        self,
        session: requests.Session,
        *,
        user_agent: str,
        mode: str,
        min_chars: int,
        timeout: float,
        max_bytes: int,
        per_host: int = PER_HOST,
        workers: int = WORKERS,
    ) -> None:
        self._fetcher = Fetcher(session, user_agent=user_agent, accept=PAGE_ACCEPT)
        self.mode = mode
        self.min_chars = min_chars
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._per_host = max(1, per_host)
        self._workers = max(1, workers)
        self.budget = BUDGET_TIMEOUTS * timeout

    def complete(
        self,
        entries: Sequence[EntryData],
        *,
        source: str,
        base_url: str | None,
        cached: Mapping[str, CachedPage],
    ) -> Completed:
        """Fetch the pages ``entries`` need and put their articles in. ``cached`` is what
        storage has of the source's pages, by URL. Raises nothing: a page's failure is a
        problem of its item."""
        wanted: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if wants_page(entry, self.mode, self.min_chars):
                url = canonical_url(entry.url, base_url)
                if url is not None:
                    wanted.setdefault(url, []).append(i)
        if not wanted:
            return Completed(tuple(entries), (), ())
        outcomes = self._fetch_all(list(wanted), source, cached)
        done = list(entries)
        pages: list[CachedPage] = []
        problems: list[str] = []
        late = 0
        for url, indexes in wanted.items():
            page, problem = outcomes[url]
            if page is not None:
                pages.append(page)
            if problem is _OUT_OF_TIME:
                late += 1
            elif problem is not None:
                problems.append(f"item {shorten(clean_line(url), _LABEL_CHARS)}: {problem}")
            if page is not None and page.article is not None:
                for i in indexes:
                    done[i] = with_article(done[i], page.article)
        if late:
            # One line, not one per item: a run out of time may leave hundreds.
            problems.append(
                f"full text not fetched for {late} of {len(wanted)} items: the "
                f"{self.budget:g} s this source may spend on pages ran out; "
                "the next gather tries them"
            )
        return Completed(tuple(done), tuple(pages), tuple(problems))

    def _fetch_all(
        self, urls: Sequence[str], source: str, cached: Mapping[str, CachedPage]
    ) -> dict[str, tuple[CachedPage | None, str | None]]:
        """Each URL's page and problem. ``WORKERS`` threads take the URLs host by host, at
        most ``per_host`` of one host at a time and in order within a host: pages without a
        stored copy first, so a run out of time leaves the next one the pages it lacks, not
        pages it would only confirm with a 304."""
        ends = time.monotonic() + self.budget
        queues: dict[str, deque[str]] = {}
        for url in sorted(urls, key=lambda u: u in cached):
            queues.setdefault(urlsplit(url).netloc, deque()).append(url)
        busy: dict[str, int] = dict.fromkeys(queues, 0)
        turn = threading.Condition()
        results: dict[str, tuple[CachedPage | None, str | None]] = {}

        def next_url() -> tuple[str, str] | None:
            with turn:
                while True:
                    host = next(
                        (h for h, q in queues.items() if q and busy[h] < self._per_host), None
                    )
                    if host is not None:
                        busy[host] += 1
                        queues[host] = queues.pop(host)  # to the back: hosts take turns
                        return host, queues[host].popleft()
                    if not any(queues.values()):
                        return None
                    turn.wait()

        def work() -> None:
            while (taken := next_url()) is not None:
                host, url = taken
                try:
                    if time.monotonic() >= ends:
                        results[url] = (cached.get(url), _OUT_OF_TIME)
                    else:
                        results[url] = self._page(url, source, cached.get(url))
                finally:
                    with turn:
                        busy[host] -= 1
                        turn.notify_all()

        workers = min(self._workers, len(urls))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fulltext") as pool:
            for done in [pool.submit(work) for _ in range(workers)]:
                done.result()
        return results

    def _page(
        self, url: str, source: str, cached: CachedPage | None
    ) -> tuple[CachedPage | None, str | None]:
        """The page at ``url``, fetched (or confirmed unchanged), and a problem or None."""
        state = SourceState(
            name=source,
            etag=cached.etag if cached else None,
            last_modified=cached.last_modified if cached else None,
        )
        try:
            fetched = self._fetcher.get(
                url, state, source=source, timeout=self._timeout, max_bytes=self._max_bytes
            )
        except SourceError as e:
            kept = "kept the copy fetched before" if cached else "kept the feed's text"
            return cached, f"full text not fetched ({e.message}); {kept}"
        now = clock.now()
        if fetched.not_modified:
            if cached is None:
                return None, "full text not fetched (HTTP 304 to a request without validators)"
            return replace(cached, fetched=now), _no_article(cached.article)
        if fetched.media_type not in _HTML_TYPES:
            return None, f"full text not fetched (the page is {fetched.media_type}, not HTML)"
        try:
            article = extract_article(_decode(fetched), fetched.url or url)
        except Exception as e:
            # A bug (ours or the extractor's) met by one page costs that item its full text.
            log.exception("source %r: cannot extract the article at %s", source, url)
            return None, f"full text not extracted ({type(e).__name__}: {clean_line(str(e))})"
        page = CachedPage(
            url=url,
            fetched=now,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            article=article,
        )
        return page, _no_article(article)


def _no_article(article: Extracted | None) -> str | None:
    return "no article found in the page; kept the feed's text" if article is None else None


def _decode(fetched: Fetched) -> str:
    if fetched.charset:
        try:
            return fetched.body.decode(fetched.charset, errors="replace")
        except LookupError:
            pass  # a charset Python does not know: guess, as for a page that names none
    # UTF-8 first, then a guess from the bytes (and a lossy decode as the last resort).
    return decode_file(fetched.body)
