"""Web pages and sitemaps as sources, gathered for real: listing pages, sitemaps, article pages
and robots.txt served over loopback, a real SQLite database, the real publisher.

The servers count what they were asked: pages robots.txt disallows are never requested, known
articles are not fetched again, and one host sees one request at a time with the pause between.
"""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.exceptions import ConfigError
from newsletter.sources.sitemap import parse_sitemap
from newsletter.types import Article, GatherResult
from tests._http import LoopbackServer, Reply, Route, Seen, conditional
from tests.test_source_kinds import HEAD as KINDS_HEAD

HEAD = KINDS_HEAD + "\n[http]\nper_host_delay_seconds = {delay}\n"
HTML = "text/html; charset=utf-8"
XML = "application/xml"
# Sentences from a page's furniture: none may reach an article.
NAV = "Subscribe to the Harbour Times morning briefing for free today"
SIDEBAR = "Ten tricks the ferry operators do not want you to know about"
FOOTER = "Copyright Harbour Times Media Group, all rights reserved worldwide"
ROBOTS = b"User-agent: *\nDisallow: /private/\n"


@dataclass(frozen=True)
class Story:
    slug: str
    title: str
    author: str
    date: str  # ISO date of the page's dateline
    body: tuple[str, ...]
    path: str


def story(slug: str, title: str, author: str, date: str, topic: str, folder: str = "news") -> Story:
    body = tuple(
        f"{topic} sentence {i}: the harbour council met on the quay to weigh the plan in detail, "
        f"and residents queued for hours to speak about {topic} and what it means for the town."
        for i in range(1, 7)
    )
    return Story(slug, title, author, date, body, f"/{folder}/{slug}")


ALPHA = story("alpha", "Harbour bridge reopens after repairs", "Ada Quill", "2026-11-20", "bridge")
BETA = story("beta", "Ferry timetable changes in December", "Ben Marsh", "2026-11-21", "ferry")
GAMMA = story("gamma", "Members meeting minutes", "Cy Vault", "2026-11-22", "minutes", "private")
DELTA = story("delta", "Lighthouse gets a new lamp", "Dee Lamp", "2026-11-23", "lamp")


def article_page(s: Story) -> bytes:
    paragraphs = "\n".join(f"<p>{p}</p>" for p in s.body)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{s.title} | Harbour Times</title>
<meta name="author" content="{s.author}">
<meta property="article:published_time" content="{s.date}T08:30:00+00:00">
<meta property="og:image" content="/img/{s.slug}.jpg">
<script>track("{s.slug}")</script>
</head><body>
<header><nav><a href="/">Home</a> <a href="/about">About</a> <a href="/news/">News</a>
<p>{NAV}.</p></nav></header>
<main><article>
<h1>{s.title}</h1>
<p class="byline">By {s.author}, <time datetime="{s.date}">{s.date}</time></p>
<figure><img src="/img/{s.slug}.jpg" alt="Photo"><figcaption>The {s.slug} scene at dawn.
</figcaption></figure>
{paragraphs}
<p>Read the <a href="javascript:alert(1)" onclick="steal()">council notes</a>.</p>
</article></main>
<aside class="sidebar"><h3>Most read</h3><ul><li><a href="/most-read">{SIDEBAR}.</a></li></ul>
</aside>
<footer><p>{FOOTER}.</p></footer>
</body></html>""".encode()


def listing_page(*stories: Story, extra: str = "") -> bytes:
    items = "\n".join(
        f'<li class="story"><h2><a href="{s.path}?utm_source=front#top">{s.title}</a></h2></li>'
        for s in stories
    )
    return f"""<!doctype html><html><head><title>News | Harbour Times</title></head><body>
<nav><a href="/">Home</a> <a href="/about">About</a> <a href="/news/">News</a>
<a href="/contact">Contact</a></nav>
<main><ul class="stories">{items}</ul>{extra}</main>
<aside><a href="/most-read">Most read</a></aside>
<footer><a href="/privacy">Privacy</a></footer>
</body></html>""".encode()


@dataclass
class Watch:
    """Wraps routes to measure, at the server, how many requests were in flight at once and
    when each began and ended."""

    hold: float = 0.03
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0
    most: int = 0
    spans: list[tuple[str, float, float]] = field(default_factory=list)

    def __call__(self, route: Route) -> Callable[[Seen], Reply]:
        def handler(seen: Seen) -> Reply:
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
                start = time.monotonic()
            # Held a little, so requests that overlap at all are seen overlapping.
            time.sleep(self.hold)
            reply = route(seen) if callable(route) else route
            with self.lock:
                self.active -= 1
                self.spans.append((seen.path, start, time.monotonic()))
            return reply

        return handler

    def gaps(self) -> list[float]:
        ordered = sorted(self.spans, key=lambda s: s[1])
        return [b[1] - a[2] for a, b in itertools.pairwise(ordered)]


def serve_site(server: LoopbackServer, watch: Watch | None = None) -> None:
    wrap = watch or (lambda route: route)
    server.route("/robots.txt", wrap(Reply(200, ROBOTS, {"Content-Type": "text/plain"})))
    for s in (ALPHA, BETA, GAMMA, DELTA):
        server.route(s.path, wrap(Reply(200, article_page(s), {"Content-Type": HTML})))


def gather(
    tmp_path: Path, sources: str, delay: float = 0.01, database: str | None = None
) -> dict[str, GatherResult]:
    path = tmp_path / "newsletter.toml"
    head = HEAD.format(delay=delay)
    if database is not None:
        head = head.replace('path = "n.db"', f'url = "{database}"')
    path.write_text(head + sources, encoding="utf-8")
    publisher = make_publisher(load_config(path))
    try:
        return {r.source: r for r in publisher.gather()}
    finally:
        publisher.close()


def stored(tmp_path: Path) -> dict[str, Article]:
    publisher = make_publisher(load_config(tmp_path / "newsletter.toml"))
    try:
        return {a.key: a for a in publisher.storage.recent_articles(100)}
    finally:
        publisher.close()


def paths(server: LoopbackServer) -> list[str]:
    return [r.path.partition("?")[0] for r in server.seen()]


def assert_clean_article(article: Article, s: Story) -> None:
    assert article.title == s.title
    assert article.author == s.author
    for sentence in s.body:
        assert sentence in article.content
    for furniture in (NAV, SIDEBAR, FOOTER, "Most read"):
        assert furniture not in article.content
    for hostile in ("<script", "track(", "onclick", "javascript:"):
        assert hostile not in article.content
    assert f"The {s.slug} scene at dawn." in article.content  # the figure's caption
    assert article.image_url is not None and article.image_url.endswith(f"/img/{s.slug}.jpg")


def page_source(url: str, extra: str) -> str:
    return f'\n[[sources]]\nname = "front"\nkind = "page"\nurl = "{url}"\n{extra}\n'


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_listing_page_gives_each_new_article_once(
    tmp_path: Path, server: LoopbackServer, engine: str, request: pytest.FixtureRequest
) -> None:
    # Which links are stored is asked from gather's worker threads: on both engines.
    database = request.getfixturevalue("postgres_url") if engine == "postgresql" else None
    serve_site(server)
    # The private link is among the stories; robots.txt keeps it out.
    listing = server.route("/news/", conditional(listing_page(ALPHA, GAMMA, BETA), HTML))
    sources = page_source(listing, 'link_selector = "ul.stories h2"')

    first = gather(tmp_path, sources, database=database)["front"]

    assert (first.ok, first.new) == (True, 2), first
    assert first.warning == f"item {server.url('/private/gamma')}: robots.txt disallows it"
    assert "/private/gamma" not in paths(server)
    articles = stored(tmp_path)
    # The key is the link without its fragment and tracking parameters.
    assert sorted(articles) == [server.url(ALPHA.path), server.url(BETA.path)]
    for s in (ALPHA, BETA):
        article = articles[server.url(s.path)]
        assert_clean_article(article, s)
        assert article.url == server.url(s.path)
        assert article.published == datetime.fromisoformat(f"{s.date}T08:30:00+00:00")

    again = gather(tmp_path, sources, database=database)["front"]
    assert again.not_modified, again
    assert server.seen("/news/")[-1].headers.get("if-none-match") == '"v1"'

    server.route("/news/", conditional(listing_page(DELTA, ALPHA, GAMMA, BETA), HTML, etag='"v2"'))
    third = gather(tmp_path, sources, database=database)["front"]
    assert (third.ok, third.new) == (True, 1), third
    assert_clean_article(stored(tmp_path)[server.url(DELTA.path)], DELTA)
    # Each article page was read once over the three runs; robots.txt once per run.
    seen = paths(server)
    assert [seen.count(s.path) for s in (ALPHA, BETA, DELTA)] == [1, 1, 1]
    assert seen.count("/robots.txt") == 3
    assert {r.headers["user-agent"] for r in server.seen()} == {
        load_config(tmp_path / "newsletter.toml").http.user_agent
    }


def test_a_link_pattern_chooses_the_article_links_and_max_links_caps_them(
    tmp_path: Path, server: LoopbackServer
) -> None:
    serve_site(server)
    listing = server.route(
        "/news/", Reply(200, listing_page(DELTA, BETA, ALPHA), {"Content-Type": HTML})
    )
    sources = page_source(listing, 'link_pattern = "/news/[a-z]+$"\nmax_links = 2')

    result = gather(tmp_path, sources)["front"]

    assert (result.ok, result.new, result.warning) == (True, 2, None), result
    # The first two links in page order; the nav's /news/ (the listing itself) is no article.
    assert sorted(stored(tmp_path)) == [server.url(BETA.path), server.url(DELTA.path)]
    assert ALPHA.path not in paths(server)
    assert not {"/about", "/contact", "/most-read", "/privacy"} & set(paths(server))

    # The next run fetches the one left.
    assert gather(tmp_path, sources)["front"].new == 1
    assert paths(server).count(ALPHA.path) == 1


def urlset(entries: list[str]) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
        ' xmlns:news="http://www.google.com/schemas/sitemap-news/0.9">\n'
        + "\n".join(entries)
        + "\n</urlset>\n"
    ).encode()


def news_url(loc: str, published: str, title: str) -> str:
    return (
        f"<url><loc>{loc}</loc><news:news><news:publication>"
        "<news:name>Harbour Times</news:name><news:language>en</news:language>"
        f"</news:publication><news:publication_date>{published}</news:publication_date>"
        f"<news:title>{title}</news:title></news:news></url>"
    )


def test_a_sitemap_index_gives_the_newest_pages_with_their_dates(
    tmp_path: Path, server: LoopbackServer
) -> None:
    serve_site(server)
    news = urlset(
        [
            news_url(server.url(BETA.path), "2026-11-21T09:15:00+01:00", BETA.title),
            news_url(server.url("/private/gamma"), "2026-11-22T10:00:00Z", GAMMA.title),
        ]
    )
    archive = urlset(
        [
            f"<url><loc>{server.url(ALPHA.path)}</loc><lastmod>2026-11-20</lastmod></url>",
            f"<url><loc>{server.url(DELTA.path)}</loc><lastmod>2026-11-23T06:00:00Z</lastmod></url>",
            f"<url><loc>{server.url('/news/old')}</loc><lastmod>2019-01-01</lastmod></url>",
        ]
    )
    server.route("/sitemap-news.xml", Reply(200, news, {"Content-Type": XML}))
    server.route(
        "/sitemap-2026.xml.gz",
        Reply(200, gzip.compress(archive), {"Content-Type": "application/gzip"}),
    )
    index = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"<sitemap><loc>{server.url('/sitemap-news.xml')}</loc>"
        "<lastmod>2026-11-22</lastmod></sitemap>"
        f"<sitemap><loc>{server.url('/sitemap-2026.xml.gz')}</loc></sitemap>"
        "</sitemapindex>"
    ).encode()
    url = server.route("/sitemap.xml", conditional(index, XML))
    sources = f'\n[[sources]]\nname = "map"\nkind = "sitemap"\nurl = "{url}"\nmax_links = 3\n'

    result = gather(tmp_path, sources)["map"]

    assert (result.ok, result.new) == (True, 3), result
    assert result.warning == f"item {server.url('/private/gamma')}: robots.txt disallows it"
    articles = stored(tmp_path)
    # Newest first: delta (23rd), beta (21st), alpha (20th); gamma (22nd) is disallowed and
    # does not count; the 2019 page is past max_links and never requested.
    assert sorted(articles) == sorted(server.url(s.path) for s in (ALPHA, BETA, DELTA))
    assert "/news/old" not in paths(server) and "/private/gamma" not in paths(server)
    beta = articles[server.url(BETA.path)]
    assert_clean_article(beta, BETA)
    # A news sitemap's publication date is the article's date, to the second.
    assert beta.published == datetime(2026, 11, 21, 8, 15, tzinfo=UTC)
    assert articles[server.url(ALPHA.path)].published == datetime.fromisoformat(
        f"{ALPHA.date}T08:30:00+00:00"
    )

    again = gather(tmp_path, sources)["map"]
    assert again.not_modified, again
    assert server.seen("/sitemap.xml")[-1].headers.get("if-none-match") == '"v1"'


def test_one_request_at_a_time_per_host_and_the_pause_between(
    tmp_path: Path, server: LoopbackServer
) -> None:
    delay = 0.2
    watch = Watch()
    serve_site(server, watch)
    listing = server.route(
        "/news/", watch(Reply(200, listing_page(ALPHA, BETA), {"Content-Type": HTML}))
    )
    sitemap = server.route(
        "/sitemap.xml",
        watch(
            Reply(
                200,
                urlset([f"<url><loc>{server.url(DELTA.path)}</loc></url>"]),
                {"Content-Type": XML},
            )
        ),
    )
    sources = page_source(listing, 'link_selector = ".stories a"') + (
        f'\n[[sources]]\nname = "map"\nkind = "sitemap"\nurl = "{sitemap}"\n'
    )

    results = gather(tmp_path, sources, delay=delay)

    assert [(r.ok, r.new) for r in results.values()] == [(True, 2), (True, 1)], results
    # Two sources gathered in parallel threads, one host: robots.txt read once for both, then
    # never two requests at once, and at least the pause between one's end and the next start.
    assert paths(server).count("/robots.txt") == 1
    assert len(watch.spans) == 6
    assert watch.most == 1
    assert min(watch.gaps()) >= delay * 0.95, watch.gaps()


def test_robots_crawl_delay_lengthens_the_pause(tmp_path: Path, server: LoopbackServer) -> None:
    watch = Watch()
    serve_site(server, watch)
    server.route("/robots.txt", watch(Reply(200, b"User-agent: *\nCrawl-delay: 1\n")))
    listing = server.route("/news/", watch(Reply(200, listing_page(ALPHA), {"Content-Type": HTML})))

    result = gather(tmp_path, page_source(listing, 'link_pattern = "/news/alpha"'))["front"]

    assert (result.ok, result.new) == (True, 1), result
    # The config's pause is 0.01 s; the site asks for a second.
    assert min(watch.gaps()) >= 0.95, watch.gaps()


def test_a_broken_listing_fails_only_its_source(tmp_path: Path, server: LoopbackServer) -> None:
    serve_site(server)
    broken = server.route("/broken/", Reply(500, b"oops", {"Content-Type": "text/plain"}))
    bomb = server.route(
        "/bomb.xml",
        Reply(
            200,
            b'<?xml version="1.0"?><!DOCTYPE u [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><urlset>&b;</urlset>',
            {"Content-Type": XML},
        ),
    )
    not_a_sitemap = server.route(
        "/rss.xml", Reply(200, b"<rss><channel/></rss>", {"Content-Type": XML})
    )
    good = server.route("/news/", Reply(200, listing_page(ALPHA), {"Content-Type": HTML}))
    sources = (
        page_source(broken, 'link_selector = "a"')
        + f'\n[[sources]]\nname = "bomb"\nkind = "sitemap"\nurl = "{bomb}"\n'
        + f'\n[[sources]]\nname = "rss"\nkind = "sitemap"\nurl = "{not_a_sitemap}"\n'
        + f'\n[[sources]]\nname = "good"\nkind = "page"\nurl = "{good}"\n'
        + 'link_selector = ".stories a"\n'
    )

    results = gather(tmp_path, sources)

    assert (
        str(results["front"].error) == f"source 'front' ({broken}): HTTP 500 Internal Server Error"
    )
    assert results["bomb"].error is not None
    assert "refused XML (DTDForbidden): a sitemap needs no DTD" in str(results["bomb"].error)
    assert (
        str(results["rss"].error)
        == f"source 'rss' ({not_a_sitemap}): not a sitemap (the root element is <rss>)"
    )
    assert (results["good"].ok, results["good"].new) == (True, 1)


def test_an_article_page_that_fails_is_a_warning_and_tried_again(
    tmp_path: Path, server: LoopbackServer
) -> None:
    serve_site(server)
    server.route(BETA.path, Reply(503, b"busy", {"Content-Type": "text/plain"}))
    server.route("/news/pdf", Reply(200, b"%PDF-1.7", {"Content-Type": "application/pdf"}))
    listing = server.route(
        "/news/",
        Reply(
            200,
            listing_page(ALPHA, BETA, extra='<a href="/news/pdf">PDF</a>'),
            {"Content-Type": HTML},
        ),
    )
    sources = page_source(listing, 'link_pattern = "/news/[a-z]+$"')

    first = gather(tmp_path, sources)["front"]

    assert (first.ok, first.new) == (True, 1), first
    assert first.warning == (
        f"item {server.url(BETA.path)}: HTTP 503 Service Unavailable; "
        f"item {server.url('/news/pdf')}: not an HTML page (application/pdf)"
    )
    server.route(BETA.path, Reply(200, article_page(BETA), {"Content-Type": HTML}))
    second = gather(tmp_path, sources)["front"]
    assert (second.ok, second.new) == (True, 1), second
    assert paths(server).count(ALPHA.path) == 1  # stored: never fetched again


def test_robots_txt_that_cannot_be_read_keeps_the_crawler_off_the_host(
    tmp_path: Path, server: LoopbackServer
) -> None:
    server.route("/robots.txt", Reply(503, b"down"))
    listing = server.route("/news/", Reply(200, listing_page(ALPHA), {"Content-Type": HTML}))

    result = gather(tmp_path, page_source(listing, 'link_selector = "a"'))["front"]

    assert str(result.error) == f"source 'front' ({listing}): robots.txt disallows it"
    assert paths(server) == ["/robots.txt"]


def test_missing_robots_txt_allows_everything(tmp_path: Path, server: LoopbackServer) -> None:
    server.route(ALPHA.path, Reply(200, article_page(ALPHA), {"Content-Type": HTML}))
    listing = server.route("/news/", Reply(200, listing_page(ALPHA), {"Content-Type": HTML}))

    result = gather(tmp_path, page_source(listing, 'link_selector = ".stories a"'))["front"]

    assert (result.ok, result.new) == (True, 1), result
    assert paths(server) == ["/robots.txt", "/news/", ALPHA.path]


@pytest.mark.parametrize(
    ("source", "key", "message"),
    [
        (
            'kind = "page"\nurl = "https://e.org/"',
            "link_selector",
            "a page source needs `link_selector` or `link_pattern` (or both)",
        ),
        (
            'kind = "page"\nurl = "https://e.org/"\nlink_pattern = "(news"',
            "link_pattern",
            "not a regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            'kind = "page"\nurl = "https://e.org/"\nlink_selector = "a[href"',
            "link_selector",
            "not a CSS selector we can use: Operator expected, got <EOF at 6>",
        ),
        (
            'kind = "sitemap"\npath = "sitemap.xml"',
            "path",
            "a sitemap source reads a web page: it needs `url`, not `path`",
        ),
        (
            'kind = "sitemap"\nurl = "ftp://e.org/s.xml"',
            "url",
            "a sitemap source needs an http(s) `url`, got 'ftp://e.org/s.xml'",
        ),
        (
            'kind = "sitemap"\nurl = "https://e.org/s.xml"\nmax_links = 0',
            "max_links",
            "must be at least 1, got 0",
        ),
        (
            'kind = "sitemap"\nurl = "https://e.org/s.xml"\nlink_selector = "a"',
            "link_selector",
            "unknown key (known: enabled, kind, link_pattern, max_bytes, max_links, max_sitemaps,"
            " name, timeout, url)",
        ),
    ],
)
def test_page_and_sitemap_keys_are_checked(
    tmp_path: Path, source: str, key: str, message: str
) -> None:
    path = tmp_path / "newsletter.toml"
    path.write_text(HEAD.format(delay=1) + f'\n[[sources]]\nname = "s"\n{source}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.message) == (f"sources[0].{key}", message)


def test_the_per_host_delay_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.toml"
    path.write_text(HEAD.format(delay=61))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.message) == (
        "http.per_host_delay_seconds",
        "must be at most 60, got 61",
    )
    path.write_text(HEAD.format(delay=0.5))
    assert load_config(path).http.per_host_delay_seconds == 0.5


def test_sitemap_dates_are_read_at_every_w3c_precision() -> None:
    body = urlset(
        [
            f"<url><loc>https://e.org/{i}</loc><lastmod>{value}</lastmod></url>"
            for i, value in enumerate(
                ["2026", "2026-11", "2026-11-20", "2026-11-20T10:05+01:00", "yesterday", ""]
            )
        ]
    )
    pages = parse_sitemap(body, "https://e.org/sitemap.xml", 1024 * 1024).pages
    assert [p.updated for p in pages] == [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2026, 11, 20, 9, 5, tzinfo=UTC),
        None,
        None,
    ]
    assert [p.url for p in pages] == [f"https://e.org/{i}" for i in range(6)]


def test_the_cli_gathers_pages_and_reports_their_health(
    tmp_path: Path, server: LoopbackServer
) -> None:
    serve_site(server)
    listing = server.route("/news/", Reply(200, listing_page(ALPHA, GAMMA), {"Content-Type": HTML}))
    broken = server.route("/sitemap.xml", Reply(200, b"<urlset><url>", {"Content-Type": XML}))
    path = tmp_path / "newsletter.toml"
    path.write_text(
        HEAD.format(delay=0.01)
        + page_source(listing, 'link_selector = ".stories"')
        + f'\n[[sources]]\nname = "map"\nkind = "sitemap"\nurl = "{broken}"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env.update(NEWSLETTER_SECRET="pages-test-secret", COLUMNS="250")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "newsletter", "--config", str(path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    gathered = cli("gather")
    status = cli("status")

    # One source failed: done, with exit code 3; the page source's article is stored.
    assert gathered.returncode == 3, gathered.stderr
    assert "gathered 2 sources: 1 new" in gathered.stdout
    assert status.returncode == 3, status.stderr  # a source is failing
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if line.startswith("│")}
    assert f"item {server.url(GAMMA.path)}: robots.txt disallows it" in rows["front"]
    assert "malformed XML at line 1, column 13" in rows["map"]
