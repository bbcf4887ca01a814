"""The publisher's decisions as pure functions: no database, no clock, no network."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from newsletter import rules
from newsletter.types import ArticleData, ClaimedRecipient, StoredArticleState, SubscriberStatus
from tests._factories import make_article

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def data(key: str = "a", **changes: object) -> ArticleData:
    values: dict[str, object] = {
        "source": "S",
        "key": key,
        "title": f"Title {key}",
        "url": f"https://example.com/{key}",
        "author": None,
        "published": NOW - timedelta(hours=2),
        "updated": None,
        "summary": "<p>s</p>",
        "content": "<p>c</p>",
    }
    values.update(changes)
    return ArticleData(**values)  # type: ignore[arg-type]


def stored(a: ArticleData, published: datetime) -> StoredArticleState:
    return StoredArticleState(1, a.key, rules.content_hash(a), published)


def test_a_new_article_keeps_its_past_date_and_a_future_or_missing_one_becomes_now() -> None:
    past, future, undated = (
        data("past"),
        data("future", published=NOW + timedelta(days=3)),
        data("undated", published=None),
    )
    writes, unchanged = rules.article_writes([past, future, undated], {}, NOW)
    assert unchanged == 0
    by_key = {w.data.key: w for w in writes}
    assert by_key["past"].published == NOW - timedelta(hours=2)
    assert by_key["future"].published == NOW
    assert by_key["undated"].published == NOW
    assert all(w.previous_hash is None for w in writes)
    assert all(w.updated >= w.published for w in writes)


def test_an_unchanged_article_is_not_written_and_a_changed_one_is_updated_once() -> None:
    old = data("x")
    same, edited = old, replace(old, title="Edited")
    known = {"x": stored(old, old.published or NOW)}
    writes, unchanged = rules.article_writes([same], known, NOW)
    assert (writes, unchanged) == ([], 1)
    writes, unchanged = rules.article_writes([edited], known, NOW)
    assert unchanged == 0 and len(writes) == 1
    (w,) = writes
    assert w.previous_hash == known["x"].content_hash  # updated only if nobody changed it since
    assert w.content_hash != w.previous_hash
    assert w.updated == NOW  # the source gave no update time: now


def test_an_edit_never_moves_the_date_into_the_future() -> None:
    old = data("x")
    known = {"x": stored(old, NOW - timedelta(days=1))}
    edited = replace(old, title="New", published=NOW + timedelta(hours=5))
    (w,), _ = rules.article_writes([edited], known, NOW)
    assert w.published == NOW - timedelta(days=1)


def test_the_first_digest_takes_only_the_look_back_and_later_ones_skip_old_back_catalogue() -> None:
    lookback = NOW - timedelta(hours=24)
    fresh = make_article(1, id=1, published=NOW - timedelta(hours=1))
    old = make_article(2, id=2, published=NOW - timedelta(days=9))
    old_backfill = replace(make_article(3, id=3, published=NOW - timedelta(days=9)), backfill=True)
    first = rules.choose_digest_articles(
        [old, fresh, old_backfill], first=True, lookback_start=lookback, max_items=10
    )
    assert [a.id for a in first.articles] == [1]
    later = rules.choose_digest_articles(
        [old, fresh, old_backfill], first=False, lookback_start=lookback, max_items=10
    )
    assert [a.id for a in later.articles] == [1, 2]  # newest first; the back catalogue left out


def test_max_items_cuts_and_counts_the_rest_in_a_stable_order() -> None:
    same_time = [make_article(i, id=i, published=NOW - timedelta(hours=1)) for i in range(1, 6)]
    choice = rules.choose_digest_articles(
        reversed(same_time), first=False, lookback_start=NOW, max_items=3
    )
    assert [a.id for a in choice.articles] == [5, 4, 3] and choice.more == 2


def test_who_left_since_the_digest_was_made_is_skipped() -> None:
    people = [
        ClaimedRecipient(1, "a@example.com", None, SubscriberStatus.ACTIVE),
        ClaimedRecipient(2, "b@example.com", None, SubscriberStatus.UNSUBSCRIBED),
        ClaimedRecipient(3, "c@example.com", None, SubscriberStatus.BOUNCED),
        ClaimedRecipient(4, "d@example.com", None, SubscriberStatus.ACTIVE),
    ]
    send, skip = rules.split_claimed(people)
    assert [r.subscriber_id for r in send] == [1, 4]
    assert [r.subscriber_id for r in skip] == [2, 3]


def test_a_dead_nodes_batch_is_resent_only_where_the_provider_drops_duplicates() -> None:
    sent = NOW - timedelta(hours=1)
    assert rules.reclaim(sent, idempotent=False, window=None, now=NOW) == rules.Reclaim.UNCERTAIN
    assert rules.reclaim(sent, idempotent=True, window=None, now=NOW) == rules.Reclaim.RESEND
    window = timedelta(hours=23)
    assert rules.reclaim(sent, idempotent=True, window=window, now=NOW) == rules.Reclaim.RESEND
    long_ago = NOW - timedelta(hours=30)
    assert (
        rules.reclaim(long_ago, idempotent=True, window=window, now=NOW) == rules.Reclaim.UNCERTAIN
    )
