"""Full text for summary-only feeds: extracting the article from its page, and fetching pages
for a feed's entries (auto/always/never, the page cache, failures, the per-host bound).

Pages are files under tests/data/fulltext served by a loopback server; nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from newsletter.config import HttpSettings, SourceConfig, load_config
from newsletter.core import make_publisher
from newsletter.exceptions import ConfigError
from newsletter.gather import gather
from newsletter.sources import Source, make_source
from newsletter.sources.extract import extract_article
from newsletter.sources.fulltext import BUDGET_TIMEOUTS, PER_HOST
from newsletter.sources.settings import FeedSettings
from newsletter.storage import SqlStorage
from newsletter.types import Article
from tests._http import LoopbackServer, Reply, Seen, conditional

DATA = Path(__file__).parent / "data" / "fulltext"
STORY = (DATA / "story.html").read_text()
HOSTILE = (DATA / "hostile.html").read_text()
STORY_URL = "https://news.example/2026/03/tidal-barrier"
STORY_TITLE = "Harbour council approves new tidal barrier"
# One sentence from each part of the story page that is not the article.
BOILERPLATE = (
    "Subscribe today",  # header promo
    "Sport",  # navigation
    "Most read",  # sidebar
    "Ferry timetable",  # sidebar
    "about time someone did something",  # comment thread
    "All rights reserved",  # footer
    "Cookie settings",  # footer
)


# --- extract_article -----------------------------------------------------------------------------


def test_story_page_gives_title_date_author_and_the_body_only() -> None:
    article = extract_article(STORY, STORY_URL, title=STORY_TITLE)
    assert article is not None
    assert article.title == STORY_TITLE
    assert article.author == "Maria Okafor"
    assert article.published == datetime(2026, 3, 14, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert article.published.astimezone(UTC) == datetime(2026, 3, 14, 8, 30, tzinfo=UTC)
    body = article.content_html
    assert body.startswith("<figure>")  # the repeated <h1> is gone; the figure leads
    assert "<h1>" not in body
    assert "PORTHAVEN, 14 March" in body  # the dateline opens the text
    assert "The fishing fleet will keep access" in body  # ... and the last paragraph is there
    for sentence in BOILERPLATE:
        assert sentence not in body, sentence
    assert article.text_length > 1000


def test_story_keeps_the_caption_and_the_lead_image() -> None:
    article = extract_article(STORY, STORY_URL)
    assert article is not None
    caption = "The harbour mouth at low tide, where the barrier gates will stand."
    assert article.image_caption == caption
    assert (
        '<figure><img src="https://news.example/img/barrier-site.jpg"'
        ' alt="The harbour mouth at low tide">'
        f"<figcaption>{caption}</figcaption></figure>"
    ) in article.content_html
    # og:image is the lead image; without it, the first figure's.
    assert article.image_url == "https://news.example/img/barrier-lead.jpg"
    without_og = STORY.replace('<meta property="og:image"', '<meta property="og:nothing"')
    fallback = extract_article(without_og, STORY_URL)
    assert fallback is not None
    assert fallback.image_url == "https://news.example/img/barrier-site.jpg"


def test_a_figure_outside_the_article_is_not_its_image() -> None:
    ad = (
        '<figure class="ad"><img src="/ads/banner.gif" alt="Advert">'
        "<figcaption>Advertisement</figcaption></figure>"
    )
    page = STORY.replace('<div class="promo">', ad + '<div class="promo">')
    page = page.replace('<meta property="og:image"', '<meta property="og:nothing"')
    article = extract_article(page, STORY_URL)
    assert article is not None
    # The article's own figure is the first one that counts.
    assert article.image_url == "https://news.example/img/barrier-site.jpg"
    assert article.image_caption == (
        "The harbour mouth at low tide, where the barrier gates will stand."
    )
    assert "banner.gif" not in article.content_html
    assert "Advertisement" not in article.content_html


def test_tracking_parameters_are_stripped_from_links() -> None:
    article = extract_article(STORY, STORY_URL)
    assert article is not None
    assert 'href="https://news.example/docs/barrier-plan.pdf?id=7"' in article.content_html
    assert "utm_" not in article.content_html


def test_hostile_page_is_cleaned() -> None:
    url = "https://gazette.example/news/reservoirs"
    article = extract_article(HOSTILE, url)
    assert article is not None
    assert article.title == "Reservoir levels recover after the wet winter"
    body = article.content_html
    assert "ninety-one per cent" in body
    assert "hosepipe ban" in body
    for bad in (
        "<script",
        "alert",
        "javascript:",
        "onclick",
        "onerror",
        "onload",
        "<iframe",
        "evil.example",
        "<style",
        "document.cookie",
        "fbclid",
        "utm_source",
    ):
        assert bad not in body, bad
    assert 'href="https://water.example/levels?page=2"' in body
    assert "Read the full report" in body  # the link's text stays, its javascript: target goes
    assert "About this site" not in body
    assert "Copyright 2026" not in body


def test_a_page_without_an_article_gives_none() -> None:
    assert extract_article((DATA / "no-article.html").read_text(), "https://x.example/") is None
    assert extract_article("", "https://x.example/") is None
    assert extract_article("\x00\x01 not html", "https://x.example/") is None


# --- fetching the pages of a feed's entries ------------------------------------------------------

SUMMARY = "The harbour council voted to build a tidal barrier across the old harbour mouth."
LONG_TEXT = " ".join(["A full paragraph of text that the feed itself carries whole."] * 12)


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>'
        "<title>Coastal Herald</title><link>https://news.example/</link><description>d</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def item(guid: str, link: str, *, title: str = STORY_TITLE, text: str = SUMMARY) -> str:
    return (
        f"<item><title>{escape(title)}</title><link>{escape(link)}</link><guid>{guid}</guid>"
        f"<description>{escape(text)}</description></item>"
    )


def feed_source(
    session: requests.Session,
    url: str,
    mode: str = "auto",
    name: str = "Herald",
    timeout: float = 5.0,
) -> Source:
    options = FeedSettings(url=url, timeout=timeout, full_text=mode)
    config = SourceConfig(name=name, kind="feed", options=options)
    return make_source(config, session=session, http=HttpSettings(), timezone=ZoneInfo("UTC"))


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SqlStorage]:
    s = SqlStorage(f"sqlite:///{tmp_path / 'news.db'}")
    yield s
    s.close()


def stored(storage: SqlStorage) -> dict[str, Article]:
    return {a.key: a for a in storage.recent_articles(100)}


def test_a_summary_only_item_gets_the_article_from_its_page(
    server: LoopbackServer, session: requests.Session, storage: SqlStorage
) -> None:
    page = server.route("/2026/03/tidal-barrier", conditional(STORY.encode(), "text/html"))
    feed = server.route("/feed.xml", Reply(200, rss(item("coastal-1", page))))

    (result,) = gather([feed_source(session, feed)], storage)

    assert result.ok and result.new == 1 and result.warning is None
    article = stored(storage)["coastal-1"]
    assert article.title == STORY_TITLE
    # The feed gave neither author nor date: the page's fill them in.
    assert article.author == "Maria Okafor"
    assert article.published == datetime(2026, 3, 14, 8, 30, tzinfo=UTC)
    assert article.image_url == "https://news.example/img/barrier-lead.jpg"
    assert article.summary == SUMMARY  # the feed's text stays, as the summary
    assert "Construction is expected to begin next spring" in article.content
    assert (
        f'<img src="{server.base}/img/barrier-site.jpg" alt="The harbour mouth at low tide">'
        "<figcaption>The harbour mouth at low tide, where the barrier gates will stand."
        "</figcaption>"
    ) in article.content
    for sentence in BOILERPLATE:
        assert sentence not in article.content, sentence
    (request,) = server.seen("/2026/03/tidal-barrier")
    assert request.headers["user-agent"] == HttpSettings().user_agent
    assert request.headers["accept"].startswith("text/html")


def test_a_hostile_page_is_cleaned_on_its_way_into_storage(
    server: LoopbackServer, session: requests.Session, storage: SqlStorage
) -> None:
    page = server.route("/reservoirs", Reply(200, HOSTILE.encode(), {"Content-Type": "text/html"}))
    feed = server.route("/feed.xml", Reply(200, rss(item("r", page, title="Reservoirs"))))

    (result,) = gather([feed_source(session, feed)], storage)

    assert result.ok and result.warning is None
    content = stored(storage)["r"].content
    assert "hosepipe ban" in content
    for bad in ("<script", "alert", "javascript:", "onclick", "onerror", "<iframe", "evil"):
        assert bad not in content, bad


def test_auto_always_and_never(
    server: LoopbackServer, session: requests.Session, storage: SqlStorage
) -> None:
    short = server.route("/short", Reply(200, STORY.encode(), {"Content-Type": "text/html"}))
    long = server.route("/long", Reply(200, STORY.encode(), {"Content-Type": "text/html"}))
    feed = server.route(
        "/feed.xml",
        Reply(200, rss(item("short", short), item("long", long, title="Long", text=LONG_TEXT))),
    )

    gather([feed_source(session, feed, "never", name="never")], storage)
    assert server.seen("/short") == [] and server.seen("/long") == []

    gather([feed_source(session, feed, "auto", name="auto")], storage)
    # Only the entry with less text than full_text_min_chars (600) fetches its page.
    assert (len(server.seen("/short")), len(server.seen("/long"))) == (1, 0)

    gather([feed_source(session, feed, "always", name="always")], storage)
    assert (len(server.seen("/short")), len(server.seen("/long"))) == (2, 1)
    by_source = {(a.source, a.key): a for a in storage.recent_articles(100)}
    assert by_source[("never", "short")].content == SUMMARY
    assert "PORTHAVEN" in by_source[("auto", "short")].content
    assert LONG_TEXT[:60] in by_source[("auto", "long")].content
    # ``always`` fetched the long entry's page too; its own text was longer than the feed's
    # 700 characters, so the page's article is the content.
    assert "PORTHAVEN" in by_source[("always", "long")].content


def test_a_second_gather_sends_conditional_gets_and_reuses_the_extraction(
    server: LoopbackServer, session: requests.Session, storage: SqlStorage
) -> None:
    page = server.route("/story", conditional(STORY.encode(), "text/html; charset=utf-8"))
    feed = server.route("/feed.xml", Reply(200, rss(item("coastal-1", page))))
    sources = [feed_source(session, feed)]

    gather(sources, storage)
    before = stored(storage)["coastal-1"]
    cached = storage.cached_pages("Herald")
    assert list(cached) == [page] and cached[page].etag == '"v1"'
    (again,) = gather(sources, storage)

    first, second = server.seen("/story")
    assert "if-none-match" not in first.headers
    assert second.headers["if-none-match"] == '"v1"'
    # The 304 carried no page: the article kept comes from the stored extraction.
    assert (again.new, again.updated, again.unchanged) == (0, 0, 1)
    assert stored(storage)["coastal-1"].content == before.content
    assert "PORTHAVEN" in before.content
    assert storage.cached_pages("Herald")[page].article == cached[page].article


def test_a_failing_page_keeps_the_summary_with_a_warning(
    server: LoopbackServer, session: requests.Session, storage: SqlStorage
) -> None:
    good = server.route("/story", Reply(200, STORY.encode(), {"Content-Type": "text/html"}))
    missing = server.url("/gone")  # no route: 404
    menu = server.route(
        "/menu", Reply(200, (DATA / "no-article.html").read_bytes(), {"Content-Type": "text/html"})
    )
    feed = server.route(
        "/feed.xml",
        Reply(200, rss(item("a", good), item("b", missing, title="B"), item("c", menu, title="C"))),
    )

    (result,) = gather([feed_source(session, feed)], storage)

    assert result.ok and result.new == 3
    articles = stored(storage)
    assert "PORTHAVEN" in articles["a"].content
    assert articles["b"].content == SUMMARY
    assert articles["c"].content == SUMMARY
    warning = next(s.warning for s in storage.source_states() if s.name == "Herald")
    assert warning == (
        f"item {missing}: full text not fetched (HTTP 404 Not Found); kept the feed's text; "
        f"item {menu}: no article found in the page; kept the feed's text"
    )


def test_page_fetches_are_concurrent_and_bounded_per_host(
    session: requests.Session, storage: SqlStorage
) -> None:
    lock = threading.Lock()
    active: dict[str, int] = {"a": 0, "b": 0, "all": 0}
    peak: dict[str, int] = {"a": 0, "b": 0, "all": 0}

    def slow(host: str) -> Callable[[Seen], Reply]:
        def handler(seen: Seen) -> Reply:
            with lock:
                for k in (host, "all"):
                    active[k] += 1
                    peak[k] = max(peak[k], active[k])
            time.sleep(0.15)
            with lock:
                for k in (host, "all"):
                    active[k] -= 1
            return Reply(200, STORY.encode(), {"Content-Type": "text/html"})

        return handler

    with LoopbackServer() as a, LoopbackServer() as b:
        links = []
        for n in range(6):
            links.append(a.route(f"/a{n}", slow("a")))
            links.append(b.route(f"/b{n}", slow("b")))
        feed = a.route(
            "/feed.xml", Reply(200, rss(*(item(f"i{n}", u) for n, u in enumerate(links))))
        )
        (result,) = gather([feed_source(session, feed)], storage)

    assert result.ok and result.new == 12 and result.warning is None
    assert peak["a"] == PER_HOST == 2
    assert peak["b"] == 2
    assert peak["all"] == 4  # both hosts at once


def test_a_slow_site_cannot_hold_the_gather_past_the_sources_budget(
    session: requests.Session, storage: SqlStorage
) -> None:
    """Sixteen pages that take half a second each, two at a time, need four seconds; a source
    with ``timeout = 1`` may spend three on its pages. What was not started by then keeps the
    feed's text, is one line of the source's warning, and is fetched by the next gather."""

    def slow(seen: Seen) -> Reply:
        time.sleep(0.5)
        return Reply(200, STORY.encode(), {"Content-Type": "text/html"})

    with LoopbackServer() as site:
        links = [site.route(f"/p{n}", slow) for n in range(16)]
        feed = site.route(
            "/feed.xml", Reply(200, rss(*(item(f"i{n}", u) for n, u in enumerate(links))))
        )
        started = time.monotonic()
        (result,) = gather([feed_source(session, feed, "always", timeout=1.0)], storage)
        took = time.monotonic() - started
        first = sum(len(site.seen(f"/p{n}")) for n in range(16))

        assert result.ok and result.new == 16
        assert 2 <= first < 16
        assert took < BUDGET_TIMEOUTS * 1.0 + 1.0 + 1.0  # the budget, one fetch, some slack
        left = 16 - first
        assert result.warning == (
            f"full text not fetched for {left} of 16 items: the 3 s this source may spend "
            "on pages ran out; the next gather tries them"
        )
        articles = stored(storage)
        whole = [a for a in articles.values() if "Construction is expected" in a.content]
        assert len(whole) == first
        assert all(a.content.strip() or a.summary == SUMMARY for a in articles.values())

        # The next gather starts with the pages it has no copy of (the feed is served
        # without validators, so it is read again): every page has now been asked for.
        (again,) = gather([feed_source(session, feed, "always", timeout=1.0)], storage)
        assert again.ok
        assert all(site.seen(f"/p{n}") for n in range(16)), (
            first,
            again.warning,
            [len(site.seen(f"/p{n}")) for n in range(16)],
        )


# --- through the config, the published feeds, the digest and ``newsletter status`` ---------------

PROJECT = """\
[newsletter]
title = "Harbour Weekly"
site_url = "https://weekly.example.org/"
sender = "Harbour Weekly <weekly@weekly.example.org>"
postal_address = "1 Quay Street, Porthaven"

[[sources]]
name = "Herald"
kind = "feed"
url = "{feed}"
full_text = "auto"
full_text_min_chars = 400

[feeds]
output_dir = "feeds"

[digest]
lookback_hours = 100000

[mail]
backend = "outbox"
[mail.outbox]
outbox_dir = "outbox"

[storage]
path = "news.db"
"""


def test_feeds_and_digest_carry_what_the_page_gave_and_status_shows_the_warning(
    tmp_path: Path, server: LoopbackServer
) -> None:
    page = server.route("/story", Reply(200, STORY.encode(), {"Content-Type": "text/html"}))
    gone = server.url("/gone")
    feed = server.route(
        "/feed.xml", Reply(200, rss(item("coastal-1", page), item("b", gone, title="Gone")))
    )
    config = tmp_path / "newsletter.toml"
    config.write_text(PROJECT.format(feed=feed))
    publisher = make_publisher(load_config(config))
    try:
        (result,) = publisher.gather()
        assert result.ok and result.new == 2
        publisher.build_feeds()
        digest = publisher.render_next_digest(force=True)
    finally:
        publisher.close()

    rss_feed = (tmp_path / "feeds" / "rss.xml").read_text()
    assert "Construction is expected to begin next spring" in rss_feed
    assert "where the barrier gates will stand." in rss_feed  # the caption
    assert "All rights reserved" not in rss_feed and "Most read" not in rss_feed
    assert digest is not None
    assert "Maria Okafor" in digest.html  # the page's byline, which the feed lacked
    assert 'src="https://news.example/img/barrier-lead.jpg"' in digest.html

    status = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert f"item {gone}: full text not fetched (HTTP 404 Not Found)" in status.stdout


def test_full_text_keys_are_checked_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    text = PROJECT.format(feed="https://news.example/feed.xml")
    config.write_text(text)
    options = load_config(config).sources[0].options
    assert isinstance(options, FeedSettings)
    assert (options.full_text, options.full_text_min_chars) == ("auto", 400)
    assert FeedSettings().full_text == "never"  # a page is fetched only when asked for

    config.write_text(text.replace('full_text = "auto"', 'full_text = "sometimes"'))
    line = text.splitlines().index('full_text = "auto"') + 1
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}:{line}: sources[0].full_text: expected one of never, auto, always, "
        "got 'sometimes'"
    )
    config.write_text(text.replace("full_text_min_chars = 400", "full_text_min_chars = -1"))
    with pytest.raises(ConfigError, match=r":\d+: sources\[0\]\.full_text_min_chars: must be"):
        load_config(config)
    folder = text.replace(
        'kind = "feed"\nurl = "https://news.example/feed.xml"', 'kind = "folder"\npath = "."'
    )
    config.write_text(folder)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.full_text: unknown key"):
        load_config(config)
