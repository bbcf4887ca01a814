"""Issue 11's proof in one pass, over loopback: a news wire's summary-only RSS item whose page
is wrapped in navigation, a sidebar, a footer, a captioned figure and a dateline, and another
outlet's full Atom entry of the same story with inserted comments, a category and an author.

Gathered with ``full_text = "auto"``, the wire's item carries the page's article (exact title,
date and author; caption and lead image kept; no boilerplate sentence); the two versions are
then one story in the digest that is delivered and related in every published feed.
"""

from __future__ import annotations

import email
import email.policy
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from email.message import EmailMessage
from html import escape
from pathlib import Path

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests import feedcheck
from tests._grouping_set import FOLDER, paragraphs_html, write_two_feeds_project
from tests._http import LoopbackServer, Reply, conditional

ATOM = "{http://www.w3.org/2005/Atom}"
PAGE_TITLE = "Council approves the Riverside tram extension after a six-hour debate"
METRO_TITLE = "Tram extension to Millbrook gets the green light"
METRO_URL = "https://metro.example.com/2026/11/tram-extension"
# Sentences of the page around the article: none may reach a feed or the digest.
BOILERPLATE = (
    "Subscribe to our morning briefing",
    "Most read this week",
    "Weekend road closures across the county",
    "All rights reserved",
    "Join the conversation: 14 comments",
)


def _body(name: str) -> str:
    return (FOLDER / f"{name}.txt").read_text(encoding="utf-8").partition("\n\n")[2]


def _page(body: str) -> str:
    paragraphs = paragraphs_html(body)
    first, _, rest = paragraphs.partition("</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{PAGE_TITLE} | Northfield Gazette</title>
<meta property="og:title" content="{PAGE_TITLE}">
<meta name="author" content="Tomasz Wren">
<meta property="article:published_time" content="2026-11-21T17:45:00+01:00">
</head><body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/sport">Sport</a></li></ul></nav>
<p class="promo">{BOILERPLATE[0]} and never miss a story.</p></header>
<main><article>
<h1>{PAGE_TITLE}</h1>
<p class="dateline">NORTHFIELD, 21 November 2026, by Tomasz Wren</p>
{first}</p>
<figure><img src="https://gazette.example/img/millbrook-route.jpg" alt="Route map">
<figcaption>The planned route from Riverside to the Millbrook hospital campus.</figcaption>
</figure>
{rest}
</article>
<aside><h2>{BOILERPLATE[1]}</h2><ul><li><a href="/a">{BOILERPLATE[2]}</a></li>
<li><a href="/b">Library opening hours change in December</a></li></ul></aside>
<section class="comments"><h2>{BOILERPLATE[4]}</h2>
<p>Great news for the hospital staff who commute every day from the river side.</p></section>
</main>
<footer><p>{BOILERPLATE[3]}. Northfield Gazette, 2 Mill Lane.</p></footer>
</body></html>"""


def test_a_summary_and_a_republication_become_one_full_story(
    tmp_path: Path, fixed_clock: list[datetime]
) -> None:
    server = LoopbackServer()
    page = server.route(
        "/news/tram-extension",
        Reply(200, _page(_body("tram_council")).encode(), {"Content-Type": "text/html"}),
    )
    wire_rss = f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<title>Regional Wire</title><link>https://wire.example.net/</link>
<description>Short news from the region</description>
<item><title>Northfield tram to reach Millbrook hospital</title>
<link>{page}</link><guid>{page}</guid>
<pubDate>Sat, 21 Nov 2026 18:00:00 GMT</pubDate>
<description>{escape(paragraphs_html(_body("tram_summary").split(chr(10) * 2)[0]))}</description>
</item></channel></rss>"""
    metro_atom = f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title>Metro Daily</title><id>https://metro.example.com/</id>
<updated>2026-11-21T20:00:00Z</updated>
<entry><title>{METRO_TITLE}</title><id>tag:metro.example.com,2026:tram</id>
<link rel="alternate" href="{METRO_URL}"/>
<published>2026-11-21T16:00:00Z</published><updated>2026-11-21T20:00:00Z</updated>
<author><name>Priya Natarajan</name></author><category term="Transport"/>
<content type="html">{escape(paragraphs_html(_body("tram_republished")))}</content>
</entry></feed>"""
    wire = server.route("/wire.rss", conditional(wire_rss.encode(), "application/rss+xml"))
    metro = server.route("/metro.atom", conditional(metro_atom.encode(), "application/atom+xml"))
    config = tmp_path / "newsletter.toml"
    write_two_feeds_project(config, wire, metro, full_text="auto")
    with server, make_publisher(load_config(config)) as publisher:
        results = publisher.gather()
        assert sorted((r.source, r.ok, r.new, r.warning) for r in results) == [
            ("Metro Daily", True, 1, None),
            ("Regional Wire", True, 1, None),
        ]
        assert len(server.seen("/news/tram-extension")) == 1  # the summary's page, once
        (wire_item,) = [
            a for a in publisher.storage.recent_articles(10) if a.source == "Regional Wire"
        ]
        publisher.add_subscriber("ada@example.com", "Ada")
        report = publisher.send_digest()
        written = publisher.build_feeds()
        outbox = publisher.config.mail.provider("outbox").outbox_dir / str(report.digest_id)

    # The wire's item now carries the page's article: its author and date, the whole body,
    # the caption and lead image; nothing of the navigation, promo, sidebar, comments, footer.
    assert wire_item.title == "Northfield tram to reach Millbrook hospital"  # the feed's own
    assert wire_item.author == "Tomasz Wren"
    assert wire_item.published == datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
    assert "six-hour debate in which more than forty residents asked to speak" in wire_item.content
    assert "The planned route from Riverside to the Millbrook hospital campus." in (
        wire_item.content
    )
    assert wire_item.image_url == "https://gazette.example/img/millbrook-route.jpg"
    for sentence in BOILERPLATE:
        assert sentence not in wire_item.content, sentence

    # One story in the digest that was delivered: the fuller version leads, the other is
    # "Also in".
    assert report.sent == 1 and report.articles == 2
    (eml,) = outbox.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert html.count('class="also"') == 1 and "Also in:" in html
    for sentence in BOILERPLATE:
        assert sentence not in html, sentence

    # Every feed keeps both items, related to each other, and stays valid.
    out = tmp_path / "feeds-out"
    for path in (p for p in written if p.suffix in (".xml", ".json")):
        assert feedcheck.check_file(path) == [], path
    atom = ET.parse(out / "atom.xml").getroot()
    related = {
        e.findtext(f"{ATOM}title"): [
            link.get("href") for link in e.findall(f"{ATOM}link[@rel='related']")
        ]
        for e in atom.iter(f"{ATOM}entry")
    }
    assert related == {
        METRO_TITLE: [page],
        "Northfield tram to reach Millbrook hospital": [METRO_URL],
    }
    rss = (out / "rss.xml").read_text()
    assert "The planned route from Riverside to the Millbrook hospital campus." in rss
    for sentence in BOILERPLATE:
        assert sentence not in rss, sentence
