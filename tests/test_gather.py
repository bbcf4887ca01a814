"""The gather pipeline: URL canonicalization, sanitizing, normalizing, and whole runs against a
real SQLite ``Storage`` and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import SourceError
from newsletter.gather import canonical_url, gather, normalize, sanitize_html
from newsletter.sources import Source, make_source
from newsletter.sources.settings import FeedSettings, FolderSettings
from newsletter.storage import SqlStorage, Storage
from newsletter.types import Article, EntryData, FetchResult, GatherResult, SourceState
from tests._http import LoopbackServer, Reply, conditional, redirect

DATA = Path(__file__).parent / "data" / "sources"
BERLIN = ZoneInfo("Europe/Berlin")


# --- canonical_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("https://example.com/a?utm_source=x&utm_medium=y", None, "https://example.com/a"),
        (
            "https://example.com/a?id=3&UTM_Campaign=z&page=2&fbclid=abc",
            None,
            "https://example.com/a?id=3&page=2",
        ),
        (
            "https://example.com/a?gclid=1&mc_cid=2&mc_eid=3&igshid=4&_hsenc=5&_hsmi=6&ref_src=7",
            None,
            "https://example.com/a",
        ),
        ("https://example.com/a?b=2&a=1#section", None, "https://example.com/a?b=2&a=1"),
        ("HTTPS://Example.COM:443/Path/", None, "https://example.com/Path/"),
        ("http://example.com:80", None, "http://example.com/"),
        ("http://example.com:8080/x", None, "http://example.com:8080/x"),
        ("/posts/3", "https://example.com/blog/feed.xml", "https://example.com/posts/3"),
        (
            "entry?q=a%20b&utm_term=t",
            "https://example.com/blog/",
            "https://example.com/blog/entry?q=a%20b",
        ),
        ("  https://example.com/x  ", None, "https://example.com/x"),
        ("https://user@example.com/x", None, "https://user@example.com/x"),
        ("javascript:alert(1)", "https://example.com/", None),
        ("mailto:someone@example.com", None, None),
        ("relative/only", None, None),
        ("http://[::1/broken", None, None),
        ("", "https://example.com/", None),
        (None, "https://example.com/", None),
    ],
)
def test_canonical_url(url: str | None, base: str | None, expected: str | None) -> None:
    assert canonical_url(url, base) == expected


# --- sanitize_html -------------------------------------------------------------------------------


def test_sanitize_removes_everything_active() -> None:
    dirty = (
        '<p onclick="steal()" style="position:fixed">Hi <script>alert(1)</script>there</p>'
        '<a href="javascript:alert(2)">a</a><a href=" JaVaScRiPt:alert(3)">b</a>'
        '<img src="data:image/png;base64,AAAA" alt="pixel"><iframe src="https://x.example/">f'
        '</iframe><form action="/p"><input name="q"><button>go</button></form>'
        "<style>p{display:none}</style><!-- a comment --><svg onload=alert(4)></svg>"
    )

    clean = sanitize_html(dirty, "https://example.com/")

    for bad in (
        "<script",
        "onclick",
        "javascript:",
        "style",
        "data:",
        "iframe",
        "<form",
        "<input",
        "onload",
        "<!--",
        "<svg",
    ):
        assert bad not in clean.lower()
    assert "<p>Hi there</p>" in clean
    assert '<img alt="pixel">' in clean


def test_sanitize_makes_links_absolute_and_safe() -> None:
    clean = sanitize_html(
        '<a href="/about?utm_source=feed&amp;lang=en" title="About">about</a>'
        '<img src="img/a.png" alt="a"><blockquote cite="../quote">q</blockquote>'
        '<a href="mailto:hi@example.com">mail</a><a href="#fn1">1</a>',
        "https://example.com/blog/feed.xml",
    )

    assert (
        '<a href="https://example.com/about?lang=en" title="About" rel="noopener noreferrer">'
        "about</a>" in clean
    )
    assert '<img src="https://example.com/blog/img/a.png" alt="a">' in clean
    assert '<blockquote cite="https://example.com/quote">' in clean
    assert '<a href="mailto:hi@example.com" rel="noopener noreferrer">mail</a>' in clean
    assert '<a href="https://example.com/blog/feed.xml#fn1"' in clean


def test_sanitize_without_a_base_leaves_relative_links_relative() -> None:
    assert sanitize_html('<a href="x.html">x</a>', None) == (
        '<a href="x.html" rel="noopener noreferrer">x</a>'
    )


def test_sanitize_checks_the_scheme_of_what_it_resolved() -> None:
    # nh3 checks schemes before our URL filter runs; a relative link resolved against a base of
    # another scheme must be refused by the filter itself.
    clean = sanitize_html('<a href="x.txt">x</a><img src="y.png">', "ftp://files.example.com/")

    assert clean == '<a rel="noopener noreferrer">x</a><img>'


def test_sanitize_keeps_ordinary_markup() -> None:
    html = (
        "<h2>T</h2><p><strong>b</strong> <em>i</em> <code>c</code></p><ul><li>x</li></ul>"
        "<table><tr><td>1</td></tr></table><pre>p</pre>"
    )
    assert sanitize_html(html, None) == html.replace("<table><tr>", "<table><tbody><tr>").replace(
        "</tr></table>", "</tr></tbody></table>"
    )


# --- normalize -----------------------------------------------------------------------------------


def test_normalize_key_prefers_guid_then_canonical_url_then_hash() -> None:
    by_guid = normalize("s", EntryData(title="A", guid=" g-1 ", url="https://e.com/a"), None)
    by_url = normalize("s", EntryData(title="A", url="https://E.com/a?utm_source=x#f"), None)
    by_hash = normalize("s", EntryData(title="A", content="<p>x</p>"), None)
    same_hash = normalize("s", EntryData(title="A", content="<p>x</p>"), None)
    other_hash = normalize("s", EntryData(title="A", content="<p>y</p>"), None)

    assert by_guid is not None and by_guid.key == "g-1"
    assert by_url is not None and by_url.key == "https://e.com/a" == by_url.url
    assert by_hash is not None and same_hash is not None and other_hash is not None
    assert by_hash.key.startswith("sha256:") and len(by_hash.key) == len("sha256:") + 64
    assert by_hash.key == same_hash.key != other_hash.key


def test_normalize_title_is_plain_text_and_never_empty() -> None:
    html_title = normalize("s", EntryData(title="  Atom <b>entry</b>\n\t one &amp; two "), None)
    script_title = normalize("s", EntryData(title="Nice <script>alert(1)</script>title"), None)
    no_title = normalize("s", EntryData(title="", url="https://e.com/x"), None)
    tags_only = normalize("s", EntryData(title="<br>", content="<p>body</p>"), None)

    assert html_title is not None and html_title.title == "Atom entry one & two"
    assert script_title is not None and script_title.title == "Nice title"
    assert no_title is not None and no_title.title == "Untitled"
    assert tags_only is not None and tags_only.title == "Untitled"


def test_normalize_derives_a_short_escaped_summary_from_content() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    article = normalize(
        "s", EntryData(title="T", content=f"<p>Tom &amp; Jerry &lt;3</p><p>{words}</p>"), None
    )

    assert article is not None
    assert article.summary.startswith("Tom &amp; Jerry &lt;3 word0 word1")
    assert article.summary.endswith("…")
    text = article.summary.replace("&amp;", "&").replace("&lt;", "<")
    assert len(text) <= 301
    assert text[:-1].split(" ")[-1].startswith("word")  # cut between words, not inside one
    assert text[:-1] == text[:-1].rstrip()


def test_normalize_keeps_a_real_summary_and_replaces_a_whole_article() -> None:
    short = normalize(
        "s",
        EntryData(title="T", summary='<p onclick="x()">Short <b>one</b></p>', content="<p>c</p>"),
        None,
    )
    long_text = "lorem ipsum " * 200
    long = normalize("s", EntryData(title="T", summary=f"<p>{long_text}</p>"), None)

    assert short is not None and short.summary == "<p>Short <b>one</b></p>"
    assert short.content == "<p>c</p>"
    assert long is not None
    assert long.content == f"<p>{long_text}</p>"  # the summary was the article
    assert long.summary.endswith("…") and len(long.summary) < 310


def test_normalize_tags_dates_author_and_image() -> None:
    naive = datetime(2026, 11, 1, 12, 0)
    updated = datetime(2026, 11, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    article = normalize(
        "s",
        EntryData(
            title="T",
            url="/p/1",
            author="  Ada \n Lovelace ",
            updated=updated,
            tags=(" Python ", "python", "", "Feeds", "  data   science "),
            image_url="img/cover.png",
        ),
        "https://example.com/feed/",
    )
    with_naive = normalize("s", EntryData(title="T", published=naive), None)

    assert article is not None and with_naive is not None
    assert article.tags == ("Python", "Feeds", "data science")
    assert article.author == "Ada Lovelace"
    assert article.published == updated  # only an update date: that is when it appeared
    assert article.updated == updated
    assert article.image_url == "https://example.com/feed/img/cover.png"
    assert article.url == "https://example.com/p/1"
    assert with_naive.published == naive.replace(tzinfo=UTC)


def test_normalize_resolves_content_against_the_article_url_without_a_base() -> None:
    article = normalize(
        "s",
        EntryData(title="T", url="https://e.com/posts/1/", content='<img src="pic.png">'),
        None,
    )
    assert article is not None and article.content == '<img src="https://e.com/posts/1/pic.png">'


def test_normalize_drops_an_entry_with_nothing_in_it() -> None:
    assert normalize("s", EntryData(title="  "), None) is None
    assert normalize("s", EntryData(title="", content="<script>x()</script>"), None) is None
    assert normalize("s", EntryData(title="", url="javascript:x()"), None) is None
    assert normalize("s", EntryData(title="", summary="<p>only a summary</p>"), None) is not None


# --- whole runs ----------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path, fixed_clock: list[datetime]) -> Iterator[Storage]:
    s = SqlStorage(f"sqlite:///{tmp_path / 'gather.db'}")
    yield s
    s.close()


def source(
    session: requests.Session,
    name: str,
    *,
    url: str | None = None,
    path: Path | None = None,
    kind: str = "feed",
    timeout: float = 5.0,
) -> Source:
    options = (
        FolderSettings(path=path)
        if kind == "folder" and path is not None
        else FeedSettings(url=url, path=path, timeout=timeout)
    )
    config = SourceConfig(name=name, kind=kind, options=options)
    return make_source(config, session=session, http=HttpSettings(), timezone=BERLIN)


def articles(storage: Storage) -> dict[str, Article]:
    return {a.key: a for a in storage.recent_articles(100)}


def state(storage: Storage, name: str) -> SourceState:
    return next(s for s in storage.source_states() if s.name == name)


def test_two_gathers_store_each_article_once(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route("/feed.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    sources = [source(session, "rss", url=url)]

    first = gather(sources, storage)
    second = gather(sources, storage)

    assert (first[0].new, first[0].updated, first[0].unchanged) == (3, 0, 0)
    assert (second[0].new, second[0].updated, second[0].unchanged) == (0, 0, 3)
    assert storage.count_articles() == 3
    assert len(server.seen("/feed.xml")) == 2


def test_second_gather_is_a_conditional_get(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route(
        "/feed.json", conditional((DATA / "feed.json").read_bytes(), "application/feed+json")
    )
    sources = [source(session, "json", url=url)]

    gather(sources, storage)
    (again,) = gather(sources, storage)

    assert again.not_modified and again.ok
    assert (again.new, again.updated, again.unchanged) == (0, 0, 0)
    second = server.seen("/feed.json")[1]
    assert second.headers["if-none-match"] == '"v1"'
    assert second.headers["if-modified-since"] == "Sun, 22 Nov 2026 07:00:00 GMT"
    assert storage.count_articles() == 2


def test_an_updated_entry_is_updated_in_place(
    server: LoopbackServer,
    session: requests.Session,
    storage: Storage,
    fixed_clock: list[datetime],
) -> None:
    body = (DATA / "atom.xml").read_bytes()
    url = server.route("/atom.xml", Reply(200, body))
    sources = [source(session, "atom", url=url)]
    gather(sources, storage)
    key = "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6b"
    before = articles(storage)[key]

    fixed_clock[0] += timedelta(hours=1)
    server.route(
        "/atom.xml",
        Reply(
            200,
            body.replace(b"Atom entry two", b"Atom entry two, revised").replace(
                b"<strong>content</strong>", b"<strong>new content</strong>"
            ),
        ),
    )
    (result,) = gather(sources, storage)

    after = articles(storage)[key]
    assert (result.new, result.updated, result.unchanged) == (0, 1, 1)
    assert after.id == before.id and after.uid == before.uid
    assert after.title == "Atom entry two, revised"
    assert "new content" in after.content
    assert storage.count_articles() == 2


def test_a_failing_source_is_recorded_and_the_others_are_stored(
    server: LoopbackServer,
    session: requests.Session,
    storage: Storage,
    fixed_clock: list[datetime],
) -> None:
    good = server.route("/good.xml", Reply(200, (DATA / "rss1.rdf").read_bytes()))
    bad = server.route("/bad.xml", Reply(500, b"boom"))
    sources = [source(session, "bad", url=bad), source(session, "good", url=good)]

    first = gather(sources, storage)

    assert [r.source for r in first] == ["bad", "good"]
    assert not first[0].ok and first[0].error is not None and first[0].error.status == 500
    assert first[1].ok and first[1].new == 2
    assert storage.count_articles() == 2
    failed = state(storage, "bad")
    assert failed.error_count == 1
    assert failed.last_error == f"source 'bad' ({bad}): HTTP 500 Internal Server Error"
    assert failed.last_success is None and failed.last_fetched == fixed_clock[0]

    gather(sources, storage)
    assert state(storage, "bad").error_count == 2  # consecutive failures add up
    assert state(storage, "good").error_count == 0

    server.route("/bad.xml", Reply(200, (DATA / "rss091.xml").read_bytes()))
    (recovered, _) = gather(sources, storage)

    assert recovered.ok and recovered.new == 2
    healed = state(storage, "bad")
    assert (healed.error_count, healed.last_error) == (0, None)
    assert storage.count_articles() == 4


def test_permanent_redirect_is_remembered_in_storage(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    new = server.route("/new.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    old = server.route("/old.xml", redirect(301, new))
    sources = [source(session, "moved", url=old)]

    gather(sources, storage)
    assert state(storage, "moved").url == new

    gather(sources, storage)
    assert [r.path for r in server.requests] == ["/old.xml", "/new.xml", "/new.xml"]
    assert storage.count_articles() == 3  # the move changed no article's identity


def test_temporary_redirect_is_not_remembered_in_storage(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    today = server.route("/today.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    url = server.route("/feed.xml", redirect(302, today))
    sources = [source(session, "hop", url=url)]

    gather(sources, storage)
    assert state(storage, "hop").url == url

    gather(sources, storage)
    assert [r.path for r in server.requests] == ["/feed.xml", "/today.xml"] * 2


def test_stored_content_is_sanitized(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route("/hostile.xml", Reply(200, (DATA / "scripts.xml").read_bytes()))

    (result,) = gather([source(session, "hostile", url=url)], storage)

    assert result.new == 1
    (article,) = storage.recent_articles(10)
    for field in (article.content, article.summary):
        lowered = field.lower()
        for bad in (
            "<script",
            "onclick",
            "onmouseover",
            "onerror",
            "javascript:",
            "style=",
            "<iframe",
            "<form",
            "<style",
            "data:",
        ):
            assert bad not in lowered, (bad, field)
    assert article.title == "Nice title"
    assert f'<a href="{server.base}/ok" rel="noopener noreferrer">ok link</a>' in article.content
    assert f'<img src="{server.base}/x.png">' in article.content


def test_relative_links_become_absolute_and_tracking_is_dropped(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route("/feeds/rss2.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))

    gather([source(session, "rss", url=url)], storage)

    stored = articles(storage)
    first = stored["rss2-post-1"]
    assert first.url == "https://rss2.example.com/posts/1?id=7"
    assert f'<a href="{server.base}/about?lang=en" rel="noopener noreferrer">' in first.content
    assert f'<img alt="one" src="{server.base}/feeds/img/one.png">' in first.content
    assert first.tags == ("Python", "Feeds")
    third = stored[f"{server.base}/posts/3"]  # no guid: the canonical URL is the key
    assert third.url == f"{server.base}/posts/3"
    assert "utm_" not in " ".join(a.url or "" for a in stored.values())


def test_non_utf8_feed_is_stored_correctly(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route(
        "/latin1.xml",
        Reply(200, (DATA / "latin1.xml").read_bytes(), {"Content-Type": "text/xml"}),
    )

    gather([source(session, "latin", url=url)], storage)

    (article,) = storage.recent_articles(10)
    assert article.title == "Naïve façade at 50 °C"
    assert article.content == "¿Qué pasó? Ångström © 2026"


def test_a_warning_is_stored_and_survives_a_304(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route(
        "/t.xml", conditional((DATA / "truncated.xml").read_bytes(), "application/rss+xml")
    )
    sources = [source(session, "trunc", url=url)]

    (first,) = gather(sources, storage)
    (second,) = gather(sources, storage)

    assert first.new == 2
    assert first.warning is not None and first.warning.startswith("malformed XML at line 20")
    assert second.not_modified and second.warning == first.warning
    assert state(storage, "trunc").warning == first.warning


def test_timeout_is_recorded_as_an_error(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    url = server.route("/slow.xml", Reply(200, b"", delay=3.0))

    (result,) = gather([source(session, "slow", url=url, timeout=0.3)], storage)

    assert result.error is not None
    assert result.error.message == "no complete answer within 0.3 s (total deadline)"
    assert state(storage, "slow").error_count == 1


def test_results_come_in_config_order_and_progress_as_each_finishes(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    server.route("/slow.xml", Reply(200, (DATA / "rss1.rdf").read_bytes(), delay=0.5))
    server.route("/fast.xml", Reply(200, (DATA / "rss091.xml").read_bytes()))
    sources = [
        source(session, "slow", url=server.url("/slow.xml")),
        source(session, "fast", url=server.url("/fast.xml")),
    ]
    seen: list[tuple[str, str]] = []

    def progress(result: GatherResult) -> None:
        seen.append((result.source, threading.current_thread().name))

    started = time.monotonic()
    results = gather(sources, storage, progress=progress)

    assert [r.source for r in results] == ["slow", "fast"]
    assert [name for name, _ in seen] == ["fast", "slow"]  # the fast one was stored first
    assert {thread for _, thread in seen} == {threading.current_thread().name}
    assert time.monotonic() - started < 1.5


class _Broken:
    """A source with a bug: it raises something that is not a ``SourceError``."""

    name = "broken"
    location = "https://broken.example/"

    def fetch(self, state: SourceState) -> FetchResult:
        raise KeyError("oops")


def test_an_unexpected_exception_fails_only_its_source(
    server: LoopbackServer,
    session: requests.Session,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = server.route("/ok.xml", Reply(200, (DATA / "rss091.xml").read_bytes()))

    broken, ok = gather([_Broken(), source(session, "ok", url=url)], storage)

    assert isinstance(broken.error, SourceError)
    assert broken.error.message == "unexpected error: KeyError: 'oops'"
    assert ok.ok and ok.new == 2
    assert state(storage, "broken").error_count == 1
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


def test_duplicate_entries_in_one_document_are_stored_once(
    server: LoopbackServer, session: requests.Session, storage: Storage
) -> None:
    item = b"<item><title>%s</title><guid>same</guid></item>"
    body = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>D</title>'
        + item % b"Newest"
        + item % b"Older"
        + b"</channel></rss>"
    )
    url = server.route("/dup.xml", Reply(200, body))

    (result,) = gather([source(session, "dup", url=url)], storage)

    assert (result.new, result.updated) == (1, 0)
    assert articles(storage)["same"].title == "Newest"


def test_folder_source_gather_and_edit(
    tmp_path: Path, storage: Storage, fixed_clock: list[datetime]
) -> None:
    folder = tmp_path / "posts"
    shutil.copytree(DATA / "posts", folder)
    with requests.Session() as session:
        sources = [source(session, "notes", path=folder, kind="folder")]

        (first,) = gather(sources, storage)
        (unchanged,) = gather(sources, storage)

        hello = folder / "hello.md"
        hello.write_text(hello.read_text().replace("Some **bold** text", "Some **new** text"))
        later = time.time() + 5
        os.utime(hello, (later, later))
        fixed_clock[0] += timedelta(hours=1)
        (edited,) = gather(sources, storage)

    assert (first.new, first.warning is not None) == (3, True)
    assert unchanged.not_modified and unchanged.warning == first.warning
    assert (edited.new, edited.updated, edited.unchanged) == (0, 1, 2)
    stored = articles(storage)
    article = stored["folder:hello.md"]
    assert "<strong>new</strong>" in article.content
    assert "<script" not in article.content
    assert '<a href="https://example.org/page?keep=1" rel="noopener noreferrer">' in (
        article.content
    )
    assert article.url == "https://folder.example.com/posts/hello"
    assert article.tags == ("apollo", "software")
    assert stored["custom-id-2"].title == "The second post"


def test_no_sources_is_no_work(storage: Storage) -> None:
    assert gather([], storage) == []
    assert storage.source_states() == []
