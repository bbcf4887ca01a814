"""The whole pipeline on the shipped example: gather -> store -> feeds -> digest -> outbox."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import feedparser
import pytest

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.types import SubscriberStatus

SUBSCRIBERS = ["ada@example.com", "grace@example.org", "linus@example.net", "margaret@example.com"]


@pytest.fixture
def publisher(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Publisher]:
    pub = make_publisher(load_config(example_project))
    report = pub.import_subscribers(example_project.parent / "subscribers.csv")
    assert report.added == 4
    yield pub
    pub.close()


def outbox_messages(publisher: Publisher, digest_id: int) -> dict[str, EmailMessage]:
    folder = publisher.config.mail.provider("outbox").outbox_dir / str(digest_id)
    out: dict[str, EmailMessage] = {}
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out[str(msg["To"].addresses[0].addr_spec)] = msg
    return out


def test_gather_stores_every_example_article_once(publisher: Publisher) -> None:
    first = publisher.gather()
    assert [r.source for r in first] == [
        "Editorial",
        "Field Notes",
        "Open Source Digest",
        "Tiny Links",
    ]
    assert all(r.ok for r in first), [str(r.error) for r in first]
    assert sum(r.new for r in first) == 9
    again = publisher.gather()
    assert sum(r.new for r in again) == 0
    assert publisher.storage.count_articles() == 9
    # sanitized on the way in: the example feeds carry a <script> and an onclick handler
    for article in publisher.storage.recent_articles(50):
        assert "<script" not in article.content and "onclick" not in article.content
        assert "utm_" not in (article.url or "")


def test_feeds_parse_back_in_the_same_order(publisher: Publisher) -> None:
    publisher.gather()
    written = publisher.build_feeds()
    out = publisher.config.feeds.output_dir
    # The feeds, and a page for each editor's article without a url of its own (three).
    assert sorted(p.name for p in written if p.parent == out) == [
        "atom.xml",
        "feed.json",
        "rss.xml",
    ]
    assert len([p for p in written if p.parent.name == "articles"]) == 3
    expected = [a.uid for a in publisher.storage.recent_articles(50)]
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((out / name).read_bytes())
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert [e.id for e in parsed.entries] == expected
    assert publisher.build_feeds() == []  # nothing changed: nothing rewritten


def test_digest_goes_to_every_active_subscriber_once(publisher: Publisher) -> None:
    publisher.gather()
    report = publisher.send_digest()
    assert report.created and report.sent == 4 and report.failed == 0
    assert report.digest_id is not None
    messages = outbox_messages(publisher, report.digest_id)
    assert sorted(messages) == sorted(SUBSCRIBERS)
    for address, msg in messages.items():
        assert msg.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in msg.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
            assert msg[header], header
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["From"] == "The Example Weekly <weekly@news.example.org>"
        html = msg.get_body(("html",))
        assert html is not None
        body = html.get_content()
        assert "nlvar:" not in body  # every placeholder was filled
        unsubscribe = msg["List-Unsubscribe"].split(",")[0].strip("<> ")
        assert unsubscribe.startswith("https://news.example.org/unsubscribe/")
        assert unsubscribe in body
        assert publisher.tokens.matches(unsubscribe.rsplit("/", 1)[1], address)
    # each subscriber got their own link
    links = {m["List-Unsubscribe"] for m in messages.values()}
    assert len(links) == 4

    # a second run: nothing new, nothing sent
    publisher.gather()
    second = publisher.send_digest()
    assert second.digest_id is None and second.sent == 0
    assert "no new articles" in (second.reason or "")
    assert len(list(publisher.config.mail.provider("outbox").outbox_dir.rglob("*.eml"))) == 4


def test_next_digest_holds_only_articles_gathered_since(
    publisher: Publisher, example_project: Path, fixed_clock: list[datetime]
) -> None:
    publisher.gather()
    first = publisher.send_digest()
    fixed_clock[0] += timedelta(days=7)
    (example_project.parent / "articles" / "new.md").write_text(
        "---\ntitle: Fresh news\ndate: 2026-11-28\n---\nBody.\n"
    )
    publisher.gather()
    second = publisher.send_digest()
    assert second.created and second.digest_id == (first.digest_id or 0) + 1
    assert second.articles == 1
    digest = publisher.storage.get_digest(second.digest_id)
    assert digest is not None and "Fresh news" in digest.subject


def test_unsubscribed_never_receive(publisher: Publisher) -> None:
    publisher.gather()
    publisher.remove_subscriber("grace@example.org")
    report = publisher.send_digest()
    assert report.sent == 3
    assert report.digest_id is not None
    assert "grace@example.org" not in outbox_messages(publisher, report.digest_id)
    # and an import never brings them back
    again = publisher.import_subscribers(publisher.config.file.parent / "subscribers.csv")  # type: ignore[union-attr]
    assert again.added == 0 and again.already_present == 4
    grace = publisher.storage.get_subscriber("grace@example.org")
    assert grace is not None and grace.status == SubscriberStatus.UNSUBSCRIBED


def test_recipient_list_is_frozen_when_the_digest_is_created(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    text = example_project.read_text().replace(
        'backend = "outbox"', 'backend = "outbox"\nbatch_size = 1\nconcurrency = 1'
    )
    example_project.write_text(text)
    publisher = make_publisher(load_config(example_project))
    publisher.import_subscribers(example_project.parent / "subscribers.csv")
    publisher.gather()
    batches: list[int] = []

    def during_send(results: object) -> None:
        batches.append(1)
        if len(batches) == 1:
            publisher.add_subscriber("late@example.com", "Late Joiner")  # joins mid-send
            publisher.remove_subscriber("margaret@example.com")  # leaves mid-send

    report = publisher.send_digest(progress=during_send)
    assert report.digest_id is not None
    received = outbox_messages(publisher, report.digest_id)
    assert "late@example.com" not in received
    assert "margaret@example.com" not in received
    assert report.sent == 3 and report.skipped == 1
    publisher.close()


def test_first_digest_skips_the_back_catalogue(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    # With a two-day look-back, only articles published in the last two days count.
    text = example_project.read_text().replace("lookback_hours = 100000", "lookback_hours = 48")
    example_project.write_text(text)
    fixed_clock[0] = datetime.fromisoformat("2026-11-21T20:00:00+00:00")
    publisher = make_publisher(load_config(example_project))
    publisher.gather()
    plan = publisher.plan_digest()
    assert [a.title for a in plan.articles] == [
        "Release round-up: parsers, schedulers and a faster inliner",  # 11-21 10:00Z
        "Typography for e-mail, in one page",  # 11-20 07:45Z
        "Reader mailbag: feeds, filters & folders",  # 11-20 00:00 Berlin = 11-19 23:00Z
    ]
    publisher.close()


def test_no_news_sends_nothing_unless_forced(publisher: Publisher) -> None:
    publisher.gather()
    publisher.send_digest()
    assert publisher.send_digest().digest_id is None
    forced = publisher.send_digest(force=True)
    assert forced.created and forced.sent == 4
