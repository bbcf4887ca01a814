"""The publisher's decisions, as pure functions: no database, no network, no clock of their own.

Storage hands over rows and stores what these functions decide, the way reader's ``_update``
decides and ``_storage`` only reads and writes. Tests call them directly.

Owns: whether a fetched article is new, changed or unchanged and which dates it keeps; which
articles go into a digest; which claimed recipients are sent or skipped; what happens to a
batch whose node died. Does not own: SQL, fetching, rendering, sending.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from newsletter.types import (
    Article,
    ArticleData,
    ArticleWrite,
    ClaimedRecipient,
    StoredArticleState,
    SubscriberStatus,
)

# --- gathering -----------------------------------------------------------------------------------


def content_hash(a: ArticleData) -> str:
    """A fingerprint of everything an article shows: equal hashes, nothing to update."""
    payload = json.dumps(
        [
            a.title,
            a.url,
            a.author,
            a.published and a.published.isoformat(),
            a.updated and a.updated.isoformat(),
            a.summary,
            a.content,
            list(a.tags),
            a.image_url,
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def fingerprint(a: ArticleData) -> tuple[str, str] | None:
    """What identifies an article whose id cannot be trusted: its canonical link and content
    hash. None without a link: content alone is not an identity (two link-less posts may say
    the same thing)."""
    return (a.url, content_hash(a)) if a.url else None


def article_writes(
    articles: Iterable[ArticleData],
    stored: Mapping[str, StoredArticleState],
    now: datetime,
    known: Collection[tuple[str, str]] = frozenset(),
) -> tuple[list[ArticleWrite], int]:
    """What to store of a fetch: (writes, unchanged count).

    A new article without a date, or dated in the future, is dated when we first saw it: the
    honest time. A changed one keeps its stored date unless the source now gives a past one,
    and its ``updated`` is the source's (past) value or now, never before ``published``.

    An article under a key not stored whose ``fingerprint`` is in ``known`` (the source
    already has an article with that link and content) is the same article under an id that
    changed: unchanged, not new. Some feeds make a fresh guid on every request; each fetch
    would otherwise be "news" and send a digest of nothing new.
    """
    writes: list[ArticleWrite] = []
    unchanged = 0
    for a in articles:
        digest = content_hash(a)
        old = stored.get(a.key)
        if old is None and a.url and (a.url, digest) in known:
            unchanged += 1
        elif old is None:
            published = a.published if a.published and a.published <= now else now
            updated = max(a.updated or published, published)
            writes.append(ArticleWrite(a, published, updated, digest))
        elif old.content_hash != digest:
            published = a.published if a.published and a.published <= now else old.published
            changed = a.updated if a.updated and a.updated <= now else now
            writes.append(
                ArticleWrite(a, published, max(changed, published), digest, old.content_hash)
            )
        else:
            unchanged += 1
    return writes, unchanged


# --- digests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestChoice:
    articles: tuple[Article, ...]  # newest first, at most ``max_items``
    more: int  # eligible articles beyond ``max_items``
    # Every candidate, shown or not: the digest accounts for them all, so none comes back in
    # a later digest (the old back catalogue, what did not fit). Sorted ids.
    covered: tuple[int, ...] = ()


def choose_digest_articles(
    candidates: Iterable[Article],
    *,
    first: bool,
    lookback_start: datetime,
    max_items: int,
) -> DigestChoice:
    """The next digest's articles, from ``candidates``: the stored articles no digest has
    covered yet, whenever (and by whatever clock) they were gathered.

    The first digest takes only articles published since ``lookback_start``, so subscribers do
    not get the sources' whole back catalogue; later, a source's back catalogue (found on its
    first fetch) is held to the same look-back. Newest first, ties by id, so the order is
    stable. The digest covers every candidate, shown or passed over: what it leaves out
    (beyond ``max_items``, outside the look-back) is not offered again by the next one.
    """
    pool = list(candidates)
    eligible = [a for a in pool if a.published >= lookback_start or (not first and not a.backfill)]
    eligible.sort(key=lambda a: (a.published, a.id), reverse=True)
    return DigestChoice(
        tuple(eligible[:max_items]),
        max(0, len(eligible) - max_items),
        tuple(sorted(a.id for a in pool)),
    )


@dataclass(frozen=True)
class ItemMail:
    """The next mail of ``[digest] mode = "per_item"``: one article (``single``), or the
    digest that rolls up a backlog too long for one mail each."""

    choice: DigestChoice
    single: bool


def next_item_mail(
    candidates: Iterable[Article],
    *,
    first: bool,
    lookback_start: datetime,
    per_item_max: int,
    max_items: int,
) -> ItemMail | None:
    """The next mail to create in per-item mode, from the articles no mail covered yet (the
    same pool and look-back as ``choose_digest_articles``); None when nothing is eligible.

    Called again after each mail is created, so it decides from what is left: with more than
    ``per_item_max`` eligible articles, everything but the newest ``per_item_max`` becomes
    one ordinary digest first; then each remaining article gets its own mail, oldest first.
    The newest are the ones sent alone because they are the news the reader is waiting for
    (the older ones of a feed that just published 200 items are mostly its back catalogue),
    and sending the roll-up before them, then the singles oldest first, leaves the inbox in
    publication order with the newest on top. Deciding from what is left keeps it true after
    a crash and across nodes: a rerun finds the roll-up made and sends the singles.

    The first mail also covers the candidates that are not eligible (outside the look-back),
    as a digest does, so they are not offered again once the look-back no longer applies.
    """
    pool = list(candidates)
    eligible = [a for a in pool if a.published >= lookback_start or (not first and not a.backfill)]
    if not eligible:
        return None
    eligible.sort(key=lambda a: (a.published, a.id), reverse=True)
    chosen = {a.id for a in eligible}
    passed = [a.id for a in pool if a.id not in chosen]
    if len(eligible) > per_item_max:
        rest = eligible[per_item_max:]
        choice = DigestChoice(
            tuple(rest[:max_items]),
            max(0, len(rest) - max_items),
            tuple(sorted([*(a.id for a in rest), *passed])),
        )
        return ItemMail(choice, single=False)
    oldest = eligible[-1]
    return ItemMail(DigestChoice((oldest,), 0, tuple(sorted([oldest.id, *passed]))), single=True)


# --- delivering ----------------------------------------------------------------------------------


def split_claimed(
    recipients: Sequence[ClaimedRecipient],
) -> tuple[list[ClaimedRecipient], list[ClaimedRecipient]]:
    """(send, skip): someone who is no longer active (unsubscribed, bounced, complained since
    the digest was created) is skipped, never sent to."""
    send = [r for r in recipients if r.status == SubscriberStatus.ACTIVE]
    skip = [r for r in recipients if r.status != SubscriberStatus.ACTIVE]
    return send, skip


class Reclaim(StrEnum):
    RESEND = "resend"  # back to pending under its key: the provider drops the duplicate
    UNCERTAIN = "uncertain"  # may have arrived; re-sent only with --resend-uncertain


def reclaim(
    first_sent_at: datetime | None,
    *,
    idempotent: bool,
    window: timedelta | None,
    now: datetime,
) -> Reclaim:
    """What to do with a batch whose lease expired (its node died mid-send).

    Re-sending is safe only where the provider de-duplicates by the batch's key, and only while
    it still remembers the key: ``window`` after the batch was first sent (None: forever).
    """
    if not idempotent:
        return Reclaim.UNCERTAIN
    if window is not None and first_sent_at is not None and first_sent_at < now - window:
        return Reclaim.UNCERTAIN
    return Reclaim.RESEND
