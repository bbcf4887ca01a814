"""RSS, Atom and JSON Feed output: parsed back with feedparser, compared across formats.

The standards checks, tag feeds, archive paging and WebSub are in ``test_feeds_spec.py``.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from email.utils import parsedate_to_datetime
from html import escape
from pathlib import Path
from typing import Any

import feedparser
import pytest

from newsletter import __version__
from newsletter.config import FeedSettings, NewsletterSettings
from newsletter.exceptions import RenderError
from newsletter.render.feeds import EMPTY_FEED_UPDATED, WrittenFeeds, write_feeds
from newsletter.types import Article
from tests._factories import BASE_TIME, make_article, make_config

NS = {
    "atom": "http://www.w3.org/2005/Atom",
    "content": "http://purl.org/rss/1.0/modules/content/",
    "dc": "http://purl.org/dc/elements/1.1/",
}
TRICKY = "Fish & chips ]]> <b>bold</b> Grüße 😀"


@pytest.fixture
def newsletter(tmp_path: Path) -> NewsletterSettings:
    return make_config(tmp_path).newsletter


@pytest.fixture
def settings(tmp_path: Path) -> FeedSettings:
    return FeedSettings(output_dir=tmp_path / "feeds", max_items=50, ttl_minutes=45)


def articles() -> list[Article]:
    return [
        make_article(0, updated=BASE_TIME + timedelta(hours=5)),  # edited after publication
        make_article(1, author=None, tags=(), image_url="https://example.com/images/1.jpg"),
        make_article(2, url=None, title="Grüße aus Köln 😀", summary="", tags=("a", "b")),
    ]


def parse(path: Path) -> Any:
    parsed = feedparser.parse(path.read_bytes())
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def build(
    items: Sequence[Article], newsletter: NewsletterSettings, settings: FeedSettings
) -> WrittenFeeds:
    """``write_feeds`` for ``items`` listed newest first, as these tests list them: it takes
    the articles in the order they arrived, oldest first."""
    return write_feeds(list(reversed(items)), newsletter, settings)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_three_feeds_parse_back_with_the_same_items_in_the_same_order(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = articles()
    written = build(items, newsletter, settings)
    out = settings.output_dir
    # the main feeds first, then one set per tag ("python", "a", "b"): no archive pages yet
    assert written.paths[:3] == (out / "rss.xml", out / "atom.xml", out / "feed.json")
    assert {p.parent.name for p in written.paths[3:]} == {"python", "a", "b"}
    assert written.changed[:3] == tuple(
        f"https://news.example.org/feeds/{name}" for name in ("rss.xml", "atom.xml", "feed.json")
    )
    expected_ids = [a.uid for a in items]
    for name in ("rss.xml", "atom.xml"):
        parsed = parse(settings.output_dir / name)
        assert [e.id for e in parsed.entries] == expected_ids
        assert [e.title for e in parsed.entries] == [a.title for a in items]
        assert [e.get("link") for e in parsed.entries[:2]] == [items[0].url, items[1].url]
        assert parsed.feed.title == "The Test Weekly"
        assert parsed.feed.language == "en"
    feed = read_json(settings.output_dir / "feed.json")
    assert [i["id"] for i in feed["items"]] == expected_ids
    assert [i["title"] for i in feed["items"]] == [a.title for a in items]


def test_full_content_summary_author_and_tags(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = articles()
    build(items, newsletter, settings)
    for name in ("rss.xml", "atom.xml"):
        first, second, third = parse(settings.output_dir / name).entries
        assert first.content[0].value == items[0].content
        assert first.summary == items[0].summary
        assert first.author == "Ada Lovelace"
        assert "author" not in second
        assert [t.term for t in third.tags] == ["a", "b"]
        assert "tags" not in second
    feed = read_json(settings.output_dir / "feed.json")
    first, second, third = feed["items"]
    assert first["content_html"] == items[0].content
    assert first["summary"] == "Summary of post 0."  # JSON Feed's summary is plain text
    assert first["authors"] == [{"name": "Ada Lovelace"}]
    assert "authors" not in second
    assert third["tags"] == ["a", "b"]
    assert "url" not in third and "summary" not in third


def test_rss_uses_guid_dc_creator_content_encoded_and_self_link(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = articles()
    build(items, newsletter, settings)
    channel = ET.parse(settings.output_dir / "rss.xml").getroot().find("channel")
    assert channel is not None
    self_link = channel.find("atom:link", NS)
    assert self_link is not None
    assert self_link.attrib == {
        "href": "https://news.example.org/feeds/rss.xml",
        "rel": "self",
        "type": "application/rss+xml",
    }
    assert channel.findtext("link") == "https://news.example.org/"
    assert channel.findtext("ttl") == "45"
    assert channel.findtext("language") == "en"
    assert channel.findtext("generator") == f"newsletter {__version__}"
    assert channel.findtext("description") == "Things worth reading."
    item = channel.findall("item")[0]
    guid = item.find("guid")
    assert guid is not None and guid.text == items[0].uid
    assert guid.attrib == {"isPermaLink": "false"}
    assert item.findtext("dc:creator", namespaces=NS) == "Ada Lovelace"
    assert item.find("author") is None  # RSS <author> must be an e-mail address
    assert item.findtext("content:encoded", namespaces=NS) == items[0].content
    assert item.findtext("description") == items[0].summary
    assert parsedate_to_datetime(item.findtext("pubDate") or "") == items[0].published


def test_atom_has_self_and_alternate_links_html_content_and_feed_author(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = articles()
    build(items, newsletter, settings)
    feed = ET.parse(settings.output_dir / "atom.xml").getroot()
    links = {link.attrib["rel"]: link.attrib["href"] for link in feed.findall("atom:link", NS)}
    assert links == {
        "self": "https://news.example.org/feeds/atom.xml",
        "alternate": "https://news.example.org/",
    }
    assert feed.findtext("atom:author/atom:name", namespaces=NS) == "The Test Weekly"
    assert feed.attrib["{http://www.w3.org/XML/1998/namespace}lang"] == "en"
    entry = feed.findall("atom:entry", NS)[0]
    content = entry.find("atom:content", NS)
    assert content is not None and content.attrib["type"] == "html"
    assert content.text == items[0].content


def test_dates_come_from_the_data(newsletter: NewsletterSettings, settings: FeedSettings) -> None:
    items = articles()
    newest_update = items[0].updated  # the edited article, not the newest publication
    build(items, newsletter, settings)
    rss = parse(settings.output_dir / "rss.xml")
    atom = parse(settings.output_dir / "atom.xml")
    channel = ET.parse(settings.output_dir / "rss.xml").getroot().find("channel")
    assert channel is not None
    assert parsedate_to_datetime(channel.findtext("lastBuildDate") or "") == newest_update
    assert rss.entries[0].published_parsed[:6] == items[0].published.timetuple()[:6]
    assert atom.feed.updated_parsed[:6] == newest_update.timetuple()[:6]
    assert atom.entries[0].updated_parsed[:6] == newest_update.timetuple()[:6]
    feed = read_json(settings.output_dir / "feed.json")
    assert feed["items"][0]["date_published"] == "2026-03-01T12:00:00+00:00"
    assert feed["items"][0]["date_modified"] == "2026-03-01T17:00:00+00:00"


def test_two_builds_of_the_same_data_are_byte_identical(
    newsletter: NewsletterSettings, settings: FeedSettings, tmp_path: Path
) -> None:
    build(articles(), newsletter, settings)
    first = files(settings.output_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in settings.output_dir.rglob("*")}
    other = replace(settings, output_dir=tmp_path / "again")
    build(articles(), newsletter, other)
    assert files(other.output_dir) == first
    # and rewriting in place changes nothing on disk
    assert build(articles(), newsletter, settings) == WrittenFeeds((), (), ())
    assert {p: p.stat().st_mtime_ns for p in settings.output_dir.rglob("*")} == mtimes


def test_a_changed_article_rewrites_the_feeds(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = articles()
    build(items, newsletter, settings)
    items[1] = replace(items[1], title="A better title")
    # the article has no tag: only the main feeds change
    assert [p.name for p in build(items, newsletter, settings).paths] == [
        "rss.xml",
        "atom.xml",
        "feed.json",
    ]
    assert parse(settings.output_dir / "atom.xml").entries[1].title == "A better title"


def test_ampersands_cdata_ends_non_ascii_and_emoji_survive(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    html = f"<p>{escape(TRICKY, quote=False)}</p>"
    item = make_article(
        0, title=TRICKY, content=html, summary=html, author="Zoë ]]> & co", tags=("ç&]]>",)
    )
    build([item], newsletter, settings)
    for name in ("rss.xml", "atom.xml"):
        (entry,) = parse(settings.output_dir / name).entries
        assert entry.title == TRICKY
        assert entry.content[0].value == html
        assert entry.author == "Zoë ]]> & co"
        assert [t.term for t in entry.tags] == ["ç&]]>"]
    (json_item,) = read_json(settings.output_dir / "feed.json")["items"]
    assert json_item["title"] == TRICKY
    assert json_item["content_html"] == html
    assert json_item["summary"] == TRICKY
    raw = (settings.output_dir / "feed.json").read_text(encoding="utf-8")
    assert "😀" in raw  # written as UTF-8, not as \\u escapes


def test_characters_xml_cannot_hold_are_dropped_not_fatal(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    item = make_article(0, title="Bell\x07 and\x0b tab\tkept", content="<p>x\x00y</p>")
    build([item], newsletter, settings)
    for name in ("rss.xml", "atom.xml"):
        (entry,) = parse(settings.output_dir / name).entries
        # A title is one line: the tab becomes a space, like any whitespace run.
        assert entry.title == "Bell and tab kept"
        assert entry.content[0].value == "<p>xy</p>"


def test_json_feed_has_the_required_fields(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    build(articles(), newsletter, settings)
    feed = read_json(settings.output_dir / "feed.json")
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] == "The Test Weekly"
    assert feed["home_page_url"] == "https://news.example.org/"
    assert feed["feed_url"] == "https://news.example.org/feeds/feed.json"
    assert feed["language"] == "en"
    for item in feed["items"]:
        assert isinstance(item["id"], str) and item["id"]
        assert "content_html" in item or "content_text" in item


def test_empty_feeds_are_valid_and_deterministic(
    newsletter: NewsletterSettings, settings: FeedSettings, tmp_path: Path
) -> None:
    build([], newsletter, settings)
    rss = parse(settings.output_dir / "rss.xml")
    atom = parse(settings.output_dir / "atom.xml")
    assert rss.entries == [] and atom.entries == []
    assert atom.feed.updated_parsed[:6] == EMPTY_FEED_UPDATED.timetuple()[:6]
    assert read_json(settings.output_dir / "feed.json")["items"] == []
    other = replace(settings, output_dir=tmp_path / "again")
    build([], newsletter, other)
    for name in ("rss.xml", "atom.xml", "feed.json"):
        assert (other.output_dir / name).read_bytes() == (settings.output_dir / name).read_bytes()


def test_at_most_max_items_newest_first(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    items = [make_article(n) for n in range(5)]
    build(items, newsletter, replace(settings, max_items=2))
    assert [e.id for e in parse(settings.output_dir / "atom.xml").entries] == [
        items[0].uid,
        items[1].uid,
    ]


def test_files_are_written_atomically(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    build(articles(), newsletter, settings)
    build(articles()[:1], newsletter, settings)
    # no temporary files (".rss.xml.XXXX.tmp") left behind
    assert sorted(files(settings.output_dir)) == [
        "atom.xml",
        "feed.json",
        "rss.xml",
        "tags/index.json",
        "tags/python/atom.xml",
        "tags/python/feed.json",
        "tags/python/rss.xml",
    ]


def test_feedgen_errors_become_one_render_error(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    # feedgen refuses an empty title (RSS and Atom both require one) with a bare ValueError.
    with pytest.raises(RenderError) as info:
        build(articles(), replace(newsletter, title=""), settings)
    assert info.value.template == "rss.xml"
    assert isinstance(info.value.__cause__, ValueError)
    assert not settings.output_dir.exists()  # nothing half-written


GOLDEN = Path(__file__).parent / "data" / "feeds"


@pytest.mark.parametrize("name", ["rss.xml", "atom.xml", "feed.json"])
def test_output_matches_the_golden_files(
    newsletter: NewsletterSettings, settings: FeedSettings, name: str
) -> None:
    """The whole files, so any change of format shows up in review.

    After an intended change, regenerate with ``UPDATE_GOLDEN=1 pytest tests/test_feeds.py``.
    """
    build(articles(), newsletter, settings)
    # the generator's version is the one volatile part
    actual = (settings.output_dir / name).read_text(encoding="utf-8")
    actual = actual.replace(f'version="{__version__}"', 'version="VERSION"')
    actual = actual.replace(
        f"<generator>newsletter {__version__}<", "<generator>newsletter VERSION<"
    )
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
        pytest.skip(f"rewrote {golden}")
    assert actual == golden.read_text(encoding="utf-8")
