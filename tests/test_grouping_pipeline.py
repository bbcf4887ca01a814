"""One story from two feeds served over loopback, end to end: gathered, shown once in the
digest (as rendered, as delivered, in ``newsletter digest`` and in the preview) and related
in every published feed, which stays valid."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from datetime import datetime
from email.message import EmailMessage
from html import escape
from pathlib import Path

import feedparser
import pytest

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests import feedcheck
from tests._browser import preview_server
from tests._grouping_set import FOLDER, paragraphs_html, write_two_feeds_project
from tests._http import LoopbackServer, conditional

ATOM = "{http://www.w3.org/2005/Atom}"
WIRE_URL = "https://wire.example.net/northfield-tram"
METRO_URL = "https://metro.example.com/2026/11/tram-extension"
OTHER_URL = "https://wire.example.net/eastport-delay"
METRO_TITLE = "Tram extension to Millbrook gets the green light"
WIRE_TITLE = "Northfield tram to reach Millbrook hospital"


def _body(name: str) -> str:
    return (FOLDER / f"{name}.txt").read_text(encoding="utf-8").partition("\n\n")[2]


def _first_paragraphs(name: str, n: int) -> str:
    return "\n\n".join(_body(name).split("\n\n")[:n])


# A news wire's RSS: summaries only, the first paragraph or two of each story.
WIRE_RSS = f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<title>Regional Wire</title><link>https://wire.example.net/</link>
<description>Short news from the region</description>
<item>
<title>{WIRE_TITLE}</title>
<link>{WIRE_URL}</link>
<guid>{WIRE_URL}</guid>
<pubDate>Sat, 21 Nov 2026 18:00:00 GMT</pubDate>
<description>{escape(paragraphs_html(_body("tram_summary")))}</description>
</item>
<item>
<title>Eastport tram faces a year's delay</title>
<link>{OTHER_URL}</link>
<guid>{OTHER_URL}</guid>
<pubDate>Sat, 21 Nov 2026 17:00:00 GMT</pubDate>
<description>{escape(paragraphs_html(_first_paragraphs("tram_other_city", 2)))}</description>
</item>
</channel></rss>
"""

# Another outlet's Atom: the same story in full, with its own comments, a category, an author.
METRO_ATOM = f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title>Metro Daily</title><id>https://metro.example.com/</id>
<updated>2026-11-21T20:00:00Z</updated>
<link rel="alternate" href="https://metro.example.com/"/>
<entry>
<title>{METRO_TITLE}</title>
<id>tag:metro.example.com,2026:tram-extension</id>
<link rel="alternate" href="{METRO_URL}"/>
<published>2026-11-21T16:00:00Z</published>
<updated>2026-11-21T20:00:00Z</updated>
<author><name>Priya Natarajan</name></author>
<category term="Transport"/>
<content type="html">{escape(paragraphs_html(_body("tram_republished")))}</content>
</entry>
</feed>
"""


@pytest.fixture
def project(tmp_path: Path, fixed_clock: list[datetime]) -> Path:
    server = LoopbackServer()
    wire = server.route("/wire.rss", conditional(WIRE_RSS.encode(), "application/rss+xml"))
    metro = server.route("/metro.atom", conditional(METRO_ATOM.encode(), "application/atom+xml"))
    config = tmp_path / "newsletter.toml"
    write_two_feeds_project(config, wire, metro)
    with server, make_publisher(load_config(config)) as publisher:
        results = publisher.gather()
        assert sorted((r.source, r.ok, r.new) for r in results) == [
            ("Metro Daily", True, 1),
            ("Regional Wire", True, 2),
        ]
    return config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["NEWSLETTER_SECRET"] = "grouping-test-secret"
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_digest_command_and_preview_say_what_was_grouped(project: Path) -> None:
    shown = _cli("--config", str(project), "digest")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "3 articles in 2 stories (2 sources grouped)" in lines
    lead = lines.index(f"  - {METRO_TITLE} (Metro Daily)")
    assert lines[lead + 1] == "      2 sources grouped, also in: Regional Wire"
    assert WIRE_TITLE not in shown.stdout
    with preview_server(project) as server, urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
    assert '<span id="grouped">2 sources grouped</span>' in page
    assert "3 in 2 stories" in page


def test_the_story_is_sent_once_and_related_in_every_feed(project: Path) -> None:
    with make_publisher(load_config(project)) as publisher:
        publisher.add_subscriber("ada@example.com", "Ada")
        report = publisher.send_digest()
        assert report.sent == 1 and report.articles == 3
        outbox = publisher.config.mail.provider("outbox").outbox_dir / str(report.digest_id)
        written = publisher.build_feeds()
    (eml,) = outbox.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    assert html_part is not None and text_part is not None
    html, text = html_part.get_content(), text_part.get_content()
    # The full version leads; the wire's summary is only a link under it.
    assert f">{METRO_TITLE}</a>" in html and WIRE_TITLE not in html
    assert html.count("Also in:") == 1
    assert f'<a href="{WIRE_URL}"' in html and ">Regional Wire</a>" in html
    assert "Eastport tram faces a year's delay" in html
    assert "Also in: Regional Wire [" in text and WIRE_URL in text

    out = project.parent / "feeds-out"
    feeds = [p for p in written if p.suffix in (".xml", ".json")]
    assert {p.name for p in feeds} >= {"rss.xml", "atom.xml", "feed.json"}
    for path in feeds:
        assert feedcheck.check_file(path) == [], path
    atom = ET.parse(out / "atom.xml").getroot()
    related = {
        e.findtext(f"{ATOM}title"): [
            link.get("href") for link in e.findall(f"{ATOM}link[@rel='related']")
        ]
        for e in atom.iter(f"{ATOM}entry")
    }
    assert related == {
        METRO_TITLE: [WIRE_URL],
        WIRE_TITLE: [METRO_URL],
        "Eastport tram faces a year's delay": [],
    }
    rss = feedparser.parse((out / "rss.xml").read_bytes())
    assert not rss.bozo
    rss_related = {
        e.title: [link.href for link in e.links if link.rel == "related"] for e in rss.entries
    }
    assert rss_related == related
