"""One story, told once: which stored articles tell the same story, across sources.

Each article's body (its content, else its summary) becomes normalized words (tags dropped,
case folded, punctuation gone) and the set of its word 5-shingles. Two articles of different
sources tell the same story when at least ``min_overlap`` of the smaller one's shingles
appear in the other and they share at least ``min_shared``. That holds for a summary that
quotes a long article, a republication with inserted comments, a changed headline or an
edited press release, and not for two stories on the same topic, which share words but
seldom five in a row (``tests/data/grouping/``, ``benchmarks/grouping.py``). A shingle found
in more than ``max_df`` articles of the window is boilerplate (a newsletter footer, a
copyright line) and counts for nothing. Stories are the connected components of those pairs.

Articles are read once, in the order they arrived, through a sliding window of
``window_hours`` of first-seen time: an article is compared with those that arrived at most
that long before it, through an inverted index of the window's shingles, so the memory is the
window's and the work grows with the number of articles, not its square. The decision about
an article is taken when it arrives and uses only what arrived before it: a group found once
stays the same in every later run, whatever arrives afterwards (an article arriving later can
only join it), which keeps the feeds' archive pages unchanged.

Owns: normalizing, shingling, the index and the grouping rule. Does not own: reading
articles (the caller streams them) or showing groups (``render.digest``, ``render.feeds``).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from newsletter.text import html_to_text
from newsletter.types import Article

SHINGLE_WORDS = 5
# \w is Unicode-aware: letters and digits of every script are words; punctuation is dropped.
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class GroupSettings:
    """``[digest] group*`` keys: whether to group, and the rule's thresholds."""

    enabled: bool = True
    min_overlap: float = 0.3  # shared shingles / the smaller article's shingles
    min_shared: int = 10
    max_df: int = 50  # a shingle in more articles of the window than this is boilerplate
    window_hours: float = 168.0  # articles further apart (first seen) are never compared


@dataclass(frozen=True)
class RelatedLink:
    """Another version of an article's story, as a feed links to it."""

    uid: str
    url: str | None


@dataclass(frozen=True)
class Stories:
    """The groups found: each article id in a group of two or more, mapped to its group's ids
    (its own included) in arrival order. An article alone is in no group."""

    groups: Mapping[int, tuple[int, ...]]

    def group_of(self, article_id: int) -> tuple[int, ...]:
        return self.groups.get(article_id, (article_id,))

    def related(self, article_id: int) -> tuple[int, ...]:
        """The other members of the article's group (none when it is alone)."""
        return tuple(i for i in self.group_of(article_id) if i != article_id)

    @property
    def count(self) -> int:
        """How many groups of two or more there are."""
        return len({g for g in self.groups.values()})


def words(html: str) -> list[str]:
    """The normalized words of an HTML fragment: its text, case folded, without punctuation."""
    return _WORD.findall(html_to_text(html).casefold())


def shingles(tokens: list[str], size: int = SHINGLE_WORDS) -> frozenset[str]:
    """The word ``size``-shingles of ``tokens``; a text shorter than that is one shingle."""
    if len(tokens) < size:
        return frozenset({" ".join(tokens)}) if tokens else frozenset()
    # zip of the shifted lists: every run of ``size`` words, built in C, not a Python loop.
    # The lists differ in length on purpose: zip stops with the shortest, the last run.
    runs = zip(*(tokens[i:] for i in range(size)), strict=False)
    return frozenset(map(" ".join, runs))


def body(article: Article) -> str:
    """The text an article is compared by: its content, else its summary."""
    return article.content if article.content.strip() else article.summary


class StoryIndex:
    """Groups articles fed to ``add`` in arrival order (see the module's docstring)."""

    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        self.window = timedelta(hours=settings.window_hours)
        self._live: deque[tuple[int, datetime, frozenset[str]]] = deque()
        # The inverted index of the window, in two parts, so that the work done in Python
        # is for the few shingles an article shares and the rest is done by set operations
        # in C: ``_single`` holds a shingle only one article of the window has (most of
        # them), ``_multi`` the others with their articles in arrival order (its length is
        # the shingle's document frequency). Articles leave the window in arrival order, so
        # the one leaving is the first of each of its lists.
        self._single: dict[str, int] = {}
        self._multi: dict[str, list[int]] = {}
        self._sizes: dict[int, int] = {}
        self._sources: dict[int, str] = {}
        self._parent: dict[int, int] = {}
        self._order: dict[int, int] = {}  # article id -> arrival position

    def add(self, article: Article) -> None:
        """Compare ``article`` with the window's articles, then index it."""
        self._evict(article.first_seen - self.window)
        own = shingles(words(body(article)))
        if not own:
            return
        aid = article.id
        self._order.setdefault(aid, len(self._order))
        single, multi = self._single, self._multi
        informative: list[list[int]] = []
        for shingle in own & single.keys():
            pair = multi[shingle] = [single.pop(shingle), aid]
            informative.append(pair)  # in two articles: never past max_df, which is >= 2
        max_df = self.settings.max_df
        for shingle in own & multi.keys():
            found = multi[shingle]
            if found[-1] == aid:
                continue  # moved from ``single`` just above
            # With this article the shingle is in len(found) + 1 articles of the window.
            if len(found) < max_df:
                informative.append(found)
            found.append(aid)
        # difference() with a dict looks each of ``own`` up in it; ``own - d.keys()`` would
        # walk the whole dict instead.
        new = own.difference(single).difference(multi)
        single.update(zip(new, itertools.repeat(aid)))
        # One count over the concatenated lists, in C; ``aid`` itself is in each of them.
        shared = Counter(itertools.chain.from_iterable(informative))
        size = len(own)
        min_shared, min_overlap = self.settings.min_shared, self.settings.min_overlap
        for other, count in shared.items():
            if other == aid or count < min_shared or self._sources[other] == article.source:
                continue
            if count >= min_overlap * min(size, self._sizes[other]):
                self._union(aid, other)
        self._sizes[aid] = size
        self._sources[aid] = article.source
        self._live.append((aid, article.first_seen, own))

    def stories(self) -> Stories:
        members: dict[int, list[int]] = {}
        for aid in self._parent:
            members.setdefault(self._find(aid), []).append(aid)
        groups: dict[int, tuple[int, ...]] = {}
        for ids in members.values():
            if len(ids) > 1:
                group = tuple(sorted(ids, key=self._order.__getitem__))
                groups.update(dict.fromkeys(group, group))
        return Stories(groups)

    def _evict(self, before: datetime) -> None:
        single, multi = self._single, self._multi
        while self._live and self._live[0][1] < before:
            aid, _, own = self._live.popleft()
            shared = own & multi.keys()
            for shingle in shared:
                found = multi[shingle]
                del found[0]
                if len(found) == 1:
                    single[shingle] = found[0]
                    del multi[shingle]
            for shingle in own - shared:  # in ``single``, and so the leaving article's
                del single[shingle]
            del self._sizes[aid], self._sources[aid]

    def _find(self, aid: int) -> int:
        parent = self._parent
        root = aid
        while parent[root] != root:
            root = parent[root]
        while parent[aid] != root:  # path compression
            parent[aid], aid = root, parent[aid]
        return root

    def _union(self, a: int, b: int) -> None:
        for aid in (a, b):
            self._parent.setdefault(aid, aid)
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            # The earlier arrival stays the root: the result does not depend on dict order.
            first, second = sorted((ra, rb), key=self._order.__getitem__)
            self._parent[second] = first


def group_stories(articles: Iterable[Article], settings: GroupSettings) -> Stories:
    """The stories among ``articles``, read in arrival order (``Storage.articles_page``'s:
    first seen, published, id), as the feeds read the whole history."""
    index = StoryIndex(settings)
    if settings.enabled:
        for article in sorted(articles, key=lambda a: (a.first_seen, a.published, a.id)):
            index.add(article)
    return index.stories()


def related_links(
    history: Iterable[Article], settings: GroupSettings
) -> dict[int, tuple[RelatedLink, ...]]:
    """For each article in a story told by several sources, the story's other versions, in
    arrival order. ``history`` is every article in arrival order (``Storage.articles_page``),
    read once; only the window's shingles and each article's id, uid and URL are held."""
    return RelatedHistory(settings).update(lambda: history)


class RelatedHistory:
    """``related_links`` kept up to date over a history that grows at its end: an article is
    shingled and compared once, when it first appears, which gives the same result as
    reading the whole history again, since a decision uses only what arrived before it.

    A long-running process (``newsletter run``) rebuilds the feeds after every gather; this
    keeps that rebuild from shingling every stored article's text again. What an
    article's edit changes is not taken back (as the feeds' archive pages, it stays as it
    was); an article that arrives before one already read (another node's clock) or one that
    was deleted starts the reading over.
    """

    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        # A scheduled gather and a wake-up of another job may both rebuild the feeds.
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._index = StoryIndex(self.settings)
        self._links: dict[int, RelatedLink] = {}
        self._last: tuple[datetime, datetime, int] | None = None

    def update(
        self, history: Callable[[], Iterable[Article]]
    ) -> dict[int, tuple[RelatedLink, ...]]:
        """Read ``history()`` (every article, in arrival order), comparing the new ones."""
        if not self.settings.enabled:
            return {}
        with self._lock:
            if not self._read(history()):
                self._start()
                self._read(history())
            stories = self._index.stories()
            return {
                aid: tuple(self._links[other] for other in stories.related(aid))
                for aid in stories.groups
            }

    def _read(self, history: Iterable[Article]) -> bool:
        """False when what was read before cannot be extended to ``history``."""
        count = 0
        for article in history:
            count += 1
            known = article.id in self._links
            self._links[article.id] = RelatedLink(article.uid, article.url)
            if known:
                continue
            key = (article.first_seen, article.published, article.id)
            if self._last is not None and key < self._last:
                return False
            self._index.add(article)
            self._last = key
        return count == len(self._links)
