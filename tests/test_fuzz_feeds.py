"""Fuzzing the feed parser input: whatever a source sends, fetching it gives a ``FetchResult``
(whose entries ``gather.normalize`` turns into articles) or a ``SourceError``, never any other
exception.

Documents go through the real code paths: written to a file and read by a file source, or
served by a real HTTP server on 127.0.0.1 with a fuzzed ``Content-Type`` and read by an http
source. Three kinds of input: random bytes, documents of feedparser's test corpus (see
``test_corpus``) mutated, and JSON Feed structures with arbitrary values where the spec
expects strings, lists and objects. The budget is bounded so ``make test`` stays fast.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import SourceError
from newsletter.gather import normalize
from newsletter.sources.feed import FeedSource
from newsletter.sources.settings import FeedSettings
from newsletter.types import FetchResult, SourceState
from tests._http import LoopbackServer, Reply, Seen

CORPUS = Path(__file__).parent / "data" / "feedparser-6.0.14-tests.tar.xz"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _corpus() -> list[bytes]:
    """A spread of corpus documents (every 8th, in name order): each format and feature."""
    with tarfile.open(CORPUS) as archive:
        members = sorted(
            (m for m in archive.getmembers() if m.isfile() and "/tests/" in m.name),
            key=lambda m: m.name,
        )
        docs = []
        for member in members[::8]:
            data = archive.extractfile(member)
            assert data is not None
            docs.append(data.read())
    return docs


CORPUS_DOCS = _corpus()

# What hostile feeds put where a parser's assumptions are: NULs, lone surrogates (raw and as
# references), markup that a console would interpret, dates at the ends of the calendar,
# unbalanced CDATA and entity declarations.
SNIPPETS = [
    b"\x00",
    b"\x1b[31m",
    b"\x07\x08\x7f",
    b"\xed\xa0\x80",  # a lone surrogate, UTF-8 encoded
    b"&#xD800;",
    b"&#0;",
    b"&#x110000;",
    b"[/bold]",
    b"<![CDATA[",
    b"]]>",
    b"<!ENTITY x 'y'>",
    b"&undefined;",
    b"0001-01-01T00:00:00+14:00",
    b"9999-12-31T23:59:59-14:00",
    b"Mon, 31 Feb 99999 25:61:61 +9999",
    b"<category>" * 20,
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b'<?xml version="1.0" encoding="x-unknown"?>',
    b"<rss version='2.0'><channel><item>",
    b'{"version": "https://jsonfeed.org/version/1.1", "items": [',
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    doc = bytearray(draw(st.sampled_from(CORPUS_DOCS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(doc)))
        action = draw(st.sampled_from(["insert", "delete", "flip", "truncate", "repeat"]))
        if action == "insert":
            doc[at:at] = draw(st.sampled_from(SNIPPETS) | st.binary(max_size=16))
        elif action == "delete":
            del doc[at : at + draw(st.integers(1, 64))]
        elif action == "flip" and at < len(doc):
            doc[at] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del doc[at:]
        elif action == "repeat":
            doc[at:at] = doc[at : at + draw(st.integers(1, 200))] * draw(st.integers(2, 20))
    return bytes(doc)


_text = st.text(max_size=40) | st.sampled_from(
    ["", " ", "\ud800", "[/x]", "\x00\x1b\x07", "a" * 2000, "<b>x</b>", "javascript:alert(1)"]
)
_dates = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "2026-02-30T00:00:00Z",
        "2026-11-22T08:00:00",
        "2026-11-22T08:00:00.123456789+01:00",
        "yesterday",
        "",
    ]
) | st.datetimes().map(lambda d: d.isoformat())
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)


def _field(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right kind of value usually, anything JSON sometimes."""
    return st.one_of(value, value, value, _json_values)


_authors = st.lists(st.fixed_dictionaries({}, optional={"name": _field(_text)}), max_size=3)
_item = st.fixed_dictionaries(
    {},
    optional={
        "id": _field(_text | st.integers()),
        "url": _field(_text | st.just("https://example.com/a")),
        "external_url": _field(_text),
        "title": _field(_text),
        "content_html": _field(_text),
        "content_text": _field(_text),
        "summary": _field(_text),
        "image": _field(_text),
        "banner_image": _field(_text),
        "date_published": _field(_dates),
        "date_modified": _field(_dates),
        "authors": _field(_authors),
        "author": _field(st.fixed_dictionaries({}, optional={"name": _text})),
        "tags": _field(st.lists(_text, max_size=60)),
    },
)
_json_feed = st.fixed_dictionaries(
    {
        "version": st.sampled_from(
            ["https://jsonfeed.org/version/1.1", "https://jsonfeed.org/version/1"]
        )
        | _json_values,
        "items": _field(st.lists(_field(_item), max_size=8)),
    },
    optional={
        "title": _field(_text),
        "home_page_url": _field(_text),
        "feed_url": _field(_text),
        "authors": _field(_authors),
    },
)


# --- the code paths ------------------------------------------------------------------------------


def _articles(result: FetchResult) -> None:
    for entry in result.entries:
        article = normalize("fuzz", entry, result.base_url)
        if article is not None:
            assert article.key and article.title and article.source == "fuzz"
            # Storable and sendable: every text field encodes (no lone surrogate is left).
            for text in (article.key, article.title, article.summary, article.content):
                text.encode()
            for text in (article.url, article.author, article.image_url, *article.tags):
                (text or "").encode()


def read(source: FeedSource) -> None:
    """The property: a result whose entries normalize, or a SourceError naming the source."""
    try:
        result = source.fetch(SourceState(name="fuzz"))
    except SourceError as e:
        assert e.source == "fuzz" and e.message
        return
    assert isinstance(result, FetchResult)
    _articles(result)


@pytest.fixture(scope="module")
def http() -> Iterator[tuple[LoopbackServer, requests.Session]]:
    with LoopbackServer() as server, requests.Session() as session:
        yield server, session


def file_source(path: Path, session: requests.Session) -> FeedSource:
    config = SourceConfig("fuzz", "feed", FeedSettings(path=path))
    return FeedSource(config, session=session, http=HttpSettings())


@FUZZ
@given(body=st.binary(max_size=4096), suffix=st.sampled_from([".xml", ".json", ""]))
def test_random_bytes_from_a_file(
    body: bytes, suffix: str, tmp_path: Path, http: tuple[LoopbackServer, requests.Session]
) -> None:
    path = tmp_path / f"feed{suffix}"
    path.write_bytes(body)
    read(file_source(path, http[1]))


# Documents that once made feedparser raise instead of reporting "bozo", or our JSON decoding.
_ROGUE_RSS = b"<rss><channel><title>%s testing</title></channel></rss>"


@FUZZ
@given(body=mutated())
@example(body=_ROGUE_RSS % b"&#x110000;")
@example(body=_ROGUE_RSS % b"&#xD800;")
@example(body=b'<?xml version="1.0" encoding="\x00euc-kr"?>' + _ROGUE_RSS % b"")
@example(body=b'<?xml version="1.0" encoding="\xe5uc-kr"?>' + _ROGUE_RSS % b"")
@example(body=b'{"version": "https://jsonfeed.org/version/1.1", "items": ' + b"[" * 5000)
def test_mutated_corpus_documents_from_a_file(
    body: bytes, tmp_path: Path, http: tuple[LoopbackServer, requests.Session]
) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(body)
    read(file_source(path, http[1]))


_content_types = st.sampled_from(
    [
        "",
        "application/rss+xml",
        "application/atom+xml; charset=utf-8",
        "text/xml",
        "application/feed+json",
        "application/json; charset=utf-16",
        'text/xml; charset="[/x]"',
        "text/xml; charset=x-unknown",
        "text/html; charset=utf-7",
        "application/xml; charset=",
        ";;;=;charset",
    ]
) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@FUZZ
@given(body=mutated() | st.binary(max_size=2048), content_type=_content_types)
def test_mutated_documents_over_http(
    body: bytes, content_type: str, http: tuple[LoopbackServer, requests.Session]
) -> None:
    server, session = http

    def answer(_: Seen) -> Reply:
        return Reply(200, body, {"Content-Type": content_type})

    url = server.route("/fuzz", answer)
    config = SourceConfig("fuzz", "feed", FeedSettings(url=url, timeout=10))
    read(FeedSource(config, session=session, http=HttpSettings()))


@FUZZ
@given(doc=_json_feed, ensure_ascii=st.booleans(), suffix=st.sampled_from([".json", ".xml"]))
def test_json_feed_structures(
    doc: dict[str, Any],
    ensure_ascii: bool,
    suffix: str,
    tmp_path: Path,
    http: tuple[LoopbackServer, requests.Session],
) -> None:
    # With ensure_ascii off, a lone surrogate becomes bytes that are not UTF-8 (and NaN, which
    # Python writes and reads, is no JSON at all): both must fail readably, or parse.
    body = json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    path = tmp_path / f"feed{suffix}"
    path.write_bytes(body)
    read(file_source(path, http[1]))


_surrogate_text = st.builds(
    lambda before, after: f"{before}\ud800{after}", st.text(max_size=10), st.text(max_size=10)
)


@FUZZ
@given(
    item=st.fixed_dictionaries(
        {"url": st.just("https://example.com/a")},
        optional={
            "title": _surrogate_text,
            "content_html": _surrogate_text,
            "summary": _surrogate_text,
            "tags": st.lists(_surrogate_text, max_size=3),
            "authors": st.lists(st.fixed_dictionaries({"name": _surrogate_text}), max_size=2),
        },
    ).filter(lambda item: len(item) > 1)
)
def test_lone_surrogates_in_json_feed_items(
    item: dict[str, Any], tmp_path: Path, http: tuple[LoopbackServer, requests.Session]
) -> None:
    # json.dumps escapes a lone surrogate as \ud800, which is valid JSON; json.loads gives it
    # back as a str that no UTF-8 encoder (a database driver, nh3, SMTP) accepts.
    doc = {"version": "https://jsonfeed.org/version/1.1", "items": [item]}
    path = tmp_path / "feed.json"
    path.write_text(json.dumps(doc))
    read(file_source(path, http[1]))
