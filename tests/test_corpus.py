"""The feedparser test corpus, plus our own hostile documents, gathered in one run.

``tests/data/feedparser-6.0.14-tests.tar.xz`` holds the ``tests/`` folder of feedparser's source
distribution on the package index (``feedparser-6.0.14.tar.gz``, sha256 088679b0c4b5...5f283d06,
without its ``runtests.py``) and its ``LICENSE`` (BSD-2-Clause), as found there. It is vendored,
80 KB compressed, rather than downloaded by ``make test``: a clean checkout then tests the same
documents offline, whatever the index serves that day.

Each document is served by a real HTTP server on 127.0.0.1 the way feedparser's own test server
serves it: the ``Header:`` lines of its leading comment become response headers (a status, a
content type with odd charset syntax, a redirect), and the compression tests go out with the
``Content-Encoding`` their names give. Every document is one source of one ``Publisher`` on a
real SQLite file; one gather must complete with an outcome stored for every source, and the
feeds and the digest built from what was stored must be valid.

More documents: drop a file into ``tests/data/hostile/`` (``Header:`` lines work there too;
``.json`` files go out as JSON Feed), or add a generator to ``GENERATED`` for inputs too big or
too odd to keep as files.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from newsletter.core import Publisher, make_publisher
from newsletter.render.digest import HTML_MAX_BYTES
from newsletter.types import GatherResult
from tests._factories import make_config
from tests._http import LoopbackServer, Reply
from tests.feedcheck import check_file
from tests.test_hostile_sources import (
    CONTROLS,
    atom_9999,
    json_feed,
    json_item,
    rss,
    rss_item,
    tags_feed,
)

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "feedparser-6.0.14-tests.tar.xz"
HOSTILE = DATA / "hostile"
FEEDPARSER_PORT = "http://localhost:8097"  # what the corpus's redirects point at

# Documents built at test time: name -> (body, content type). The hostile sources of issue 9
# (see ``test_hostile_sources``) are here, each as its own source among the corpus.
GENERATED: dict[str, Callable[[], tuple[bytes, str]]] = {
    "generated/many-items.xml": lambda: (
        (
            '<rss version="2.0"><channel><title>Many</title>'
            + "".join(
                f"<item><title>Item {i}</title><link>https://example.com/{i}</link></item>"
                for i in range(2000)
            )
            + "</channel></rss>"
        ).encode(),
        "application/rss+xml",
    ),
    "generated/not-a-feed.bin": lambda: (bytes(range(256)) * 64, "application/octet-stream"),
    "generated/empty.xml": lambda: (b"", "application/xml"),
    "generated/date-overflows-in-utc.json": lambda: (
        json_feed(json_item("dates", date_published="0001-01-01T00:00:00+14:00")),
        "application/feed+json",
    ),
    "generated/lone-surrogate.json": lambda: (
        json_feed(json_item("surrogate", title="\ud800")),
        "application/feed+json",
    ),
    "generated/control-characters.json": lambda: (
        json_feed(json_item("controls", title=f"Alarm {CONTROLS} bells")),
        "application/feed+json",
    ),
    "generated/1000-tags.xml": lambda: (tags_feed(1000), "application/rss+xml"),
    "generated/huge-title.xml": lambda: (
        rss(rss_item(1, site="huge", title="H" * 200_000)),
        "application/rss+xml",
    ),
    "generated/console-markup.xml": lambda: (
        rss(rss_item(1, site="markup", title="[/bold] [red]x")),
        'application/rss+xml; charset="[/x]"',
    ),
    "generated/year-9999.xml": lambda: (atom_9999(), "application/atom+xml"),
}

_HEADER = re.compile(rb"^Header:\s+([^:]+):(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Document:
    name: str  # the source's name and the path it is served at
    reply: Reply


def _reply_for(path: str, body: bytes, base: str) -> Reply:
    """The answer feedparser's own test server gives for this corpus file (see its
    ``tests/runtests.py``)."""
    if "/compression/" in path:
        encoding = "gzip" if path.endswith("gz") else "deflate"
        return Reply(200, body, {"Content-Encoding": encoding, "Content-Type": "application/xml"})
    headers = {k.decode().strip(): v.decode().strip() for k, v in _HEADER.findall(body)}
    status = int(headers.pop("Status", "200"))
    if "Location" in headers:
        headers["Location"] = headers["Location"].replace(FEEDPARSER_PORT, base)
    headers.setdefault("Content-type", "application/xml")
    return Reply(status, body, headers)


def corpus_documents(root: Path, base: str) -> list[Document]:
    docs = [
        Document(f"corpus/{p.relative_to(root)}", _reply_for(str(p), p.read_bytes(), base))
        for p in sorted((root / "tests").rglob("*"))
        if p.is_file()
    ]
    for p in sorted(HOSTILE.iterdir()):
        body = p.read_bytes()
        reply = (
            Reply(200, body, {"Content-Type": "application/feed+json"})
            if p.suffix == ".json"
            else _reply_for(str(p), body, base)
        )
        docs.append(Document(f"hostile/{p.name}", reply))
    for name, make in GENERATED.items():
        body, content_type = make()
        docs.append(Document(name, Reply(200, body, {"Content-Type": content_type})))
    return docs


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("feedparser")
    with tarfile.open(CORPUS) as archive:
        # The "data" filter (refuse links and paths outside ``root``) exists from 3.11.4 on.
        if hasattr(tarfile, "data_filter"):
            archive.extractall(root, filter="data")
        else:
            archive.extractall(root)
    (top,) = root.iterdir()
    return top


@pytest.fixture
def publisher(
    corpus_root: Path, server: LoopbackServer, tmp_path: Path, fixed_clock: list[datetime]
) -> Iterator[tuple[Publisher, list[Document]]]:
    docs = corpus_documents(corpus_root, server.base)
    server.route("/-/return-304.xml", Reply(304, headers={"Content-Type": "text/xml"}))
    tables = []
    for doc in docs:
        url = server.route("/" + doc.name, doc.reply)
        tables.append(
            f'[[sources]]\nname = {json.dumps(doc.name)}\nkind = "feed"\n'
            f"url = {json.dumps(url)}\ntimeout = 10\n"
        )
    extra = "".join(tables) + (
        '[storage]\npath = "corpus.db"\n[feeds]\noutput_dir = "feeds"\n'
        '[mail]\nbackend = "outbox"\n[mail.outbox]\noutbox_dir = "outbox"\n'
        "[digest]\nlookback_hours = 1000000\n"
    )
    pub = make_publisher(make_config(tmp_path, extra))
    yield pub, docs
    pub.close()


def test_the_corpus_package_carries_its_license(corpus_root: Path) -> None:
    license_text = (corpus_root / "LICENSE").read_text()
    assert "Redistribution and use in source and binary forms" in license_text
    assert len(list((corpus_root / "tests").rglob("*.xml"))) > 2200


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


@pytest.mark.timeout(90)  # about 16 s alone on a 2-core machine
def test_one_gather_of_the_whole_corpus(
    publisher: tuple[Publisher, list[Document]], fixed_clock: list[datetime]
) -> None:
    pub, docs = publisher
    seen: list[GatherResult] = []

    results = pub.gather(progress=seen.append)

    # It completes, with one result per source, and each outcome is stored.
    assert len(results) == len(docs) == len(seen)
    assert [r.source for r in results] == [d.name for d in docs]
    states = {s.name: s for s in pub.storage.source_states()}
    assert set(states) == {d.name for d in docs}
    for result in results:
        state = states[result.source]
        assert state.last_fetched == fixed_clock[0], result.source
        if result.ok:
            assert state.last_success == fixed_clock[0] and state.error_count == 0
            assert state.warning == result.warning
        else:
            assert result.error is not None and state.error_count == 1
            assert state.last_error == str(result.error)
            assert "unexpected error" not in state.last_error, state.last_error
    ok = [r for r in results if r.ok]
    assert len(ok) > len(docs) // 2  # most of the corpus is feeds we can read
    stored = pub.storage.recent_articles(100_000)
    assert len(stored) == pub.storage.count_articles() > 1000
    # No entity was expanded: neither a local file (XXE) nor a billion laughs.
    for article in stored:
        text = f"{article.title} {article.summary} {article.content}"
        assert "root:" not in text and "lollol" not in text, article.source

    # The feeds built from all of that are valid.
    written = pub.build_feeds()
    feeds = [p for p in written if p.name in ("rss.xml", "atom.xml", "feed.json")]
    assert feeds
    for path in feeds:
        assert check_file(path) == [], path

    # The digest renders, and goes out as a valid message.
    rendered = pub.render_next_digest(force=True)
    assert rendered is not None and rendered.articles
    assert rendered.size <= HTML_MAX_BYTES
    parser = _Html()
    parser.feed(rendered.html)
    assert "html" in parser.tags and "a" in parser.tags
    pub.add_subscriber("reader@example.com")
    report = pub.send_digest(force=True)
    assert (report.sent, report.failed) == (1, 0), report
    (eml,) = (pub.config.mail.provider("outbox").outbox_dir).rglob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["To"] == "reader@example.com"
    assert not re.search("[\x00-\x1f\x7f-\x9f]", str(message["Subject"]))
