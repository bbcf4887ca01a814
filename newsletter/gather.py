"""The gather pipeline: sources -> normalize -> sanitize -> storage, one result per source.

Owns: running every source's fetch in a thread pool (network waits overlap), turning each
``EntryData`` into an ``ArticleData`` (stable key, canonical URL, plain-text title, sanitized
HTML, a summary), and storing each source's outcome from the calling thread, one transaction per
source. Errors are values: a failing source becomes a ``GatherResult`` with ``error`` set and is
recorded in storage; it never stops the others.

Does not own: fetching or parsing (``newsletter.sources``), deciding whether a stored article
changed (``newsletter.rules``), SQL (``newsletter.storage``), which sources are enabled (the
caller passes only the ones to gather), scheduling or retries.

Every entry of every kind is sanitized here, with the one sanitizer
(``newsletter.sanitize.sanitize_html``): nh3 keeps a conservative set of tags, drops scripts,
styles, frames, forms, event handlers and inline styles, allows only http, https and mailto URLs,
makes relative URLs absolute and marks links ``rel="noopener noreferrer"``.
"""

from __future__ import annotations

import hashlib
import html
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from newsletter import clock, rules
from newsletter.exceptions import SourceError
from newsletter.sanitize import canonical_url, sanitize_html
from newsletter.sources import Source
from newsletter.storage import Storage
from newsletter.text import clean_line, clean_text, has_unsafe_chars, html_to_text, shorten
from newsletter.types import ArticleData, EntryData, FetchResult, GatherResult, SourceState

log = logging.getLogger(__name__)

__all__ = [
    "ItemLimits",
    "canonical_url",
    "date_window",
    "gather",
    "item_label",
    "normalize",
    "sanitize_html",
    "store_articles",
]

SUMMARY_CHARS = 300
# A "summary" with more text than this is the whole article (RSS feeds often put everything in
# <description>); a digest wants an excerpt instead.
_LONGEST_SUMMARY = 1000
UNTITLED = "Untitled"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AHEAD = timedelta(days=1)
_TAG_CHARS = 100  # a tag is a word or two; longer is a sentence pasted in the wrong field
_LABEL_CHARS = 120
# One warning line per source: the first few items' problems, then a count of the rest.
_PROBLEMS_SHOWN = 5

# --- entries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemLimits:
    """What one entry may carry (``[http] max_tags_per_item``, ``max_title_chars``): more
    is cut, with a warning against its source."""

    max_tags: int = 50
    max_title_chars: int = 1000


def date_window(now: datetime) -> tuple[datetime, datetime]:
    """The dates an article may carry: from the Unix epoch to one day ahead of ``now`` (a
    clock a little ahead, or a time zone written wrong, is not a reason to refuse a date)."""
    return _EPOCH, now + _AHEAD


def normalize(
    source: str,
    entry: EntryData,
    base_url: str | None,
    *,
    limits: ItemLimits = ItemLimits(),
    problems: list[str] | None = None,
) -> ArticleData | None:
    """The article an entry describes, or None for an entry with no title, URL or content.

    ``key`` is the entry's guid, else its canonical URL, else a hash of its title and content.
    Relative links in the content resolve against ``base_url`` (where the feed came from), or
    against the article's own URL when the source has no base.

    Whatever the source sent is made storable here: lone surrogates become U+FFFD in every
    text field, control characters are removed (from titles, authors and tags all of them),
    dates are clamped to ``date_window``, the title is cut to ``limits.max_title_chars`` and
    the tags to ``limits.max_tags``. Each change made is described, naming the item, in
    ``problems`` when it is given.
    """
    notes: list[str] = []
    url = canonical_url(clean_text(entry.url) if entry.url else None, base_url)
    link_base = base_url or url
    raw_content = clean_text(entry.content or entry.summary or "")
    content = sanitize_html(raw_content, link_base)
    raw_title = clean_text(entry.title)
    title = clean_line(html_to_text(raw_title))
    if not title and url is None and not content:
        return None
    if len(title) > limits.max_title_chars:
        notes.append(f"title of {len(title):,} characters cut to {limits.max_title_chars:,}")
        title = shorten(title, limits.max_title_chars)
    summary = sanitize_html(clean_text(entry.summary), link_base) if entry.summary else ""
    summary_text = html_to_text(summary)
    if not summary_text or len(summary_text) > _LONGEST_SUMMARY:
        # Derived summaries are plain text: escaping makes them valid HTML like the others.
        summary = html.escape(
            shorten(summary_text or html_to_text(content), SUMMARY_CHARS), quote=False
        )
    guid = clean_line(entry.guid or "")
    if guid:
        key = guid
    elif url is not None:
        key = url
    else:
        # Hash what the source gave, not our sanitized output, so a sanitizer upgrade cannot
        # change the key (and duplicate the article).
        raw = f"{raw_title}\n{raw_content}".encode()
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
    window = date_window(clock.now())
    published = _clamp(_aware(entry.published), window, "published", notes)
    updated = _clamp(_aware(entry.updated), window, "updated", notes)
    image = canonical_url(clean_text(entry.image_url), link_base) if entry.image_url else None
    author = clean_line(entry.author or "") or None
    tags = _tags(entry.tags, limits.max_tags, notes)
    scrubbed = [
        name
        for name, value in (
            ("title", entry.title),
            ("author", entry.author),
            ("tags", "".join(entry.tags)),
            ("summary", entry.summary),
            ("content", entry.content),
            ("id", entry.guid),
            ("link", entry.url),
        )
        if value and has_unsafe_chars(value)
    ]
    if scrubbed:
        # Removed, or U+FFFD for a lone surrogate: the rest of the text is kept.
        notes.append(f"control characters or lone surrogates removed from {', '.join(scrubbed)}")
    if notes and problems is not None:
        problems.append(f"item {item_label(entry)}: " + ", ".join(notes))
    return ArticleData(
        source=source,
        key=key,
        title=title or UNTITLED,
        url=url,
        author=author,
        # A feed with only an "updated" date (RSS 1.0's dc:date, many Atom feeds) means that.
        published=published or updated,
        updated=updated,
        summary=summary,
        content=content,
        tags=tags,
        image_url=image,
    )


def item_label(entry: EntryData) -> str:
    """How a warning names an entry: its link, else its id, else its title; one short line."""
    for value in (entry.url, entry.guid, entry.title):
        label = clean_line(value or "")
        if label:
            return shorten(label, _LABEL_CHARS)
    return "without link, id or title"


def _aware(value: datetime | None) -> datetime | None:
    # Storage compares with an aware "now"; a naive date from a source is taken as UTC.
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _clamp(
    value: datetime | None, window: tuple[datetime, datetime], name: str, notes: list[str]
) -> datetime | None:
    """``value`` in UTC within ``window``. A date near year 1 or 9999 may not even convert to
    UTC (0001-01-01T00:00:00+14:00 is in year 0); it is clamped to the end it is nearest."""
    if value is None:
        return None
    low, high = window
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        clamped = low if value.year < 5000 else high
    else:
        if low <= utc <= high:
            return utc
        clamped = low if utc < low else high
    notes.append(f"{name} {value.isoformat()} out of range, clamped to {clamped.date()}")
    return clamped


def _tags(tags: Sequence[str], limit: int, notes: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    total = 0
    for tag in tags:
        clean = clean_line(tag)
        if len(clean) > _TAG_CHARS:
            clean = shorten(clean, _TAG_CHARS)
        if clean and clean.casefold() not in seen:
            total += 1
            seen.add(clean.casefold())
            if len(out) < limit:
                out.append(clean)
    if total > limit:
        notes.append(f"{total:,} tags, kept the first {limit:,}")
    return tuple(out)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    result: FetchResult
    articles: tuple[ArticleData, ...]
    problems: tuple[str, ...] = ()  # what normalizing changed or refused, per item


def gather(
    sources: Sequence[Source],
    storage: Storage,
    *,
    progress: Callable[[GatherResult], None] | None = None,
    max_workers: int = 8,
    stopping: threading.Event | None = None,
    limits: ItemLimits = ItemLimits(),
) -> list[GatherResult]:
    """Fetch every source and store what it found. Returns one result per source, in order.

    Fetching (and normalizing) runs in up to ``max_workers`` threads; storing runs in the
    calling thread, one transaction per source, as each fetch finishes, and ``progress`` is
    called with each result right after. A ``SourceError`` is recorded for its source and
    returned as a value. ``StorageError`` is not a source's problem and propagates. Once
    ``stopping`` is set, fetches not started yet are dropped and the sources already fetched
    are stored; the result has no entry for the dropped ones. Entries are held to ``limits``;
    what normalizing changed or refused becomes part of the source's warning.
    """
    if not sources:
        return []
    # Each source gets its stored pages (full text) in its state: sources never read storage.
    states = [
        replace(storage.sync_source(s.name, s.location), pages=storage.cached_pages(s.name))
        for s in sources
    ]
    results: list[GatherResult | None] = [None] * len(sources)
    workers = max(1, min(max_workers, len(sources)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gather") as pool:
        futures: dict[Future[_Fetched | SourceError], int] = {
            pool.submit(_fetch, source, state, limits): i
            for i, (source, state) in enumerate(zip(sources, states, strict=True))
        }
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                i = futures[future]
                result = _store(storage, sources[i].name, states[i], future.result())
                results[i] = result
                if progress is not None:
                    progress(result)
                if stopping is not None and stopping.is_set():
                    for pending in futures:
                        pending.cancel()
        except BaseException:
            # Storage failed (or we were interrupted): do not start fetches nobody will store.
            for future in futures:
                future.cancel()
            raise
    return [r for r in results if r is not None]


def _fetch(source: Source, state: SourceState, limits: ItemLimits) -> _Fetched | SourceError:
    """Runs in a worker thread: fetch and normalize one source. Never raises."""
    try:
        result = source.fetch(state)
        articles, problems = _normalize_all(source.name, result, limits)
        # What the source found wrong with single entries (a page it could not fetch for its
        # full text) is reported with what normalizing found.
        problems = result.problems + problems
    except SourceError as e:
        return e
    except Exception as e:
        # Anything else is a bug, in our code or a parser's. It is still one source's problem:
        # log the traceback and record it like any other failure, so the other sources go on.
        log.exception("source %r: unexpected error", source.name)
        return SourceError(
            f"unexpected error: {type(e).__name__}: {e}", source=source.name, url=source.location
        )
    return _Fetched(result, articles, problems)


def _normalize_all(
    name: str, result: FetchResult, limits: ItemLimits = ItemLimits()
) -> tuple[tuple[ArticleData, ...], tuple[str, ...]]:
    """The source's articles, and what normalizing them changed or refused, per item. One
    entry that cannot be normalized is skipped; it never costs the source its other entries."""
    by_key: dict[str, ArticleData] = {}
    problems: list[str] = []
    for entry in result.entries:
        try:
            article = normalize(name, entry, result.base_url, limits=limits, problems=problems)
        except Exception as e:
            # A bug (ours or a library's) met by one entry: that entry is the casualty.
            log.exception("source %r: cannot normalize an entry", name)
            label = _safe_label(entry)
            problems.append(f"item {label}: skipped ({type(e).__name__}: {clean_line(str(e))})")
            continue
        if article is None:
            log.debug("source %r: skipped an entry with no title, URL or content", name)
        elif article.key in by_key:
            # The same entry twice in one document: feeds list newest first, keep that one.
            log.debug("source %r: duplicate entry %r ignored", name, article.key)
        else:
            by_key[article.key] = article
    return tuple(by_key.values()), tuple(problems)


def _safe_label(entry: EntryData) -> str:
    try:
        return item_label(entry)
    except Exception:
        return "(unreadable)"


def problems_warning(problems: Sequence[str]) -> str | None:
    """One warning line for a source's per-item problems: the first few, then a count."""
    if not problems:
        return None
    shown = "; ".join(problems[:_PROBLEMS_SHOWN])
    rest = len(problems) - _PROBLEMS_SHOWN
    return shown + (f"; and {rest:,} more items" if rest > 0 else "")


def store_articles(
    storage: Storage,
    name: str,
    articles: Sequence[ArticleData],
    now: datetime,
    *,
    result: FetchResult | None = None,
    backfill: bool = False,
    warning: str | None = None,
) -> tuple[int, int, int]:
    """Store a source's normalized articles and its fetch ``result``: what is new or changed
    is decided by ``rules.article_writes``. Returns (new, updated, unchanged). A write
    another node made first (the same article, gathered at the same moment) is skipped by
    storage and counted as unchanged here: it is that node's news."""
    stored = storage.stored_articles(name, [a.key for a in articles]) if articles else {}
    # Only articles whose key is not stored can be an old article under a changed id.
    unknown = [f for a in articles if a.key not in stored and (f := rules.fingerprint(a))]
    known = storage.known_fingerprints(name, unknown) if unknown else set()
    writes, unchanged = rules.article_writes(articles, stored, now, known)
    new, updated = storage.store_fetch(
        name, result or FetchResult(), writes, now, backfill=backfill, warning=warning
    )
    return new, updated, unchanged + len(writes) - new - updated


def _store(
    storage: Storage, name: str, state: SourceState, outcome: _Fetched | SourceError
) -> GatherResult:
    now = clock.now()
    if isinstance(outcome, SourceError):
        log.warning("%s", outcome)
        storage.store_fetch_error(name, clean_line(str(outcome)), now)
        return GatherResult(source=name, error=outcome)
    result = outcome.result
    # Nothing was parsed on a 304 (or an unchanged file), so the last warning still stands.
    if result.not_modified:
        warning = state.warning
    else:
        parts = [result.warning, problems_warning(outcome.problems)]
        # A parser's message may quote the document: it is text from outside like any other.
        warning = clean_line("; ".join(p for p in parts if p)) or None
    new, updated, unchanged = store_articles(
        storage,
        name,
        outcome.articles,
        now,
        result=result,
        # Found on the source's first successful fetch: its back catalogue (see rules).
        backfill=state.last_success is None,
        warning=warning,
    )
    if warning and not result.not_modified:
        log.warning("source %r: %s", name, warning)
    if result.permanent_url:
        log.info("source %r moved permanently to %s", name, result.permanent_url)
    log.info(
        "source %r: %s",
        name,
        "not modified"
        if result.not_modified
        else f"{new} new, {updated} updated, {unchanged} unchanged",
    )
    return GatherResult(
        source=name,
        new=new,
        updated=updated,
        unchanged=unchanged,
        not_modified=result.not_modified,
        warning=warning,
    )
