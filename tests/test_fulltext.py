"""Full text for summary-only feeds: extracting the article from its page, and fetching pages
for a feed's entries (auto/always/never, the page cache, failures, the per-host bound).

Pages are files under tests/data/fulltext served by a loopback server; nothing is mocked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from newsletter.sources.extract import extract_article

DATA = Path(__file__).parent / "data" / "fulltext"
STORY = (DATA / "story.html").read_text()
HOSTILE = (DATA / "hostile.html").read_text()
STORY_URL = "https://news.example/2026/03/tidal-barrier"
STORY_TITLE = "Harbour council approves new tidal barrier"
# One sentence from each part of the story page that is not the article.
BOILERPLATE = (
    "Subscribe today",  # header promo
    "Sport",  # navigation
    "Most read",  # sidebar
    "Ferry timetable",  # sidebar
    "about time someone did something",  # comment thread
    "All rights reserved",  # footer
    "Cookie settings",  # footer
)


# --- extract_article -----------------------------------------------------------------------------


def test_story_page_gives_title_date_author_and_the_body_only() -> None:
    article = extract_article(STORY, STORY_URL, title=STORY_TITLE)
    assert article is not None
    assert article.title == STORY_TITLE
    assert article.author == "Maria Okafor"
    assert article.published == datetime(2026, 3, 14, 9, 30, tzinfo=timezone(timedelta(hours=1)))
    assert article.published.astimezone(UTC) == datetime(2026, 3, 14, 8, 30, tzinfo=UTC)
    body = article.content_html
    assert body.startswith("<figure>")  # the repeated <h1> is gone; the figure leads
    assert "<h1>" not in body
    assert "PORTHAVEN, 14 March" in body  # the dateline opens the text
    assert "The fishing fleet will keep access" in body  # ... and the last paragraph is there
    for sentence in BOILERPLATE:
        assert sentence not in body, sentence
    assert article.text_length > 1000


def test_story_keeps_the_caption_and_the_lead_image() -> None:
    article = extract_article(STORY, STORY_URL)
    assert article is not None
    caption = "The harbour mouth at low tide, where the barrier gates will stand."
    assert article.image_caption == caption
    assert (
        '<figure><img src="https://news.example/img/barrier-site.jpg"'
        ' alt="The harbour mouth at low tide">'
        f"<figcaption>{caption}</figcaption></figure>"
    ) in article.content_html
    # og:image is the lead image; without it, the first figure's.
    assert article.image_url == "https://news.example/img/barrier-lead.jpg"
    without_og = STORY.replace('<meta property="og:image"', '<meta property="og:nothing"')
    fallback = extract_article(without_og, STORY_URL)
    assert fallback is not None
    assert fallback.image_url == "https://news.example/img/barrier-site.jpg"


def test_tracking_parameters_are_stripped_from_links() -> None:
    article = extract_article(STORY, STORY_URL)
    assert article is not None
    assert 'href="https://news.example/docs/barrier-plan.pdf?id=7"' in article.content_html
    assert "utm_" not in article.content_html


def test_hostile_page_is_cleaned() -> None:
    url = "https://gazette.example/news/reservoirs"
    article = extract_article(HOSTILE, url)
    assert article is not None
    assert article.title == "Reservoir levels recover after the wet winter"
    body = article.content_html
    assert "ninety-one per cent" in body
    assert "hosepipe ban" in body
    for bad in (
        "<script",
        "alert",
        "javascript:",
        "onclick",
        "onerror",
        "onload",
        "<iframe",
        "evil.example",
        "<style",
        "document.cookie",
        "fbclid",
        "utm_source",
    ):
        assert bad not in body, bad
    assert 'href="https://water.example/levels?page=2"' in body
    assert "Read the full report" in body  # the link's text stays, its javascript: target goes
    assert "About this site" not in body
    assert "Copyright 2026" not in body


def test_a_page_without_an_article_gives_none() -> None:
    assert extract_article((DATA / "no-article.html").read_text(), "https://x.example/") is None
    assert extract_article("", "https://x.example/") is None
    assert extract_article("\x00\x01 not html", "https://x.example/") is None
