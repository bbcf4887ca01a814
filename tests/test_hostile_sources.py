"""Every source fails alone: whatever one sends (absurd dates, lone surrogates, control
characters, thousands of tags, huge titles, ids that change on every fetch) is normalized or
refused per item, with a warning naming the item, and never stops a gather, a feed build or a
digest. Feeds are served by a real HTTP server on 127.0.0.1; storage is a real SQLite file
(and PostgreSQL where the test is about storage); mail goes to the outbox or an SMTP sink."""

from __future__ import annotations

import email.policy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from html import escape
from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import ConfigError
from newsletter.gather import ItemLimits, normalize
from newsletter.render.digest import HTML_MAX_BYTES, DigestRenderer
from newsletter.render.feeds import FEED_FILES, MAX_TAG_FEEDS, write_feeds
from newsletter.types import EntryData, FetchResult
from tests._factories import make_article, make_config
from tests._http import LoopbackServer, Reply, Seen
from tests._smtp import smtp_server
from tests.feedcheck import check_file

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
GMAIL_CLIP = 102_000  # bytes of HTML after which Gmail clips a message
CONTROLS = "\x00\x1b[31m\x07\x08\x7f"  # NUL, ESC (a terminal colour), BEL, BS, DEL
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# --- documents --------------------------------------------------------------------------------


def rss(*items: str, title: str = "A feed") -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>{title}</title><link>https://example.com/</link><description>d</description>"
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def rss_item(n: int, *, site: str = "good", title: str | None = None, extra: str = "") -> str:
    when = (NOW - timedelta(hours=n + 1)).strftime("%a, %d %b %Y %H:%M:%S +0000")
    return (
        f"<item><title>{escape(title or f'Post {n}')}</title>"
        f"<link>https://{site}.example.com/{n}</link><guid>{site}-{n}</guid>"
        f"<pubDate>{when}</pubDate><description>Body {n}</description>{extra}</item>"
    )


def json_feed(*items: dict[str, object]) -> bytes:
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile server would.
    doc = {"version": "https://jsonfeed.org/version/1.1", "title": "J", "items": list(items)}
    return json.dumps(doc).encode()


def json_item(name: str, **fields: object) -> dict[str, object]:
    return {
        "id": name,
        "url": f"https://{name}.example.com/post",
        "title": f"{name} post",
        "content_text": f"Body of {name}.",
        "date_published": (NOW - timedelta(hours=2)).isoformat(),
        **fields,
    }


def atom_9999() -> bytes:
    return b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Far future</title><id>urn:x:far</id>
<updated>9999-12-31T23:59:59Z</updated>
<entry><title>From the future</title><id>urn:x:far:1</id>
<link href="https://future.example.com/1"/>
<published>2026-11-21T08:00:00Z</published><updated>9999-12-31T23:59:59Z</updated>
<content type="html">&lt;p&gt;Hello&lt;/p&gt;</content></entry></feed>"""


def tags_feed(count: int) -> bytes:
    categories = "".join(f"<category>tag {i}</category>" for i in range(count))
    return rss(rss_item(1, site="tags", extra=categories))


# --- a project on disk ---------------------------------------------------------------------------


def write_project(
    tmp_path: Path, sources: dict[str, str], *, storage_url: str | None = None, mail: str = ""
) -> Path:
    lines = [
        "[newsletter]",
        'title = "Hostile Weekly"',
        'site_url = "https://news.example.org/"',
        'sender = "Hostile Weekly <weekly@news.example.org>"',
        'postal_address = "1 Test Street, Berlin"',
        "",
    ]
    for name, url in sources.items():
        lines += ["[[sources]]", f'name = "{name}"', 'kind = "feed"', f'url = "{url}"', ""]
    lines += [
        "[feeds]",
        'output_dir = "feeds"',
        "",
        "[digest]",
        "lookback_hours = 100000",
        "",
    ]
    lines += [mail or '[mail]\nbackend = "outbox"\n[mail.outbox]\noutbox_dir = "outbox"', ""]
    lines += ["[storage]", f'url = "{storage_url}"' if storage_url else 'path = "news.db"', ""]
    config = tmp_path / "newsletter.toml"
    config.write_text("\n".join(lines))
    return config


@pytest.fixture
def clock(fixed_clock: list[datetime]) -> list[datetime]:
    fixed_clock[0] = NOW
    return fixed_clock


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


def open_publisher(config: Path, *subscribers: str) -> Publisher:
    publisher = make_publisher(load_config(config))
    for address in subscribers:
        publisher.add_subscriber(address)
    return publisher


def outbox_messages(publisher: Publisher, digest_id: int) -> list[EmailMessage]:
    folder = publisher.config.mail.provider("outbox").outbox_dir / str(digest_id)
    out = []
    for path in sorted(folder.glob("*.eml")):
        msg = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def html_part(msg: EmailMessage) -> str:
    part = msg.get_body(("html",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def warnings(publisher: Publisher) -> dict[str, str | None]:
    return {s.name: s.warning for s in publisher.status().sources}


# --- normalizing one entry -----------------------------------------------------------------------


def test_dates_are_clamped_to_the_window_with_a_note(clock: list[datetime]) -> None:
    far_east = datetime.fromisoformat("0001-01-01T00:00:00+14:00")  # year 0 in UTC
    problems: list[str] = []
    article = normalize(
        "s",
        EntryData(
            title="T",
            url="https://e.com/a",
            published=far_east,
            updated=datetime(9999, 12, 31, tzinfo=UTC),
        ),
        None,
        problems=problems,
    )
    assert article is not None
    assert article.published == datetime(1970, 1, 1, tzinfo=UTC)
    assert article.updated == NOW + timedelta(days=1)
    (line,) = problems
    assert line.startswith("item https://e.com/a: ")
    assert "published 0001-01-01T00:00:00+14:00 out of range, clamped to 1970-01-01" in line
    assert "updated 9999-12-31T00:00:00+00:00 out of range, clamped to 2026-11-23" in line


def test_lone_surrogates_and_control_characters_are_scrubbed(clock: list[datetime]) -> None:
    problems: list[str] = []
    article = normalize(
        "s",
        EntryData(
            title=f"Bad\ud800 title{CONTROLS}!",
            guid="id\ud800\x00",
            url="https://e.com/a",
            author=f"Eve{CONTROLS}",
            summary="<p>sum\ud800mary\x00</p>",
            content="<p>con\x1btent\ud800</p>",
            tags=(f"t{CONTROLS}ag", "\x85"),
        ),
        None,
        problems=problems,
    )
    assert article is not None
    assert article.title == "Bad\ufffd title[31m!"
    assert article.key == "id\ufffd"
    assert article.author == "Eve[31m"
    assert article.tags == ("t[31mag",)
    assert article.content == "<p>content\ufffd</p>"
    for text in (article.title, article.key, article.author, article.summary, article.content):
        text.encode("utf-8")  # would raise UnicodeEncodeError on a lone surrogate
        assert not _CONTROL_RE.search(text)
    (line,) = problems
    assert "item https://e.com/a: control characters or lone surrogates removed from" in line
    assert "title, author, tags, summary, content, id" in line


def test_tags_and_titles_are_capped_as_configured(clock: list[datetime]) -> None:
    problems: list[str] = []
    entry = EntryData(
        title="word " * 50_000,
        url="https://e.com/a",
        tags=(*tuple(f"tag {i}" for i in range(1000)), "x" * 500),
    )
    article = normalize("s", entry, None, limits=ItemLimits(10, 100), problems=problems)
    assert article is not None
    assert len(article.title) <= 100
    assert article.tags == tuple(f"tag {i}" for i in range(10))
    assert "title of 249,999 characters cut to 100" in problems[0]
    assert "1,001 tags, kept the first 10" in problems[0]


def test_an_entry_that_breaks_normalizing_is_skipped_alone(clock: list[datetime]) -> None:
    from newsletter.gather import _normalize_all

    # A tag that is not text: no parser of ours produces one, but a bug somewhere might.
    broken = EntryData(title="Broken", url="https://e.com/broken", tags=(3,))  # type: ignore[arg-type]
    good = EntryData(title="Good", url="https://e.com/good")
    articles, problems = _normalize_all("s", FetchResult(entries=(broken, good)))
    assert [a.title for a in articles] == ["Good"]
    (line,) = problems
    assert line.startswith("item https://e.com/broken: skipped (TypeError")


def test_many_bad_items_make_one_warning_line(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    items = [json_item(f"n{i}", date_published="0001-01-01T00:00:00+14:00") for i in range(20)] + [
        json_item("fine")
    ]
    url = server.route("/many.json", Reply(body=json_feed(*items)))
    publisher = open_publisher(write_project(tmp_path, {"Many": url}))
    try:
        (result,) = publisher.gather()
        assert result.ok and result.new == 21
        warning = warnings(publisher)["Many"] or ""
        assert "\n" not in warning and len(warning) < 1000
        assert warning.count("out of range") == 5
        assert warning.startswith("item https://n0.example.com/post: published")
        assert warning.endswith("; and 15 more items")
    finally:
        publisher.close()


def test_a_folder_file_that_breaks_its_parser_is_skipped_alone(
    tmp_path: Path, clock: list[datetime]
) -> None:
    folder = tmp_path / "articles"
    folder.mkdir()
    # YAML reads 0000-01-01 as a date and fails outside its own error type (ValueError).
    (folder / "zero.md").write_text("---\ntitle: Zero\ndate: 0000-01-01\n---\nBody\n")
    (folder / "far.md").write_text("---\ntitle: Far\ndate: 9999-12-31\n---\nBody\n")
    (folder / "good.md").write_text("---\ntitle: Good\ndate: 2026-11-21\n---\nBody\n")
    config = write_project(tmp_path, {})
    config.write_text(
        config.read_text().replace(
            "[feeds]", '[[sources]]\nname = "Desk"\nkind = "folder"\npath = "articles"\n\n[feeds]'
        )
    )
    publisher = open_publisher(config)
    try:
        (result,) = publisher.gather()
        assert result.ok and result.new == 2
        warning = warnings(publisher)["Desk"] or ""
        assert "skipped 1 file: zero.md: ValueError" in warning
        assert "item folder:far.md: published 9999-12-31T00:00:00+00:00 out of range" in warning
        titles = {a.title: a for a in publisher.storage.recent_articles(5)}
        assert sorted(titles) == ["Far", "Good"]
        assert titles["Far"].published <= NOW
    finally:
        publisher.close()


# --- the two limits in the config ----------------------------------------------------------------


def test_item_limits_are_configurable_within_ranges(tmp_path: Path) -> None:
    assert make_config(tmp_path).http.max_tags_per_item == 50
    assert make_config(tmp_path).http.max_title_chars == 1000
    config = make_config(tmp_path, "[http]\nmax_tags_per_item = 0\nmax_title_chars = 20\n")
    assert (config.http.max_tags_per_item, config.http.max_title_chars) == (0, 20)
    for body, key in [
        ("max_tags_per_item = -1", "max_tags_per_item"),
        ("max_tags_per_item = 1001", "max_tags_per_item"),
        ("max_tags_per_item = 1.5", "max_tags_per_item"),
        ("max_title_chars = 19", "max_title_chars"),
        ("max_title_chars = 100001", "max_title_chars"),
    ]:
        with pytest.raises(ConfigError) as info:
            make_config(tmp_path, f"[http]\n{body}\n")
        assert f"http.{key}" in str(info.value), str(info.value)
        assert ":" in str(info.value).split(" ")[0]  # FILE:LINE: first


def test_gather_applies_the_configured_limits(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    url = server.route("/tags.xml", Reply(body=tags_feed(30)))
    config = write_project(tmp_path, {"Tags": url})
    config.write_text(config.read_text() + "\n[http]\nmax_tags_per_item = 5\n")
    publisher = open_publisher(config)
    try:
        publisher.gather()
        (article,) = publisher.storage.recent_articles(5)
        assert article.tags == tuple(f"tag {i}" for i in range(5))
        assert "30 tags, kept the first 5" in (warnings(publisher)["Tags"] or "")
    finally:
        publisher.close()


# --- tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1000, 3000])
def test_thousands_of_tags_write_a_bounded_number_of_files(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime], count: int
) -> None:
    url = server.route("/tags.xml", Reply(body=tags_feed(count)))
    publisher = open_publisher(write_project(tmp_path, {"Tags": url}))
    try:
        (result,) = publisher.gather()
        assert result.ok and result.new == 1
        assert f"{count:,} tags, kept the first 50" in (warnings(publisher)["Tags"] or "")
        written = publisher.build_feeds()
        out = publisher.config.feeds.output_dir
        files = [p for p in out.rglob("*") if p.is_file()]
        # Three main documents, three per kept tag, the tag index; not three per sent tag.
        assert len(written) == 3 + 3 * 50
        assert len(files) == 3 + 3 * 50 + 1
        assert max(p.stat().st_size for p in files) < 200_000
        tag_rss = (out / "tags" / "tag-7" / "rss.xml").read_bytes()
        assert tag_rss.count(b"<category>") == 50
        assert publisher.build_feeds() == []  # and a rebuild rewrites nothing
    finally:
        publisher.close()


def test_stored_articles_with_too_many_tags_are_bounded_when_feeds_are_built(
    tmp_path: Path,
) -> None:
    # Stored before gathering capped tags (or with a cap raised since): the feed build holds
    # its own bounds: tags per item, the tag's name, and the number of tag feeds (500 by
    # default; 40 here, to keep the test quick).
    assert MAX_TAG_FEEDS == 500
    config = make_config(tmp_path)
    tags = (*(f"topic {i}\x1b[0m" for i in range(70)), "z" * 5000)
    # The long tag first on every article, then ten topics of its own: 1 + 7 * 7 tags kept.
    articles = [make_article(n, tags=(tags[-1], *tags[n * 10 : n * 10 + 10])) for n in range(7)]
    written = write_feeds(articles, config.newsletter, config.feeds, max_tags=8, max_tag_feeds=40)
    assert written.tags_without_feed == 1 + 7 * 7 - 40
    tag_dirs = [p for p in (config.feeds.output_dir / "tags").iterdir() if p.is_dir()]
    assert len(tag_dirs) == 40
    for tag_dir in tag_dirs:
        rss_bytes = (tag_dir / "rss.xml").read_bytes()
        assert b"\x1b" not in rss_bytes
        for item in re.findall(rb"<item>.*?</item>", rss_bytes, re.S):
            assert item.count(b"<category>") <= 8
        channel_title = re.search(rb"<title>(.*?)</title>", rss_bytes)
        assert channel_title is not None and len(channel_title.group(1)) < 200


# --- headers -------------------------------------------------------------------------------------


def assert_clean_headers(msg: EmailMessage, raw: bytes) -> None:
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head), head
    subject = str(msg["Subject"])
    assert not _CONTROL_RE.search(subject)
    assert "Alarm [31m bells" in subject


def test_control_characters_in_a_title_never_reach_a_header(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    item = json_item("alarm", title=f"Alarm {CONTROLS} bells")
    url = server.route("/alarm.json", Reply(body=json_feed(item)))
    publisher = open_publisher(write_project(tmp_path, {"Alarm": url}), "ada@example.com")
    try:
        publisher.gather()
        report = publisher.send_digest()
        assert report.sent == 1 and report.digest_id is not None
        (path,) = (
            publisher.config.mail.provider("outbox").outbox_dir / str(report.digest_id)
        ).glob("*.eml")
        raw = path.read_bytes()
        msg = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(msg, EmailMessage)
        assert_clean_headers(msg, raw)
    finally:
        publisher.close()


def test_control_characters_never_reach_smtp_headers(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    item = json_item("alarm", title=f"Alarm {CONTROLS} bells")
    url = server.route("/alarm.json", Reply(body=json_feed(item)))
    with smtp_server() as sink:
        config = write_project(tmp_path, {"Alarm": url}, mail=sink.mail_config())
        publisher = open_publisher(config, "ada@example.com", "grace@example.org")
        try:
            publisher.gather()
            report = publisher.send_digest()
            assert report.sent == 2 and report.failed == 0
        finally:
            publisher.close()
        assert sorted(sink.recipients()) == ["ada@example.com", "grace@example.org"]
        for received in sink.received:
            assert_clean_headers(received.message, received.raw.replace(b"\n", b"\r\n"))


# --- the digest budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "title", "summary"),
    [
        (1, "T" * 200_000, "short"),
        (1, "huge " * 40_000, "<p>" + "s" * 200_000 + "</p>"),
        (30, "word " * 2_000, "<p>" + "word " * 200 + "</p>"),
        (30, "Normal title", "<p>" + "<b>x</b>" * 30_000 + "</p>"),
    ],
)
def test_the_digest_fits_the_budget_whatever_the_articles(
    tmp_path: Path, count: int, title: str, summary: str
) -> None:
    from newsletter.mail.base import PreparedContent
    from newsletter.mail.message import build_message
    from newsletter.types import MessageContent, Recipient

    config = make_config(tmp_path)
    articles = [
        make_article(
            n,
            title=title,
            summary=summary,
            content=summary * 3,
            author="A" * 5_000,
            tags=tuple("t" * 300 + str(i) for i in range(50)),
            url="https://example.com/" + "p" * 5_000 if n % 2 else f"https://example.com/{n}",
            image_url="https://example.com/" + "i" * 5_000 + ".png",
        )
        for n in range(count)
    ]
    rendered = DigestRenderer(config).render(articles, now=NOW)
    assert rendered.size <= HTML_MAX_BYTES
    assert [a.id for a in rendered.articles] == [a.id for a in articles[: len(rendered.articles)]]
    assert rendered.articles[0].title == title  # the caller's articles, not trimmed copies
    content = MessageContent(
        digest_id=1,
        digest_uid="u1",
        subject=rendered.subject,
        from_addr=config.newsletter.sender,
        html=rendered.html,
        text=rendered.text,
        reply_to=None,
        list_id=config.newsletter.list_id,
        message_id_domain=config.newsletter.domain,
        unsubscribe_mailto="mailto:weekly@news.example.org",
    )
    values = {
        "unsubscribe_url": "https://news.example.org/unsubscribe/" + "t" * 120,
        "first_name": "Ada",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
    }
    msg = build_message(
        PreparedContent(content), Recipient(1, "ada@example.com", "Ada", values), date=NOW
    )
    assert len(html_part(msg).encode()) <= GMAIL_CLIP
    assert len(msg.as_bytes()) <= 2 * GMAIL_CLIP  # text part beside it, never the 424 KB seen


def test_rows_stored_before_scrubbing_still_render(tmp_path: Path) -> None:
    # Articles stored by an older version, before gathering scrubbed what sources send:
    # neither the feed build nor the digest may stop at them.
    config = make_config(tmp_path)
    bad = "x\x00\x01\ufffe\ud800y"
    articles = [
        make_article(
            0,
            title=bad,
            summary=f"<p>{bad}</p>",
            content=f"<p>{bad}</p>",
            url="https://e.com/" + bad,
            image_url="https://e.com/a" + bad + ".png",
            author=bad,
            tags=(bad,),
        ),
        make_article(1),
    ]
    write_feeds(articles, config.newsletter, config.feeds)
    for path in config.feeds.output_dir.rglob("*"):
        if path.name in FEED_FILES:
            assert check_file(path) == [], path
    rendered = DigestRenderer(config).render(articles, now=NOW)
    assert [a.id for a in rendered.articles] == [1, 2]
    rendered.html.encode()
    assert not _CONTROL_RE.search(rendered.subject + rendered.html)


# --- unstable ids --------------------------------------------------------------------------------


def test_rules_take_a_known_fingerprint_under_a_new_key_as_unchanged() -> None:
    from newsletter.rules import article_writes, content_hash, fingerprint
    from newsletter.types import ArticleData

    def data(key: str, url: str | None, title: str = "T") -> ArticleData:
        return ArticleData("s", key, title, url, None, NOW, NOW, "", "<p>x</p>")

    moved = data("guid-2", "https://e.com/a")
    edited = data("guid-3", "https://e.com/a", title="Edited")
    linkless = data("guid-4", None)
    known = {(moved.url or "", content_hash(moved)), ("", content_hash(linkless))}
    assert fingerprint(linkless) is None
    writes, unchanged = article_writes([moved, edited, linkless], {}, NOW, known)
    assert unchanged == 1
    assert [w.data.key for w in writes] == ["guid-3", "guid-4"]


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None  # the project's own SQLite file
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_an_id_that_changes_on_every_fetch_is_the_same_article(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime], storage_url: str | None
) -> None:
    fetches: list[Seen] = []

    def feed(seen: Seen) -> Reply:
        fetches.append(seen)
        guid = f"urn:random:{len(fetches)}"  # a new id on every request
        item = rss_item(1, site="fickle").replace("<guid>fickle-1</guid>", f"<guid>{guid}</guid>")
        return Reply(body=rss(item, rss_item(2, site="fickle")))

    url = server.route("/fickle.xml", feed)
    config = write_project(tmp_path, {"Fickle": url}, storage_url=storage_url)
    publisher = open_publisher(config, "ada@example.com")
    try:
        (first,) = publisher.gather()
        assert first.new == 2
        sent = publisher.send_digest()
        assert sent.created and sent.sent == 1
        clock[0] += timedelta(hours=1)
        (second,) = publisher.gather()
        assert len(fetches) == 2
        assert (second.new, second.updated, second.unchanged) == (0, 0, 2)
        assert publisher.storage.count_articles() == 2
        again = publisher.send_digest()
        # Nothing to send: no digest created, no message.
        assert again.digest_id is None and not again.created and again.sent == 0
        assert again.reason is not None
    finally:
        publisher.close()


def test_a_new_id_with_new_content_is_a_new_article(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    bodies = iter(
        [
            rss(rss_item(1, site="x")),
            rss(rss_item(1, site="x", title="Edited").replace("<guid>x-1", "<guid>x-2")),
        ]
    )
    url = server.route("/x.xml", lambda seen: Reply(body=next(bodies)))
    publisher = open_publisher(write_project(tmp_path, {"X": url}))
    try:
        assert publisher.gather()[0].new == 1
        # Same link, other content, other id: nothing says it is the same article.
        assert publisher.gather()[0].new == 1
    finally:
        publisher.close()


# --- everything at once --------------------------------------------------------------------------


def test_one_gather_survives_every_hostile_source_beside_a_good_one(
    tmp_path: Path, server: LoopbackServer, clock: list[datetime]
) -> None:
    hostile = {
        "Good": server.route("/good.xml", Reply(body=rss(rss_item(1), rss_item(2)))),
        "Dates": server.route(
            "/dates.json",
            Reply(body=json_feed(json_item("dates", date_published="0001-01-01T00:00:00+14:00"))),
        ),
        "Surrogate": server.route(
            "/surrogate.json", Reply(body=json_feed(json_item("surrogate", title="\ud800")))
        ),
        "Controls": server.route(
            "/controls.json",
            Reply(body=json_feed(json_item("controls", title=f"Alarm {CONTROLS} bells"))),
        ),
        "Tags": server.route("/tags.xml", Reply(body=tags_feed(1000))),
        "Huge": server.route(
            "/huge.xml", Reply(body=rss(rss_item(1, site="huge", title="H" * 200_000)))
        ),
        "Markup": server.route(
            "/markup.xml", Reply(body=rss(rss_item(1, site="markup", title="[/bold] [red]x")))
        ),
        "Future": server.route("/future.xml", Reply(body=atom_9999())),
    }
    publisher = open_publisher(write_project(tmp_path, hostile), "ada@example.com")
    try:
        results = {r.source: r for r in publisher.gather()}
        assert sorted(results) == sorted(hostile)
        assert all(r.ok for r in results.values()), {n: r.error for n, r in results.items()}
        assert results["Good"].new == 2
        assert sum(r.new for r in results.values()) == 2 + 7
        found = warnings(publisher)
        expected = {
            "Dates": "item https://dates.example.com/post: published 0001-01-01T00:00:00+14:00 "
            "out of range, clamped to 1970-01-01",
            "Surrogate": "item https://surrogate.example.com/post: control characters or lone "
            "surrogates removed from title",
            "Controls": "item https://controls.example.com/post: control characters or lone "
            "surrogates removed from title",
            "Tags": "item https://tags.example.com/1: 1,000 tags, kept the first 50",
            "Huge": "item https://huge.example.com/1: title of 200,000 characters cut to 1,000",
            "Future": "item https://future.example.com/1: updated 9999-12-31T23:59:59+00:00 out "
            "of range, clamped to 2026-11-23",
        }
        for name, fragment in expected.items():
            assert fragment in (found[name] or ""), (name, found[name])
        assert found["Good"] is None and found["Markup"] is None
        stored = {a.source: a for a in publisher.storage.recent_articles(100)}
        assert stored["Markup"].title == "[/bold] [red]x"
        assert stored["Surrogate"].title == "\ufffd"
        assert stored["Future"].updated <= NOW + timedelta(days=1)
        assert len(stored["Huge"].title) <= 1000

        publisher.build_feeds()
        out = publisher.config.feeds.output_dir
        documents = [p for p in out.rglob("*") if p.name in FEED_FILES]
        assert len(documents) == 3 + 3 * 50
        for path in documents:
            assert check_file(path) == [], path
        assert b"9999" not in (out / "rss.xml").read_bytes()

        report = publisher.send_digest()
        assert report.created and report.sent == 1 and report.failed == 0
        assert report.digest_id is not None
        (msg,) = outbox_messages(publisher, report.digest_id)
        assert len(html_part(msg).encode()) <= GMAIL_CLIP
        assert not _CONTROL_RE.search(str(msg["Subject"]))
        # Every article but the one clamped to 1970, older than the digest's look-back.
        assert report.articles == 8
        assert "Post 1" in html_part(msg) and "[/bold] [red]x" in html_part(msg)
    finally:
        publisher.close()
