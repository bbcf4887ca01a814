"""Sources against real files and a real HTTP server on 127.0.0.1 (see ``_http.py``)."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import Source, make_source
from newsletter.sources.feed import FeedSource
from newsletter.sources.folder import FolderSource
from newsletter.sources.settings import FeedSettings, FolderSettings
from newsletter.types import FetchResult, SourceState
from tests._http import LoopbackServer, Reply, conditional, redirect

DATA = Path(__file__).parent / "data" / "sources"
USER_AGENT = "newsletter-tests/1.0 (+https://example.invalid/)"
BERLIN = ZoneInfo("Europe/Berlin")

# file, content type, number of entries, title of the first entry
FORMATS = [
    ("rss2.xml", "application/rss+xml; charset=utf-8", 3, "Hello & welcome"),
    ("atom.xml", "application/atom+xml", 2, "Atom <b>entry</b> one"),
    ("rss1.rdf", "application/rdf+xml", 2, "RDF item A"),
    ("rss091.xml", "text/xml", 2, "Old school item"),
    ("feed.json", "application/feed+json", 2, "JSON item one"),
]
FORMAT_IDS = [f[0] for f in FORMATS]


def feed(
    session: requests.Session,
    *,
    url: str | None = None,
    path: Path | None = None,
    timeout: float = 5.0,
    max_bytes: int = 1024 * 1024,
) -> Source:
    options = FeedSettings(url=url, path=path, timeout=timeout, max_bytes=max_bytes)
    config = SourceConfig(name="test-feed", kind="feed", options=options)
    return make_source(
        config, session=session, http=HttpSettings(user_agent=USER_AGENT), timezone=BERLIN
    )


def fetch_error(source: Source, state: SourceState | None = None) -> SourceError:
    with pytest.raises(SourceError) as info:
        source.fetch(state or SourceState(name=source.name, url=source.location))
    return info.value


def first_fetch(source: Source) -> FetchResult:
    return source.fetch(SourceState(name=source.name, url=source.location))


# --- registry ------------------------------------------------------------------------------------


def test_make_source_builds_each_kind(session: requests.Session, tmp_path: Path) -> None:
    http = HttpSettings()
    feed_source = make_source(
        SourceConfig("a", "feed", FeedSettings(url="https://example.com/feed.xml")),
        session=session,
        http=http,
        timezone=BERLIN,
    )
    folder_source = make_source(
        SourceConfig("b", "folder", FolderSettings(path=tmp_path)),
        session=session,
        http=http,
        timezone=BERLIN,
    )
    assert isinstance(feed_source, FeedSource)
    assert isinstance(folder_source, FolderSource)
    assert isinstance(feed_source, Source)
    assert (feed_source.name, feed_source.location) == ("a", "https://example.com/feed.xml")
    assert folder_source.location == str(tmp_path)


def test_make_source_refuses_an_unknown_kind(session: requests.Session) -> None:
    with pytest.raises(ConfigError, match="unknown source kind 'gopher'"):
        make_source(
            SourceConfig("p", "gopher", FeedSettings(url="https://example.com/")),
            session=session,
            http=HttpSettings(),
            timezone=BERLIN,
        )


@pytest.mark.parametrize(
    "config",
    [
        SourceConfig("f", "feed", FeedSettings()),
        SourceConfig("f", "feed", FeedSettings(url="https://e.com/f.xml", path=Path("f.xml"))),
        # A folder's settings cannot lack a path; another kind's settings are the mistake left.
        SourceConfig("d", "folder", FeedSettings(path=Path("d"))),
    ],
    ids=["feed-neither", "feed-both", "folder-with-feed-settings"],
)
def test_make_source_refuses_a_config_its_kind_cannot_use(
    session: requests.Session, config: SourceConfig
) -> None:
    with pytest.raises(ConfigError, match=f"source '{config.name}' needs"):
        make_source(config, session=session, http=HttpSettings(), timezone=BERLIN)


# --- HTTP: every format --------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "content_type", "count", "title"), FORMATS, ids=FORMAT_IDS)
def test_fetch_over_http(
    server: LoopbackServer,
    session: requests.Session,
    file: str,
    content_type: str,
    count: int,
    title: str,
) -> None:
    url = server.route(
        f"/feeds/{file}", Reply(200, (DATA / file).read_bytes(), {"Content-Type": content_type})
    )

    result = first_fetch(feed(session, url=url))

    assert len(result.entries) == count
    assert result.entries[0].title == title
    assert result.base_url == url
    assert not result.not_modified and result.permanent_url is None and result.warning is None
    (request,) = server.seen(f"/feeds/{file}")
    assert request.headers["user-agent"] == USER_AGENT
    assert "if-none-match" not in request.headers
    assert "if-modified-since" not in request.headers


@pytest.mark.parametrize(("file", "content_type", "count", "title"), FORMATS, ids=FORMAT_IDS)
def test_conditional_get_returns_not_modified(
    server: LoopbackServer,
    session: requests.Session,
    file: str,
    content_type: str,
    count: int,
    title: str,
) -> None:
    url = server.route("/feed", conditional((DATA / file).read_bytes(), content_type))
    source = feed(session, url=url)

    first = first_fetch(source)
    assert (first.etag, first.last_modified) == ('"v1"', "Sun, 22 Nov 2026 07:00:00 GMT")
    assert len(first.entries) == count

    second = source.fetch(
        SourceState(name=source.name, url=url, etag=first.etag, last_modified=first.last_modified)
    )

    assert second.not_modified
    assert second.entries == ()
    requests_seen = server.seen("/feed")
    assert len(requests_seen) == 2
    assert requests_seen[1].headers["if-none-match"] == '"v1"'
    assert requests_seen[1].headers["if-modified-since"] == "Sun, 22 Nov 2026 07:00:00 GMT"


def test_if_modified_since_alone_is_enough(
    server: LoopbackServer, session: requests.Session
) -> None:
    body = (DATA / "rss2.xml").read_bytes()
    url = server.route("/feed", conditional(body, "application/rss+xml", etag=None))
    source = feed(session, url=url)
    first = first_fetch(source)
    assert first.etag is None

    second = source.fetch(SourceState(name=source.name, url=url, last_modified=first.last_modified))

    assert second.not_modified
    assert "if-none-match" not in server.seen("/feed")[1].headers


# --- HTTP: redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 308])
def test_permanent_redirect_is_reported_and_followed_directly_next_time(
    server: LoopbackServer, session: requests.Session, status: int
) -> None:
    new_url = server.route("/new.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    old_url = server.route("/old.xml", redirect(status, new_url))
    source = feed(session, url=old_url)

    result = first_fetch(source)

    assert result.permanent_url == new_url
    assert result.base_url == new_url
    assert len(result.entries) == 3

    # Storage remembers permanent_url as the state's url; the next fetch goes there directly.
    again = source.fetch(SourceState(name=source.name, url=new_url))
    assert len(again.entries) == 3
    assert again.permanent_url is None
    assert [r.path for r in server.requests] == ["/old.xml", "/new.xml", "/new.xml"]


@pytest.mark.parametrize("status", [302, 303, 307])
def test_temporary_redirect_is_not_remembered(
    server: LoopbackServer, session: requests.Session, status: int
) -> None:
    target = server.route("/today.xml", Reply(200, (DATA / "atom.xml").read_bytes()))
    url = server.route("/feed.xml", redirect(status, target))

    result = first_fetch(feed(session, url=url))

    assert result.permanent_url is None
    assert result.base_url == target  # links still resolve against where the document was
    assert len(result.entries) == 2


def test_permanent_then_temporary_redirect_remembers_the_permanent_part(
    server: LoopbackServer, session: requests.Session
) -> None:
    final = server.route("/c.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    middle = server.route("/b.xml", redirect(302, final))
    start = server.route("/a.xml", redirect(301, middle))

    result = first_fetch(feed(session, url=start))

    assert result.permanent_url == middle


def test_a_remembered_url_that_is_not_http_is_ignored(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/feed.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))
    source = feed(session, url=url)

    result = source.fetch(SourceState(name=source.name, url="/some/local/path.xml"))

    assert len(result.entries) == 3
    assert len(server.seen("/feed.xml")) == 1


# --- HTTP: failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (500, "Internal Server Error")])
def test_http_error_status_is_a_source_error(
    server: LoopbackServer, session: requests.Session, status: int, reason: str
) -> None:
    url = server.route("/feed.xml", Reply(status, b"nope"))

    error = fetch_error(feed(session, url=url))

    assert error.status == status
    assert error.url == url
    assert error.source == "test-feed"
    assert str(error) == f"source 'test-feed' ({url}): HTTP {status} {reason}"


def test_unknown_path_is_a_404(server: LoopbackServer, session: requests.Session) -> None:
    error = fetch_error(feed(session, url=server.url("/missing.xml")))
    assert error.status == 404


def test_timeout_is_a_source_error(server: LoopbackServer, session: requests.Session) -> None:
    url = server.route("/slow.xml", Reply(200, (DATA / "rss2.xml").read_bytes(), delay=3.0))
    started = time.monotonic()

    error = fetch_error(feed(session, url=url, timeout=0.3))

    assert time.monotonic() - started < 2.5
    # The per-read timeout equals the total deadline, which passes first.
    assert error.message == "no complete answer within 0.3 s (total deadline)"
    assert error.status is None


def test_connection_refused_is_a_source_error(session: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    error = fetch_error(feed(session, url=f"http://127.0.0.1:{port}/feed.xml"))

    assert error.message.startswith("cannot connect: ")
    assert "refused" in error.message.lower()
    assert "HTTPConnectionPool" not in error.message


def test_declared_length_over_the_cap_fails_before_reading(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/big.xml", Reply(200, b"<rss>" + b" " * 5000 + b"</rss>"))

    error = fetch_error(feed(session, url=url, max_bytes=1024))

    assert "response too large (Content-Length is 5,011 bytes" in error.message
    assert "max_bytes = 1,024" in error.message


def test_streamed_body_over_the_cap_fails(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/big.xml", Reply(200, b"<rss>" + b" " * 200_000 + b"</rss>", chunked=True))

    error = fetch_error(feed(session, url=url, max_bytes=100_000))

    assert "response too large (more than 100,000 bytes received" in error.message


def test_the_cap_counts_decompressed_bytes(
    server: LoopbackServer, session: requests.Session
) -> None:
    bomb = gzip.compress(b"<rss>" + b" " * 500_000 + b"</rss>")
    assert len(bomb) < 10_000
    url = server.route("/gz.xml", Reply(200, bomb, {"Content-Encoding": "gzip"}))

    error = fetch_error(feed(session, url=url, max_bytes=100_000))

    assert "more than 100,000 bytes received" in error.message


def test_a_page_that_is_not_a_feed_is_an_error(
    server: LoopbackServer, session: requests.Session
) -> None:
    page = b"<html><head><title>Home</title></head><body><p>Hi</p></body></html>"
    url = server.route("/", Reply(200, page, {"Content-Type": "text/html"}))

    error = fetch_error(feed(session, url=url))

    assert error.message == "not an RSS, Atom or JSON feed"


# --- malformed documents -------------------------------------------------------------------------


def test_truncated_xml_keeps_what_it_could_read_with_a_warning(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/t.xml", Reply(200, (DATA / "truncated.xml").read_bytes()))

    result = first_fetch(feed(session, url=url))

    assert [e.title for e in result.entries] == ["Complete one", "Complete two"]
    assert result.warning is not None
    assert result.warning.startswith("malformed XML at line 20: ")


def test_truncated_before_any_entry_is_an_error(
    server: LoopbackServer, session: requests.Session
) -> None:
    cut = (DATA / "truncated.xml").read_bytes()[:70]  # inside <channel>, before any title
    url = server.route("/t.xml", Reply(200, cut))

    error = fetch_error(feed(session, url=url))

    assert error.message.startswith("not a readable feed (malformed XML at line ")


def test_invalid_json_feed_is_an_error(server: LoopbackServer, session: requests.Session) -> None:
    body = b'{"version": "https://jsonfeed.org/version/1.1",\n "items": [}'
    url = server.route("/feed.json", Reply(200, body, {"Content-Type": "application/feed+json"}))

    error = fetch_error(feed(session, url=url))

    assert error.message == "invalid JSON at line 2, column 12: Expecting value"


def test_json_that_is_not_a_json_feed_is_an_error(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/api", Reply(200, b'{"items": []}', {"Content-Type": "application/json"}))

    error = fetch_error(feed(session, url=url))

    assert "not a JSON Feed" in error.message


def test_json_feed_is_detected_by_its_first_byte_whatever_the_header(
    server: LoopbackServer, session: requests.Session
) -> None:
    body = b"\n  " + (DATA / "feed.json").read_bytes()
    url = server.route("/feed", Reply(200, body, {"Content-Type": "text/plain"}))

    result = first_fetch(feed(session, url=url))

    assert [e.guid for e in result.entries] == ["json-1", "2"]


# --- encodings -----------------------------------------------------------------------------------

LATIN1_TITLE = "Naïve façade at 50 °C"
LATIN1_SUMMARY = "¿Qué pasó? Ångström © 2026"


@pytest.mark.parametrize(
    "content_type",
    ["application/rss+xml; charset=ISO-8859-1", "application/rss+xml", "text/xml", ""],
)
def test_non_utf8_feed_is_decoded(
    server: LoopbackServer, session: requests.Session, content_type: str
) -> None:
    body = (DATA / "latin1.xml").read_bytes()
    assert LATIN1_TITLE.encode("iso-8859-1") in body  # the fixture really is Latin-1
    headers = {"Content-Type": content_type} if content_type else {}
    url = server.route("/latin1.xml", Reply(200, body, headers))

    result = first_fetch(feed(session, url=url))

    (entry,) = result.entries
    assert entry.title == LATIN1_TITLE
    assert entry.summary == LATIN1_SUMMARY
    assert entry.url == "https://latin1.example.com/façade"
    # text/xml without a charset means "ask the XML declaration" (RFC 7303), not US-ASCII.
    assert result.warning is None


def test_charset_header_wins_over_the_declaration(
    server: LoopbackServer, session: requests.Session
) -> None:
    text = (DATA / "latin1.xml").read_bytes().decode("iso-8859-1")
    body = text.replace('encoding="ISO-8859-1"', 'encoding="UTF-8"').encode("windows-1252")
    url = server.route(
        "/x.xml", Reply(200, body, {"Content-Type": "application/xml; charset=windows-1252"})
    )

    (entry,) = first_fetch(feed(session, url=url)).entries

    assert entry.title == LATIN1_TITLE


# --- what entries carry --------------------------------------------------------------------------


def test_rss2_entries(server: LoopbackServer, session: requests.Session) -> None:
    url = server.route("/feeds/rss2.xml", Reply(200, (DATA / "rss2.xml").read_bytes()))

    one, two, three = first_fetch(feed(session, url=url)).entries

    assert one.guid == "rss2-post-1"
    assert one.url == "https://rss2.example.com/posts/1?id=7&utm_source=feed&utm_medium=rss#top"
    assert one.author == "Ada Lovelace"
    assert one.published == datetime(2026, 11, 10, 9, 30, tzinfo=UTC)
    assert one.tags == ("Python", "python", "Feeds")  # as the feed says; gather de-duplicates
    assert one.summary == "The first post, in short."
    assert one.content is not None and '<a href="/about?utm_campaign=x&amp;lang=en">' in one.content
    assert one.image_url == "https://rss2.example.com/img/cover1.jpg"
    assert two.guid == "https://rss2.example.com/posts/2"
    assert two.published == datetime(2026, 11, 11, 9, 0, tzinfo=UTC)  # +0100 converted
    assert two.summary == "<p>Only a description, <em>escaped</em> HTML.</p>"
    assert two.image_url == "https://rss2.example.com/img/cover2.png"  # an image enclosure
    # Left relative here: the guid must not depend on where the feed lives; gather resolves.
    assert three.guid is None
    assert three.url == "/posts/3"


def test_rss_guid_is_not_resolved_against_the_feed_url(
    server: LoopbackServer, session: requests.Session
) -> None:
    url = server.route("/t.xml", Reply(200, (DATA / "truncated.xml").read_bytes()))

    result = first_fetch(feed(session, url=url))

    assert [e.guid for e in result.entries] == ["trunc-1", "trunc-2"]


def test_atom_entries(server: LoopbackServer, session: requests.Session) -> None:
    url = server.route("/atom.xml", Reply(200, (DATA / "atom.xml").read_bytes()))

    one, two = first_fetch(feed(session, url=url)).entries

    assert one.guid == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"
    assert one.url == "https://atom.example.org/blog/entries/1?utm_source=atom"  # xml:base
    assert one.author == "Grace Hopper"  # the feed's author (RFC 4287, 4.2.1)
    assert one.published == datetime(2026, 11, 12, 6, 0, tzinfo=UTC)
    assert one.updated == datetime(2026, 11, 12, 18, 30, 2, tzinfo=UTC)
    assert one.tags == ("compilers", "history")
    assert one.summary == "Plain text summary with a &lt;tag&gt; in it"  # text, escaped
    assert one.content == (
        '<p>Entry one, with a <a href="https://atom.example.org/about">relative link</a>.</p>'
    )
    assert one.image_url == "https://atom.example.org/img/a.png"
    assert two.author == "Someone Else"
    assert two.published is None
    assert two.content == "<p>XHTML <strong>content</strong>.</p>"
    assert two.summary is None  # feedparser's copy of the content is not a summary


def test_rss1_and_rss091_entries(server: LoopbackServer, session: requests.Session) -> None:
    rdf = server.route("/rss1.rdf", Reply(200, (DATA / "rss1.rdf").read_bytes()))
    old = server.route("/rss091.xml", Reply(200, (DATA / "rss091.xml").read_bytes()))

    a, _ = first_fetch(feed(session, url=rdf)).entries
    first, _ = first_fetch(feed(session, url=old)).entries

    assert (a.guid, a.url, a.author) == ("https://rss1.example.net/a", a.url, "Tim")
    assert a.updated == datetime(2026, 11, 9, 7, 15, tzinfo=UTC)
    assert a.tags == ("semantic web",)
    assert first.guid is None and first.published is None
    assert first.url == "https://rss091.example.com/old-school"
    assert first.summary == "From the nineties."


def test_json_feed_entries(server: LoopbackServer, session: requests.Session) -> None:
    url = server.route("/feed.json", Reply(200, (DATA / "feed.json").read_bytes()))

    result = first_fetch(feed(session, url=url))
    one, two = result.entries

    assert result.warning is None
    assert one.guid == "json-1"
    assert one.url == "https://json.example.com/posts/1?utm_term=abc&page=2"
    assert one.author == "Item Author"
    assert one.published == datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
    assert one.updated == datetime(2026, 11, 10, 8, 0, tzinfo=UTC)  # 09:00+01:00
    assert one.summary == "A JSON summary."
    assert one.content == '<p>JSON <a href="/docs">docs</a> <img src="pics/x.png"></p>'
    assert one.tags == ("json", "feeds")
    assert one.image_url == "https://json.example.com/pics/cover.png"
    assert two.guid == "2"  # JSON Feed 1.0 allowed numbers
    assert two.author == "Feed Author"
    assert two.content == ("<p>Plain &lt;text&gt; item.</p><p>Second paragraph &amp; more.</p>")


def test_json_feed_problems_in_items_are_warnings(
    server: LoopbackServer, session: requests.Session
) -> None:
    body = (
        b'{"version": "https://jsonfeed.org/version/1", "title": "x", "items": ['
        b'"not an item", {"id": "a", "title": "A", "date_published": "yesterday"}]}'
    )
    url = server.route("/feed.json", Reply(200, body))

    result = first_fetch(feed(session, url=url))

    (entry,) = result.entries
    assert entry.guid == "a" and entry.published is None
    assert result.warning == (
        "item 1 is not an object; item 2: date_published is not an RFC 3339 date: 'yesterday'"
    )


# --- local feed files ----------------------------------------------------------------------------


def test_local_feed_file_with_validator(session: requests.Session, tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    shutil.copy(DATA / "rss2.xml", path)
    source = feed(session, path=path)

    first = first_fetch(source)
    assert len(first.entries) == 3
    assert first.etag is not None and first.etag.startswith("file:")
    assert first.base_url == "https://rss2.example.com/"  # the feed's own link

    unchanged = source.fetch(SourceState(name=source.name, url=str(path), etag=first.etag))
    assert unchanged.not_modified and unchanged.entries == ()

    path.write_bytes((DATA / "atom.xml").read_bytes())
    later = time.time() + 5
    os.utime(path, (later, later))
    changed = source.fetch(SourceState(name=source.name, url=str(path), etag=first.etag))
    assert not changed.not_modified
    assert changed.etag != first.etag
    assert len(changed.entries) == 2


@pytest.mark.parametrize("file", ["latin1.xml", "feed.json", "rss1.rdf"])
def test_local_feed_files_of_each_kind(session: requests.Session, file: str) -> None:
    result = first_fetch(feed(session, path=DATA / file))

    assert result.entries
    assert result.warning is None
    if file == "latin1.xml":
        assert result.entries[0].title == LATIN1_TITLE


def test_local_truncated_file_is_kept_with_warning(session: requests.Session) -> None:
    result = first_fetch(feed(session, path=DATA / "truncated.xml"))

    assert len(result.entries) == 2
    assert result.warning is not None and result.warning.startswith("malformed XML at line")


def test_missing_local_feed_file(session: requests.Session, tmp_path: Path) -> None:
    error = fetch_error(feed(session, path=tmp_path / "nope.xml"))

    assert error.message == "file not found"
    assert error.url == str(tmp_path / "nope.xml")


def test_local_feed_file_over_the_cap(session: requests.Session) -> None:
    error = fetch_error(feed(session, path=DATA / "rss2.xml", max_bytes=100))

    assert error.message.startswith("file too large (")


# --- folders -------------------------------------------------------------------------------------


@pytest.fixture
def posts(tmp_path: Path) -> Path:
    folder = tmp_path / "posts"
    shutil.copytree(DATA / "posts", folder)
    return folder


def folder_source(path: Path, timezone: ZoneInfo = BERLIN) -> Source:
    with requests.Session() as session:
        return make_source(
            SourceConfig("notes", "folder", FolderSettings(path=path)),
            session=session,
            http=HttpSettings(),
            timezone=timezone,
        )


def test_folder_reads_markdown_files(posts: Path) -> None:
    result = first_fetch(folder_source(posts))

    by_guid = {e.guid or "": e for e in result.entries}
    # draft.md is a draft, broken.md is broken, .hidden/ and notes.txt are not articles.
    assert sorted(by_guid) == ["custom-id-2", "folder:hello.md", "folder:no-front-matter.md"]
    hello = by_guid["folder:hello.md"]
    assert hello.title == "Hello from the folder"
    assert hello.published == datetime(2026, 11, 10, 9, 0, tzinfo=BERLIN)  # naive: our zone
    assert hello.updated == datetime(2026, 11, 12, 10, 30, tzinfo=UTC)
    assert hello.author == "Margaret Hamilton"
    assert hello.tags == ("apollo", "software", "Apollo")
    assert hello.summary == "The <em>first</em> post written in Markdown."
    assert hello.image_url == "https://folder.example.com/img/hello.png"
    assert hello.url == "https://folder.example.com/posts/hello?utm_source=md"
    assert hello.content is not None
    assert "<strong>bold</strong>" in hello.content
    assert "<td>Apollo 11</td>" in hello.content  # tables are on
    second = by_guid["custom-id-2"]
    assert second.title == "The <em>second</em> post"  # from the heading; gather strips tags
    assert second.content == "<p>Its title comes from the heading above.</p>\n"
    assert second.tags == ("one", "two", "three")
    assert second.published == datetime(2026, 11, 11, tzinfo=BERLIN)
    assert by_guid["folder:no-front-matter.md"].title == "no-front-matter"


def test_folder_skips_a_broken_file_and_names_it(posts: Path) -> None:
    result = first_fetch(folder_source(posts))

    assert result.warning == (
        "skipped 1 file: broken.md:4: invalid front matter: did not find expected ',' or ']'"
    )


def test_folder_names_the_line_of_a_bad_byte(posts: Path) -> None:
    (posts / "bad.md").write_bytes(b"---\ntitle: ok\n---\nline four\ncaf\xe9\n")

    result = first_fetch(folder_source(posts))

    assert result.warning is not None and "bad.md:5: not valid UTF-8" in result.warning
    assert "skipped 2 files" in result.warning


def test_folder_bad_date_skips_the_file(posts: Path) -> None:
    (posts / "when.md").write_text("---\ntitle: When\ndate: next tuesday\n---\nx\n")

    result = first_fetch(folder_source(posts))

    assert "when.md: `date` is not an ISO date: 'next tuesday'" in (result.warning or "")
    assert "folder:when.md" not in {e.guid for e in result.entries}


def test_unchanged_folder_is_not_modified_and_an_edit_is_reemitted(posts: Path) -> None:
    source = folder_source(posts)
    first = first_fetch(source)

    unchanged = source.fetch(SourceState(name="notes", url=str(posts), etag=first.etag))
    assert unchanged.not_modified

    hello = posts / "hello.md"
    hello.write_text(hello.read_text().replace("Hello from the folder", "Hello, edited"))
    later = time.time() + 5
    os.utime(hello, (later, later))
    edited = source.fetch(SourceState(name="notes", url=str(posts), etag=first.etag))

    assert not edited.not_modified
    titles = {e.guid: e.title for e in edited.entries}
    assert titles["folder:hello.md"] == "Hello, edited"


def test_folder_validator_depends_on_the_timezone(posts: Path) -> None:
    berlin = first_fetch(folder_source(posts, BERLIN))
    tokyo = folder_source(posts, ZoneInfo("Asia/Tokyo")).fetch(
        SourceState(name="notes", url=str(posts), etag=berlin.etag)
    )

    # Same files, another zone: naive dates mean other instants, so the folder is re-read.
    assert not tokyo.not_modified
    hello = next(e for e in tokyo.entries if e.guid == "folder:hello.md")
    assert hello.published == datetime(2026, 11, 10, 0, 0, tzinfo=UTC)


def test_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    error = fetch_error(folder_source(tmp_path / "nowhere"))

    assert error.message == "folder not found"
    assert error.url == str(tmp_path / "nowhere")
