"""The web archive: a page per digest and an index, written on send and by `newsletter feeds`."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import feedparser
import html5lib
import pytest

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.render import archive

NS = {"h": "http://www.w3.org/1999/xhtml"}
FEED_TYPES = {
    "application/rss+xml": "rss.xml",
    "application/atom+xml": "atom.xml",
    "application/feed+json": "feed.json",
}


@pytest.fixture
def publisher(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Publisher]:
    pub = make_publisher(load_config(example_project))
    pub.import_subscribers(example_project.parent / "subscribers.csv")
    pub.gather()
    yield pub
    pub.close()


def archive_dir(publisher: Publisher) -> Path:
    return publisher.config.feeds.output_dir / "archive"


def parse(path: Path) -> object:
    """The document as an ElementTree, failing on any HTML parse error."""
    return html5lib.HTMLParser(strict=True).parse(path.read_text(encoding="utf-8"))


def alternates(document: object) -> dict[str, str]:
    links = document.findall(".//h:head/h:link[@rel='alternate']", NS)  # type: ignore[attr-defined]
    return {link.get("type"): link.get("href") for link in links}


def test_a_sent_digest_gets_its_page_and_links_to_it(publisher: Publisher) -> None:
    report = publisher.send_digest()
    assert report.digest_id is not None
    digest = publisher.storage.get_digest(report.digest_id)
    assert digest is not None
    name = f"2026-11-22-{digest.uid}.html"
    assert archive.page_name(digest.created_at, digest.uid) == name
    page = archive_dir(publisher) / name
    assert page.is_file()
    url = f"https://news.example.org/archive/{name}"
    assert archive.page_url(publisher.config.newsletter, digest.created_at, digest.uid) == url
    # the stored digest (so every message) links to this page
    assert f'href="{url}"' in digest.html
    assert f"] {url}\n" in digest.text
    html = page.read_text(encoding="utf-8")
    # the same digest, filled for nobody in particular: no placeholder, no address, no token
    assert "nlvar:" not in html
    assert "@example.com" not in html and "@example.org" not in html
    assert "/unsubscribe/" not in html
    assert 'href="https://news.example.org/subscribe"' in html
    assert "Hi there," in html and "because you subscribed to" in html
    assert digest.subject in html and "Release round-up" in html
    document = parse(page)
    assert document.find(".//h:title", NS).text == digest.subject  # type: ignore[attr-defined]
    assert set(alternates(document)) == set(FEED_TYPES)


def test_the_index_lists_every_issue_newest_first_with_feed_autodiscovery(
    publisher: Publisher, example_project: Path, fixed_clock: list[datetime]
) -> None:
    first = publisher.send_digest()
    fixed_clock[0] += timedelta(days=7)
    (example_project.parent / "articles" / "next.md").write_text(
        "---\ntitle: Next week's news\ndate: 2026-11-28\n---\nBody & more.\n"
    )
    publisher.gather()
    second = publisher.send_digest()
    assert first.digest_id is not None and second.digest_id is not None
    digests = publisher.storage.list_digests()
    assert [d.id for d in digests] == [second.digest_id, first.digest_id]  # newest first
    assert [len(d.article_ids) for d in digests] == [1, 9]

    index = archive_dir(publisher) / "index.html"
    document = parse(index)
    items = document.findall(".//h:main/h:ol/h:li", NS)  # type: ignore[attr-defined]
    assert len(items) == 2
    hrefs = [li.find("h:a", NS).get("href") for li in items]
    assert hrefs == [archive.page_name(d.created_at, d.uid) for d in digests]
    for href in hrefs:
        assert (index.parent / href).is_file()  # relative links that resolve
    assert [li.find("h:a", NS).text for li in items] == [d.subject for d in digests]
    assert [li.find("h:time", NS).get("datetime") for li in items] == [
        "2026-11-29T08:00:00+00:00",
        "2026-11-22T08:00:00+00:00",
    ]
    assert "29 November 2026" in index.read_text()

    # autodiscovery: one link per feed, each to the URL the feed says it lives at
    found = alternates(document)
    assert set(found) == set(FEED_TYPES)
    publisher.build_feeds()
    out = publisher.config.feeds.output_dir
    for kind, file in FEED_TYPES.items():
        assert found[kind] == f"https://news.example.org/feeds/{file}"
    atom = feedparser.parse((out / "atom.xml").read_bytes())
    assert {link.href for link in atom.feed.links if link.rel == "self"} == {
        found["application/atom+xml"]
    }


def test_feeds_rebuild_the_archive_and_leave_it_alone_when_unchanged(
    publisher: Publisher,
) -> None:
    first = publisher.build_feeds()
    # The editors' Markdown articles (no url of their own) have a page each from the start.
    pages = {p for p in first if p.parent.name == archive.ARTICLES_DIR}
    assert len(pages) == 3
    assert {p.name for p in first} - {p.name for p in pages} == {
        "rss.xml",
        "atom.xml",
        "feed.json",
    }
    folder = archive_dir(publisher)
    assert [p.name for p in folder.iterdir()] == ["articles"]  # no digest yet: no issue
    report = publisher.send_digest()
    digest = publisher.storage.get_digest(report.digest_id or 0)
    assert digest is not None
    written = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert written == sorted(["index.html", archive.page_name(digest.created_at, digest.uid)])
    # With the first issue the article pages link to the past issues, at once (not at the
    # next gather, which would otherwise rewrite them once more).
    index = archive.index_url(publisher.config.newsletter)
    assert all(f'href="{index}"' in p.read_text() for p in pages)
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
    rebuilt = publisher.build_feeds()  # what `newsletter feeds` does
    assert sorted(p.name for p in rebuilt) == written
    assert publisher.build_feeds() == []


def test_the_archive_is_written_before_delivery_and_a_failure_does_not_stop_it(
    publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    # A file where the archive folder should be: the archive cannot be written.
    blocked = archive_dir(publisher)
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("in the way")
    with caplog.at_level(logging.ERROR, logger="newsletter.core"):
        report = publisher.send_digest()
    assert report.sent == 4 and report.pending == 0
    (logged,) = [r for r in caplog.records if "archive" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert logged.getMessage().startswith("digest 1: the web archive was not written: ")
    blocked.unlink()
    written = publisher.build_feeds()  # the next `newsletter feeds` catches up
    assert {p.name for p in written} >= {"index.html"}


def test_users_override_the_index_template(publisher: Publisher, example_project: Path) -> None:
    templates = example_project.parent / "my-templates"
    templates.mkdir()
    (templates / "archive.html").write_text(
        "<!DOCTYPE html><html><head><title>Issues</title></head><body><ul>"
        "{% for issue in issues %}<li><a href='{{ issue.url }}'>{{ issue.subject }}</a></li>"
        "{% endfor %}</ul></body></html>"
    )
    example_project.write_text('templates = "my-templates"\n' + example_project.read_text())
    custom = make_publisher(load_config(example_project))
    try:
        report = custom.send_digest()
        assert report.digest_id is not None
        html = (archive_dir(custom) / "index.html").read_text()
        assert html.startswith("<!DOCTYPE html><html><head><title>Issues</title>")
        assert re.search(r"<li><a href='2026-11-22-[0-9a-f]{16}\.html'>The Example", html)
    finally:
        custom.close()


def test_page_names_use_the_utc_date() -> None:
    late_in_berlin = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 2 March in Berlin
    assert archive.page_name(late_in_berlin, "abc") == "2026-03-01-abc.html"
    same = late_in_berlin.astimezone(ZoneInfo("Europe/Berlin"))
    assert archive.page_name(same, "abc") == "2026-03-01-abc.html"
