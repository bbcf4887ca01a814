"""The feeds against their specifications, end to end: every document (main, per tag, archive
pages) through the spec checks of ``tests/feedcheck.py`` and feedparser; stable ids; tag feeds;
RFC 5005 archive paging; WebSub pings to a real hub on 127.0.0.1. Articles go through a real
SQLite database and ``Publisher.build_feeds`` wherever the order of arrival matters.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import feedparser
import html5lib
import pytest

from newsletter.config import FeedSettings, NewsletterSettings, load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import ConfigError
from newsletter.gather import store_articles
from newsletter.render.feeds import (
    FEED_FILES,
    WrittenFeeds,
    read_tag_index,
    tag_slug,
    write_feeds,
)
from newsletter.types import Article, ArticleData
from tests._factories import BASE_TIME, make_article, make_config
from tests.feedcheck import check_atom, check_file, check_json_feed, check_rss

SITE = "https://news.example.org/"
FEEDS = SITE + "feeds/"
ATOM = "{http://www.w3.org/2005/Atom}"
FH = "{http://purl.org/syndication/history/1.0}"
TRICKY = "Fish & chips ]]> <b>bold</b> Grüße 😀"
BIG = "<p>" + escape("Lorem ipsum & dolor ]]> sit amet, Grüße 😀 — ", quote=False) * 4_500 + "</p>"


# --- reading what was written ---------------------------------------------------------------------


def feed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name in FEED_FILES)


def path_of(out: Path, url: str) -> Path:
    assert url.startswith(FEEDS), url
    return out / url.removeprefix(FEEDS)


def ids_in(path: Path) -> list[str]:
    """The item ids of a document, in document order, read with the standard library."""
    if path.name == "feed.json":
        return [i["id"] for i in json.loads(path.read_bytes())["items"]]
    root = ET.fromstring(path.read_bytes())
    if path.name == "rss.xml":
        return [item.findtext("guid") or "" for item in root.iter("item")]
    return [e.findtext(f"{ATOM}id") or "" for e in root.findall(f"{ATOM}entry")]


def links_of(path: Path) -> dict[str, str]:
    """The feed-level links by relation. JSON Feed: ``next_url`` plays prev-archive."""
    if path.name == "feed.json":
        feed = json.loads(path.read_bytes())
        out = {"feed_url": feed["feed_url"]}
        if "next_url" in feed:
            out["prev-archive"] = feed["next_url"]
        return out
    root = ET.fromstring(path.read_bytes())
    parent = root.find("channel") if path.name == "rss.xml" else root
    assert parent is not None
    return {link.get("rel", ""): link.get("href", "") for link in parent.findall(f"{ATOM}link")}


def is_archive(path: Path) -> bool:
    root = ET.fromstring(path.read_bytes())
    return root.find(f".//{FH}archive") is not None


def walk_archives(out: Path, current: Path) -> list[Path]:
    """Follow prev-archive from ``current`` to the first page; the pages, newest first."""
    pages: list[Path] = []
    path = current
    while (url := links_of(path).get("prev-archive")) is not None:
        path = path_of(out, url)
        assert path not in pages, f"a loop at {path}"
        pages.append(path)
    return pages


def parse(path: Path) -> Any:
    parsed = feedparser.parse(path.read_bytes())
    assert not parsed.bozo, (path, parsed.get("bozo_exception"))
    return parsed


# --- the tricky data ------------------------------------------------------------------------------


def tricky_history() -> list[Article]:
    """Articles in arrival order, oldest first (make_article(9) is the oldest)."""
    html = f"<p>{escape(TRICKY, quote=False)}</p>"
    return [
        make_article(
            9, title=TRICKY, content=html, summary=html, author="Zoë ]]> & co", tags=("ç&]]>",)
        ),
        make_article(8, title="Bell\x07 and\x0b tab\tkept", content="<p>x\x00y</p>"),
        make_article(7, title="A long read", content=BIG, tags=("Machine Learning", "Python")),
        make_article(6, url=None, summary="", content="", author=None, tags=("machine-learning",)),
        make_article(5, image_url="https://cdn.example.com/lead.png", tags=("C++",)),
        make_article(4, image_url="https://cdn.example.com/image?id=4", tags=("C",)),
        make_article(3, title="עברית والعربية", author="محمد", tags=("日本語",)),
        make_article(2, summary="", tags=("python",)),
        make_article(1, tags=("PYTHON",)),
        make_article(0, updated=BASE_TIME + timedelta(days=2)),
    ]


def expected_title(article: Article) -> str:
    # Control characters go; a title is one line, so whitespace runs become one space.
    return " ".join(article.title.replace("\x07", "").replace("\x0b", "").split())


@pytest.fixture
def newsletter(tmp_path: Path) -> NewsletterSettings:
    return make_config(tmp_path).newsletter


@pytest.fixture
def settings(tmp_path: Path) -> FeedSettings:
    return FeedSettings(
        output_dir=tmp_path / "feeds",
        max_items=3,
        archive_page_size=2,
        websub_hub="https://hub.example.net/",
    )


@pytest.fixture
def tricky(newsletter: NewsletterSettings, settings: FeedSettings) -> WrittenFeeds:
    return write_feeds(tricky_history(), newsletter, settings)


def test_every_document_passes_the_spec_checks(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    out = settings.output_dir
    docs = feed_files(out)
    # main: current and 5 pages; 6 tags with a current feed each, "python" with 2 pages and
    # "machine-learning" with 1
    assert len(docs) == 3 * (1 + 5 + 6 + 2 + 1)
    assert set(docs) == set(tricky.paths)
    problems = {str(p.relative_to(out)): check_file(p) for p in docs}
    assert {name: found for name, found in problems.items() if found} == {}


def test_feedparser_reads_every_item_back_unchanged(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    by_id = {a.uid: a for a in tricky_history()}
    seen: set[str] = set()
    for path in feed_files(settings.output_dir):
        if path.name == "feed.json":
            items = {i["id"]: i for i in json.loads(path.read_bytes())["items"]}
            for uid, item in items.items():
                assert item["title"] == expected_title(by_id[uid])
            continue
        parsed = parse(path)
        assert [e.id for e in parsed.entries] == ids_in(path)
        for entry in parsed.entries:
            article = by_id[entry.id]
            seen.add(entry.id)
            assert entry.title == expected_title(article)
            text = article.content.replace("\x00", "")
            if text and path.name == "rss.xml" and not article.summary:
                # no synopsis: RSS's <description> carries the full text, once
                assert "content" not in entry and entry.summary == text
            elif text:
                assert entry.content[0].value == text
            if article.author:
                assert entry.author == article.author
    assert seen == set(by_id)
    big = parse(settings.output_dir / "pages" / "2" / "atom.xml").entries
    assert [len(e.content[0].value) for e in big if e.title == "A long read"] == [len(BIG)]
    assert len(BIG.encode()) > 200_000


def test_an_article_without_text_gets_its_linked_title_as_content(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    bare = make_article(6)
    items = json.loads((settings.output_dir / "pages" / "2" / "feed.json").read_bytes())["items"]
    (item,) = [i for i in items if i["id"] == bare.uid]
    assert item["content_html"] == "<p>Post number 6</p>"  # no URL, so no link
    assert "summary" not in item and "url" not in item and "authors" not in item


def test_tag_feeds_one_per_tag_case_and_separators_merged(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    out = settings.output_dir
    index = {t.slug: t.name for t in read_tag_index(out)}
    assert index["python"] == "python"  # the spelling of the oldest article that has it
    assert index["machine-learning"] == "Machine Learning"
    assert tag_slug("C++") != tag_slug("C") == "c"
    assert set(index) == {tag_slug(t) for t in ("ç&]]>", "C++", "C", "日本語")} | {
        "python",
        "machine-learning",
    }
    for slug in index:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
        assert (out / "tags" / slug / "rss.xml").is_file()
    history = tricky_history()
    for slug, name in index.items():
        current = out / "tags" / slug / "atom.xml"
        ids = ids_in(current) + [i for p in walk_archives(out, current) for i in ids_in(p)]
        tagged = [a.uid for a in history if any(tag_slug(t) == slug for t in a.tags)]
        assert sorted(set(ids)) == sorted(tagged), name
        title = ET.fromstring(current.read_bytes()).findtext(f"{ATOM}title")
        assert title == f"The Test Weekly: {name}"
        assert ET.fromstring(current.read_bytes()).findtext(f"{ATOM}id") == (f"{FEEDS}tags/{slug}/")


def test_lead_images_are_enclosures_when_their_type_is_known(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    page = settings.output_dir / "pages" / "3"
    rss = ET.fromstring((page / "rss.xml").read_bytes())
    enclosures = {item.findtext("guid"): item.find("enclosure") for item in rss.iter("item")}
    png, unknown = make_article(5).uid, make_article(4).uid
    png_enclosure = enclosures[png]
    assert png_enclosure is not None
    assert png_enclosure.attrib == {
        "url": "https://cdn.example.com/lead.png",
        "length": "0",  # unknown: the RSS Best Practices Profile's value
        "type": "image/png",
    }
    assert enclosures[unknown] is None  # no type can be named: no enclosure
    atom = parse(page / "atom.xml")
    by_id = {e.id: e for e in atom.entries}
    assert [(link.rel, link.type) for link in by_id[png].links] == [
        ("alternate", "text/html"),
        ("enclosure", "image/png"),
    ]
    assert [link.rel for link in by_id[unknown].links] == ["alternate"]
    items = {i["id"]: i for i in json.loads((page / "feed.json").read_bytes())["items"]}
    assert items[png]["image"] == "https://cdn.example.com/lead.png"
    assert items[unknown]["image"] == "https://cdn.example.com/image?id=4"


def test_two_builds_of_unchanged_data_are_byte_identical(
    tricky: WrittenFeeds, newsletter: NewsletterSettings, settings: FeedSettings, tmp_path: Path
) -> None:
    out = settings.output_dir
    other = replace(settings, output_dir=tmp_path / "again")
    write_feeds(tricky_history(), newsletter, other)

    def contents(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.*")}

    assert contents(other.output_dir) == contents(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_feeds(tricky_history(), newsletter, settings) == WrittenFeeds((), (), ())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes


def test_feedcheck_finds_what_the_specs_forbid(
    tricky: WrittenFeeds, settings: FeedSettings
) -> None:
    """The checks can fail: each broken copy of a good document is caught, for its reason."""
    out = settings.output_dir
    rss = (out / "pages" / "3" / "rss.xml").read_text(encoding="utf-8")
    atom = (out / "atom.xml").read_text(encoding="utf-8")
    feed = (out / "feed.json").read_text(encoding="utf-8")
    guid = make_article(5).uid
    broken_rss = [
        ("rel=self", rss.replace('rel="self"', 'rel="related"')),
        ("absolute", rss.replace("<link>https://example.com/posts/5</link>", "<link>/5</link>")),
        ("RFC 822", rss.replace("Mar 2026 07", "Mar 26 07")),  # a two-digit year
        ("RFC 822", rss.replace("Sun, 01 Mar 2026", "Mon, 01 Mar 2026")),  # a wrong weekday
        ("not unique", rss.replace(make_article(4).uid, guid)),
        ("escaped", rss.replace("&lt;p&gt;The full text of post 5.&lt;/p&gt;", "<p>5</p>")),
        ("'current' link", rss.replace('rel="current"', 'rel="related"')),
        ("well-formed", rss.replace("</channel>", "")),
    ]
    for reason, text in broken_rss:
        assert text != rss, reason
        assert any(reason in p for p in check_rss(text.encode())), reason
    broken_atom = [
        ("RFC 3339", atom.replace("2026-03-01T12:00:00+00:00", "2026-03-01 12:00:00")),
        ("same type", atom.replace('rel="hub"', 'rel="alternate" type="text/html"')),
        ("not unique", atom.replace(make_article(1).uid, make_article(0).uid)),
        ("atom:name", atom.replace("<name>The Test Weekly</name>", "")),
    ]
    for reason, text in broken_atom:
        assert text != atom, reason
        assert any(reason in p for p in check_atom(text.encode())), reason
    data = json.loads(feed)
    broken_json: dict[str, Any] = {
        "content_html or content_text": {**data, "items": [{"id": "x", "title": "t"}]},
        "not unique": {**data, "items": [data["items"][0], data["items"][0]]},
        "absolute URL": {**data, "home_page_url": "/"},
        "version": {**data, "version": "https://jsonfeed.org/version/1"},
        "RFC 3339": {**data, "items": [{**data["items"][0], "date_published": "yesterday"}]},
        "unknown key": {**data, "nextUrl": "https://x.example/"},
    }
    for reason, doc in broken_json.items():
        assert any(reason in p for p in check_json_feed(json.dumps(doc).encode())), reason


def test_slugs_are_safe_and_stable() -> None:
    assert tag_slug("Python") == tag_slug("python") == tag_slug(" PYTHON ") == "python"
    assert tag_slug("Machine Learning") == tag_slug("machine_learning") == "machine-learning"
    assert tag_slug("C++") != tag_slug("C#")
    for tag in ("../etc", ".", "..", "a/b", "x\\y", "CON", "日本語", "Grüße", "🙂", "a" * 500):
        slug = tag_slug(tag)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= 80, (tag, slug)
    assert tag_slug("Grüße").startswith("gru")  # readable where it can be
    assert tag_slug("Grüße") != tag_slug("grusse")


# --- through the database: arrival order and paging ----------------------------------------------


def entry(n: int, **changes: Any) -> ArticleData:
    """Article data as a source delivers it; ``n`` hours before BASE_TIME."""
    published = BASE_TIME - timedelta(hours=n)
    values: dict[str, Any] = {
        "source": "Field Notes",
        "key": f"https://example.com/posts/{n}",
        "title": f"Post number {n}",
        "url": f"https://example.com/posts/{n}",
        "author": "Ada Lovelace",
        "published": published,
        "updated": published,
        "summary": f"<p>Summary of post {n}.</p>",
        "content": f"<p>The full text of post {n}.</p>",
        "tags": ("python",),
    }
    values.update(changes)
    return ArticleData(**values)


def store(publisher: Publisher, entries: list[ArticleData], now: datetime) -> None:
    publisher.storage.sync_source("Field Notes", None)
    store_articles(publisher.storage, "Field Notes", entries, now)


def project(tmp_path: Path, *, max_items: int, hub: str | None = None) -> Publisher:
    extra = f'[feeds]\noutput_dir = "out"\nmax_items = {max_items}\n'
    if hub:
        extra += f'websub_hub = "{hub}"\n'
    extra += '[storage]\npath = "news.db"\n[http]\ntimeout = 5\nuser_agent = "spec-test/1"\n'
    return make_publisher(make_config(tmp_path, extra))


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[Publisher]:
    publisher = project(tmp_path, max_items=4)
    yield publisher
    publisher.close()


N = 4


def test_paging_current_feed_and_a_prev_archive_chain_over_every_older_item(
    paged: Publisher,
) -> None:
    # 3×N+2 articles, one fetch: they arrive in publication order (oldest first)
    store(paged, [entry(n) for n in range(3 * N + 2)], BASE_TIME + timedelta(hours=1))
    paged.build_feeds()
    out = paged.config.feeds.output_dir
    every = [a.uid for a in paged.storage.articles_page(0, 100)]  # oldest first
    assert len(every) == 3 * N + 2
    for root in (out, out / "tags" / "python"):
        for name in FEED_FILES:
            current = root / name
            newest = ids_in(current)
            assert newest == list(reversed(every))[:N]  # newest first
            pages = walk_archives(out, current)
            assert [p.parent.name for p in pages] == ["3", "2", "1"]
            older = [i for i in every if i not in newest]
            archived = [i for p in pages for i in ids_in(p)]
            # every older item exactly once; the newest page also repeats current items
            assert [i for i in archived if i in older] == list(reversed(older))
            assert len(set(archived)) == len(archived) == 3 * N
            assert sorted(set(archived) | set(newest)) == sorted(every)
            if name == "feed.json":
                for page in pages:
                    assert links_of(page)["feed_url"] == links_of(current)["feed_url"]
                continue
            assert not is_archive(current)
            for page in pages:
                links = links_of(page)
                assert is_archive(page)
                assert links["self"] == FEEDS + str(page.relative_to(out))
                assert links["current"] == FEEDS + str(current.relative_to(out))
            # and back again: next-archive from the oldest page reaches the newest
            assert "prev-archive" not in links_of(pages[-1])
            assert "next-archive" not in links_of(pages[0])
            forward = [path_of(out, links_of(p)["next-archive"]) for p in reversed(pages[1:])]
            assert forward == list(reversed(pages[:-1]))


def test_archive_pages_are_written_once(paged: Publisher) -> None:
    now = BASE_TIME + timedelta(hours=1)
    store(paged, [entry(n) for n in range(3 * N + 2)], now)
    paged.build_feeds()
    out = paged.config.feeds.output_dir
    page = {n: out / "pages" / str(n) / "atom.xml" for n in (1, 2, 3, 4)}
    before = {n: page[n].read_bytes() for n in (1, 2, 3)}
    ids_before = {n: ids_in(page[n]) for n in (1, 2, 3)}
    mtimes = {n: page[n].stat().st_mtime_ns for n in (1, 2, 3)}

    # Later arrivals, even with older publication dates, go to the end: no page moves.
    store(paged, [entry(100, tags=())], now + timedelta(hours=1))
    written = paged.build_feeds()
    assert not any("pages" in p.parts for p in written)
    assert {n: page[n].stat().st_mtime_ns for n in (1, 2, 3)} == mtimes
    assert not page[4].exists()
    newest = ids_in(out / "atom.xml")
    assert paged.storage.articles_page(3 * N + 2, 10)[0].uid in newest

    # Page 4 fills up: it is written, page 3 gains its next-archive link, 1 and 2 stay.
    store(paged, [entry(200, tags=())], now + timedelta(hours=2))
    written = paged.build_feeds()
    main_pages = {p.parent.name for p in written if p.parent.parent == out / "pages"}
    assert main_pages == {"3", "4"}
    assert {n: page[n].read_bytes() for n in (1, 2)} == {n: before[n] for n in (1, 2)}
    assert links_of(page[3])["next-archive"] == FEEDS + "pages/4/atom.xml"
    assert ids_in(page[3]) == ids_before[3]  # the same articles as before


def test_an_edited_article_keeps_its_id_everywhere(paged: Publisher) -> None:
    now = BASE_TIME + timedelta(hours=1)
    store(paged, [entry(n) for n in range(3 * N + 2)], now)
    paged.build_feeds()
    out = paged.config.feeds.output_dir
    oldest = paged.storage.articles_page(0, 1)[0]
    first_page = out / "pages" / "1"
    ids_before = {name: ids_in(first_page / name) for name in FEED_FILES}

    edited = entry(
        3 * N + 1,
        title="Post number 13, corrected",
        content="<p>Fixed.</p>",
        updated=now + timedelta(hours=3),
    )
    store(paged, [edited], now + timedelta(hours=3))
    written = paged.build_feeds()
    assert first_page / "atom.xml" in written  # its article changed: the page is rewritten
    for name in FEED_FILES:
        assert ids_in(first_page / name) == ids_before[name]
        assert oldest.uid in ids_in(first_page / name)
    (atom_entry,) = [e for e in parse(first_page / "atom.xml").entries if e.id == oldest.uid]
    assert atom_entry.title == "Post number 13, corrected"
    assert atom_entry.updated_parsed[:5] == (now + timedelta(hours=3)).timetuple()[:5]
    (rss_item,) = [e for e in parse(first_page / "rss.xml").entries if e.id == oldest.uid]
    assert rss_item.title == "Post number 13, corrected"


def test_feeds_of_vanished_tags_and_pages_past_the_end_are_removed(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    out = settings.output_dir
    history = [make_article(n, tags=("old", "python")) for n in reversed(range(7))]
    write_feeds(history, newsletter, settings)
    assert (out / "tags" / "old" / "pages" / "3" / "rss.xml").is_file()
    assert (out / "pages" / "3" / "rss.xml").is_file()
    (out / "tags" / "old" / "notes.txt").write_text("not ours")
    kept = [make_article(n, tags=("python",)) for n in reversed(range(3))]
    result = write_feeds(kept, newsletter, settings)
    assert not (out / "pages" / "2").exists() and (out / "pages" / "1").is_dir()
    assert sorted(p.name for p in (out / "tags" / "old").iterdir()) == ["notes.txt"]
    assert out / "tags" / "old" / "rss.xml" in result.removed
    assert out / "pages" / "3" / "feed.json" in result.removed
    assert [t.slug for t in read_tag_index(out)] == ["python"]
    for path in feed_files(out):
        assert check_file(path) == [], path


def test_the_archive_index_lists_the_tag_feeds(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        publisher.import_subscribers(example_project.parent / "subscribers.csv")
        publisher.gather()
        publisher.build_feeds()
        publisher.send_digest()
        out = publisher.config.feeds.output_dir
    text = (out / "archive" / "index.html").read_text(encoding="utf-8")
    document = html5lib.parse(text, namespaceHTMLElements=False)
    discovery = [
        link.get("href") for link in document.iter("link") if link.get("rel") == "alternate"
    ]
    assert discovery == [FEEDS + name for name in FEED_FILES]  # the main feeds only
    section = document.find(".//section[@class='tag-feeds']")
    assert section is not None
    rows = section.findall(".//li")
    tags = read_tag_index(out)
    assert [li.text for li in rows] == [f"{t.name}: " for t in tags]
    assert {"editorial", "mailbag", "design"} <= {t.name for t in tags}
    for li, tag in zip(rows, tags, strict=True):
        hrefs = [a.get("href") for a in li.findall("a")]
        assert hrefs == [f"{FEEDS}tags/{tag.slug}/{name}" for name in FEED_FILES]
        assert all(path_of(out, href).is_file() for href in hrefs)


# --- WebSub ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    form: dict[str, list[str]]
    headers: dict[str, str]


class Hub:
    """A WebSub hub on 127.0.0.1: records every POST and answers ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.pings: list[Ping] = []
        lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    hub.pings.append(
                        Ping(
                            parse_qs(body.decode(), keep_blank_values=True, strict_parsing=True),
                            {k.lower(): v for k, v in self.headers.items()},
                        )
                    )
                self.send_response(hub.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/hub"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub()
    yield server
    server.close()


def test_the_hub_is_named_and_pinged_for_each_changed_feed(hub: Hub, tmp_path: Path) -> None:
    with project(tmp_path, max_items=2, hub=hub.url) as publisher:
        store(publisher, [entry(n) for n in range(5)], BASE_TIME)
        publisher.build_feeds()
        out = publisher.config.feeds.output_dir
        current = [out / n for n in FEED_FILES] + [out / "tags/python" / n for n in FEED_FILES]
        assert {p.form["hub.url"][0] for p in hub.pings} == {
            FEEDS + str(p.relative_to(out)) for p in current
        }
        assert len(hub.pings) == 6  # one per feed, none for archive pages
        for ping in hub.pings:
            assert ping.form["hub.mode"] == ["publish"]
            assert len(ping.form["hub.url"]) == 1
            assert ping.headers["content-type"] == "application/x-www-form-urlencoded"
            assert ping.headers["user-agent"] == "spec-test/1"

        # the current feeds name the hub; archive pages, which never change, do not
        for path in current:
            if path.name == "feed.json":
                hubs = json.loads(path.read_bytes())["hubs"]
                assert hubs == [{"type": "WebSub", "url": hub.url}]
            else:
                assert links_of(path)["hub"] == hub.url
        for path in feed_files(out / "pages"):
            assert "hub" not in links_of(path) and "hubs" not in path.read_text()

        publisher.build_feeds()  # nothing changed: no ping
        assert len(hub.pings) == 6
        store(publisher, [entry(7, tags=())], BASE_TIME + timedelta(hours=1))
        publisher.build_feeds()  # a new untagged article: the main feeds only
        assert [p.form["hub.url"][0] for p in hub.pings[6:]] == [FEEDS + n for n in FEED_FILES]


def test_a_dead_hub_does_not_fail_the_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with project(tmp_path, max_items=2, hub=f"http://127.0.0.1:{port}/") as publisher:
        store(publisher, [entry(n) for n in range(3)], BASE_TIME)
        with caplog.at_level(logging.WARNING, logger="newsletter.websub"):
            written = publisher.build_feeds()
        out = publisher.config.feeds.output_dir
        assert out / "rss.xml" in written
    records = [r for r in caplog.records if r.name == "newsletter.websub"]
    assert all(r.levelno == logging.WARNING for r in records)
    messages = [r.getMessage() for r in records]
    # one attempt, then the other five pings are not sent rather than each timing out
    assert len(messages) == 2
    assert messages[0].startswith(f"WebSub: cannot reach the hub http://127.0.0.1:{port}/")
    assert messages[1] == f"WebSub: 5 more pings to http://127.0.0.1:{port}/ not sent"


def test_a_hub_that_refuses_is_logged_and_the_build_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = Hub(status=500)
    try:
        with project(tmp_path, max_items=2, hub=refusing.url) as publisher:
            store(publisher, [entry(0, tags=())], BASE_TIME)
            with caplog.at_level(logging.WARNING, logger="newsletter.websub"):
                written = publisher.build_feeds()
            assert len(written) == 3
    finally:
        refusing.close()
    assert len(refusing.pings) == 3  # each topic tried: the hub answered
    refused = [r.getMessage() for r in caplog.records if r.name == "newsletter.websub"]
    assert len(refused) == 3 and all("HTTP 500" in m for m in refused)


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feeds", "key", "message"),
    [
        ('websub_hub = "hub.example/"', "feeds.websub_hub", "absolute http(s) URL"),
        ('websub_hub = "ftp://hub.example/"', "feeds.websub_hub", "absolute http(s) URL"),
        ("max_items = 10\narchive_page_size = 11", "feeds.archive_page_size", "must not exceed"),
        ("archive_page_size = 0", "feeds.archive_page_size", "at least 1"),
    ],
)
def test_feed_settings_are_checked(tmp_path: Path, feeds: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, f"[feeds]\n{feeds}\n")
    assert info.value.key == key
    assert message in info.value.message


def test_feed_settings_defaults_and_values(tmp_path: Path) -> None:
    default = make_config(tmp_path).feeds
    assert (default.page_size, default.websub_hub) == (50, None)
    extra = '[feeds]\nmax_items = 20\narchive_page_size = 5\nwebsub_hub = "https://hub.example/"\n'
    feeds = make_config(tmp_path, extra).feeds
    assert (feeds.max_items, feeds.page_size, feeds.websub_hub) == (20, 5, "https://hub.example/")


def test_dates_are_utc_and_rfc_conformant_whatever_the_source_zone(
    newsletter: NewsletterSettings, settings: FeedSettings
) -> None:
    berlin = datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Berlin"))
    ancient = datetime(5, 1, 1, tzinfo=UTC)
    history = [
        make_article(1, published=ancient, updated=ancient),
        make_article(0, published=berlin, updated=berlin),
    ]
    write_feeds(history, newsletter, settings)
    for path in feed_files(settings.output_dir):
        assert check_file(path) == [], path
    rss = (settings.output_dir / "rss.xml").read_text()
    assert "<pubDate>Sun, 01 Mar 2026 13:00:00 +0000</pubDate>" in rss
    assert "<pubDate>Wed, 01 Jan 1000 00:00:00 +0000</pubDate>" in rss
