"""The digest renderer: templates, the one premailer pass, placeholders, subject and text part,
the size budget, and the messages a rendered digest becomes (headers, parts, links)."""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import html5lib
import pytest

from newsletter.config import Config, load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import RenderError
from newsletter.mail.outbox import OutboxBackend
from newsletter.personalize import Template, placeholder
from newsletter.render import archive
from newsletter.render.digest import HTML_MAX_BYTES, DigestRenderer, RenderedDigest, inline_css
from newsletter.text import html_to_text, shorten, wrap_text
from newsletter.types import Article, MessageContent, Recipient
from tests._factories import ListLedger, make_article, make_config

NOW = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # already 2 March in Berlin


class Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def parse_strict(html: str) -> None:
    """Parse ``html`` as a browser would, failing on any HTML parse error."""
    html5lib.HTMLParser(strict=True).parse(html)


def urls_of(html: str) -> list[str]:
    return [a[k] for _, a in Tags(html).tags for k in ("href", "src") if k in a]


def style_block(html: str) -> str:
    match = re.search(r"<style[^>]*>(.*?)</style>", html, re.DOTALL)
    assert match, "no <style> block"
    return match.group(1)


def articles() -> list[Article]:
    return [
        make_article(0, summary='<p>Read <a href="/docs/intro">the intro</a> &amp; more.</p>'),
        make_article(1, source="Tiny Links", tags=("web",), author=None),
        make_article(2, tags=(), image_url="img/chart.png"),
    ]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


ARCHIVE_URL = "https://news.example.org/archive/2026-03-01-0123456789abcdef.html"


@pytest.fixture
def rendered(config: Config) -> RenderedDigest:
    return DigestRenderer(config).render(articles(), now=NOW, archive_url=ARCHIVE_URL)


# --- HTML ------------------------------------------------------------------------------------


def test_css_is_inlined_and_urls_are_absolute(rendered: RenderedDigest) -> None:
    tags = Tags(rendered.html).tags
    assert not [t for t, a in tags if t == "link"]  # no stylesheet, nothing to fetch
    styled = {t for t, a in tags if "style" in a}
    assert {"body", "table", "td", "a", "p", "h1", "h3", "img"} <= styled
    td = next(a for t, a in tags if t == "td" and "cell" in a.get("class", "").split())
    assert "padding:24px 32px" in td["style"]
    urls = urls_of(rendered.html)
    assert "https://news.example.org/img/chart.png" in urls  # a relative image made absolute
    assert ARCHIVE_URL in urls
    for url in urls:
        if url.startswith("nlvar:"):
            continue
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.netloc, url


def test_media_queries_keep_important_in_a_style_block(rendered: RenderedDigest) -> None:
    # premailer's default strip_important=True would drop these and break the mobile and
    # dark layouts: inlined styles beat any media query rule that is not !important.
    css = style_block(rendered.html)
    mobile = css[css.index("@media only screen and (max-width") :]
    assert re.search(r"\.container\s*{\s*width:\s*100%\s*!important", mobile)
    dark = css[css.index("@media (prefers-color-scheme: dark)") :]
    assert re.search(r"background-color:\s*#111214\s*!important", dark)
    inline_styles = [a["style"] for _, a in Tags(rendered.html).tags if "style" in a]
    assert not [s for s in inline_styles if "!important" in s]


def test_placeholders_survive_inlining_and_are_filled_escaped(rendered: RenderedDigest) -> None:
    html = rendered.html
    assert 'href="nlvar:unsubscribe_url"' in html
    assert "Hi nlvar:first_name," in html
    filled = Template(html, is_html=True).fill(
        {
            "first_name": "<b>&",
            "email": "x@example.com",
            "name": "",
            "unsubscribe_url": "https://news.example.org/unsubscribe/t?a=1&b=2",
        }
    )
    assert "nlvar:" not in filled
    assert "Hi &lt;b&gt;&amp;," in filled
    assert 'href="https://news.example.org/unsubscribe/t?a=1&amp;b=2"' in filled


def test_urljoin_leaves_placeholders_alone() -> None:
    # Why placeholders look like URLs with their own scheme: premailer joins every href with
    # the base URL, and urljoin keeps a URL of another scheme as it is.
    for name in ("unsubscribe_url", "email", "first_name"):
        assert urljoin("https://news.example.org/", placeholder(name)) == placeholder(name)


def test_html_has_preheader_header_greeting_sections_and_footer(
    rendered: RenderedDigest,
) -> None:
    html = rendered.html
    assert f">{escape(rendered.preheader, quote=False)}" in html
    assert "The Test Weekly" in html
    assert "2 March 2026" in html  # `now` in the newsletter's time zone (Europe/Berlin)
    assert "Field Notes" in html and "Tiny Links" in html
    assert "Test Weekly, 42 Sample Road, 10115 Berlin" in html
    # a summary is plain text in the digest: entities decoded once, then escaped once
    assert '<p class="summary" style="margin:8px 0 0">Read the intro &amp; more.</p>' in html
    assert html.index("Post number 0") < html.index("Post number 2") < html.index("Post number 1")
    parse_strict(html)


def test_summaries_are_plain_text_cut_at_a_word_boundary(config: Config) -> None:
    words = " ".join(f"word{i}" for i in range(200))
    summary = f"<table><tr><td>{words}</td></tr></table><img src='huge.png' width='2000'>"
    html = DigestRenderer(config).render([make_article(0, summary=summary)], now=NOW).html
    found = re.search(r'<p class="summary"[^>]*>([^<]*)</p>', html)
    assert found is not None
    text = found.group(1)
    assert len(text) <= 300 and text.endswith("…")
    assert words.startswith(text[:-1]) and words[len(text) - 1] == " "  # whole words only
    assert "huge.png" not in html and "<table><tr><td>word0" not in html


def test_a_lead_image_has_a_width_and_alt_text(config: Config) -> None:
    items = [
        make_article(0, image_url="https://cdn.example.com/lead.jpg", title="Fish & chips"),
        make_article(1),
    ]
    html = DigestRenderer(config).render(items, now=NOW).html
    images = [a for t, a in Tags(html).tags if t == "img"]
    assert len(images) == 1  # the article without an image shows none
    image = images[0]
    assert image["src"] == "https://cdn.example.com/lead.jpg"
    assert image["width"] == "536" and image["alt"] == "Fish & chips"
    assert "height" not in image  # the ratio is unknown; CSS keeps it (height: auto)
    assert "max-width:536px" in image["style"] and "width:100%" in image["style"]


def test_the_footer_says_why_where_to_read_it_and_how_to_leave(
    config: Config, rendered: RenderedDigest
) -> None:
    footer = rendered.html[rendered.html.index('class="cell footer"') :]
    assert "You are receiving this because nlvar:email subscribed to" in footer
    assert f'<a href="{ARCHIVE_URL}"' in footer
    assert "View this issue in your browser" in footer
    assert '<a href="nlvar:unsubscribe_url"' in footer
    assert "Test Weekly, 42 Sample Road, 10115 Berlin" in footer
    without = DigestRenderer(config).render(articles(), now=NOW)
    assert "View this issue in your browser" not in without.html
    assert "on the web" not in without.text


def test_articles_beyond_max_items_are_a_more_on_the_web_link(config: Config) -> None:
    rendered = DigestRenderer(config).render(articles(), now=NOW, more=4)
    assert rendered.more == 4
    more = re.search(r'<p class="more"[^>]*><a href="([^"]+)"[^>]*>([^<]+)</a>', rendered.html)
    assert more is not None
    assert more.group(1) == "https://news.example.org/"
    assert more.group(2) == "4 more on the web →"
    lines = rendered.text.splitlines()
    line = next(line for line in lines if "more on the web" in line)
    number = re.fullmatch(r"4 more on the web: \[(\d+)\]", line)
    assert number is not None
    assert f"[{number.group(1)}] https://news.example.org/" in lines


def long_article(n: int) -> Article:
    slug = "-".join(["a-rather-long-slug-for-a-link"] * 6)
    return make_article(
        n,
        title=f"Article {n}: " + "Überlänge und Ähnliches, ein sehr langer Titel " * 3,
        url=f"https://example.com/{slug}/{n}?utm=none&page={n}",
        summary="<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing. " * 100 + "</p>",
        image_url=f"https://cdn.example.com/{slug}/{n}.jpg",
        author="Ada Lovelace-Byron, Countess of Lovelace, and friends",
    )


def test_fifty_long_articles_fit_under_the_gmail_clip_limit(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    items = [long_article(n) for n in range(50)]
    renderer = DigestRenderer(config)
    with caplog.at_level(logging.WARNING, logger="newsletter.render.digest"):
        rendered = renderer.render(items, now=NOW, more=7, archive_url=ARCHIVE_URL)
    html = rendered.html
    assert rendered.size <= HTML_MAX_BYTES < 102 * 1024
    shown = len(rendered.articles)
    assert 10 < shown < 50  # these articles do not all fit; the first ones do
    assert list(rendered.articles) == items[:shown]
    left_out = 50 - shown
    assert rendered.more == 7 + left_out
    assert f"{7 + left_out} more on the web →" in html
    assert f"{7 + left_out} more on the web: [" in rendered.text
    assert [r.getMessage() for r in caplog.records if "left the last" in r.getMessage()] == [
        f"the digest HTML was over 100 KB, where Gmail clips a message: left the last "
        f'{left_out} of 50 articles out (counted in the "{7 + left_out} more on the web" link)'
    ]
    # No more was left out than needed: one article more would not have fitted.
    bigger = renderer.render(items[: shown + 1], now=NOW, more=7, archive_url=ARCHIVE_URL)
    assert len(bigger.articles) == shown
    # The text part shows the same articles, and the footer survived in both.
    assert rendered.text.count("\n* Article ") == shown
    assert "nlvar:unsubscribe_url" in html and "nlvar:unsubscribe_url" in rendered.text
    # What every digest must be: inlined, absolute, parseable.
    tags = Tags(html).tags
    assert not [t for t, _ in tags if t == "link"]
    assert all("style" in a for t, a in tags if t in ("h3", "p", "img"))
    assert all(u.startswith("nlvar:") or urlsplit(u).scheme == "https" for u in urls_of(html))
    parse_strict(html)


def test_titles_are_escaped_in_html(config: Config) -> None:
    item = make_article(0, title="<script>alert(1)</script> & co")
    html = DigestRenderer(config).render([item], now=NOW).html
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_external_stylesheets_are_refused(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "digest.html").write_text(
        '<html><head><link rel="stylesheet" href="style.css"></head>'
        "<body><p>{{ lead.title }}</p></body></html>"
    )
    config = make_config(tmp_path, top='templates = "templates"\n')
    with pytest.raises(RenderError, match="external stylesheets") as info:
        DigestRenderer(config).render(articles(), now=NOW)
    assert info.value.template == "digest.html"


def test_inline_css_wraps_premailer_errors() -> None:
    with pytest.raises(RenderError) as info:
        inline_css("   ", base_url="https://news.example.org/")
    assert info.value.template == "digest.html"
    # premailer itself refuses a base URL without a scheme with a bare ValueError
    with pytest.raises(RenderError, match="cannot inline") as info:
        inline_css("<html><body><a href='x'>x</a></body></html>", base_url="example.org")
    assert isinstance(info.value.__cause__, ValueError)


# --- text ------------------------------------------------------------------------------------


def test_text_is_wrapped_at_72_columns_with_numbered_links(config: Config) -> None:
    long_summary = "<p>" + " ".join(["wrapping"] * 25) + " &amp; <b>bold</b> words.</p>"
    items = [*articles(), make_article(3, summary=long_summary)]
    text = DigestRenderer(config).render(items, now=NOW).text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72
    assert "<" not in text and "&amp;" not in text  # tags dropped, entities decoded
    assert "wrapping & bold words." in " ".join(text.split())
    assert "* Post number 0 [1]" in lines
    links = lines[lines.index("Links:") + 1 :]
    assert links[0] == "[1] https://example.com/posts/0"
    numbers = [int(line.split("]")[0][1:]) for line in links]
    assert numbers == list(range(1, len(links) + 1))
    assert f"[{len(links)}] nlvar:unsubscribe_url" in links
    assert "Hi nlvar:first_name," in lines


def test_the_text_part_stands_alone(config: Config) -> None:
    items = [*articles(), long_article(3)]
    rendered = DigestRenderer(config).render(items, now=NOW, more=2, archive_url=ARCHIVE_URL)
    text = rendered.text
    body, _, listing = text.partition("\nLinks:\n")
    links = dict(re.findall(r"^\[(\d+)\] (\S+)$", listing, re.MULTILINE))
    assert len(links) == len(listing.strip().splitlines())
    # Every line of prose fits in 72 columns; only a URL longer than that has its own line.
    for line in text.splitlines():
        assert len(line) <= 72 or re.fullmatch(r"\[\d+\] \S+", line), line
    # Everything a reader needs is there, every link by number: articles, the archive copy,
    # the site, unsubscribing, and the postal address.
    for article in items:
        assert f"* {' '.join(article.title.split()[:3])}" in " ".join(body.split())
        assert article.url in links.values()
    for url in (ARCHIVE_URL, "https://news.example.org/", "nlvar:unsubscribe_url"):
        assert url in links.values()
    refs = {int(n) for n in re.findall(r"\[(\d+)\]", body)}
    assert refs == {int(n) for n in links}
    assert "Test Weekly, 42 Sample Road, 10115 Berlin" in body
    assert "<" not in body and "&amp;" not in body and "nlvar:first_name" in body


def test_text_part_placeholders_fill_without_escaping(rendered: RenderedDigest) -> None:
    filled = Template(rendered.text, is_html=False).fill(
        {"first_name": "<b>&", "email": "x@example.com", "name": "", "unsubscribe_url": "u"}
    )
    assert "Hi <b>&," in filled


def test_wrap_text_keeps_indents_and_never_splits_words() -> None:
    url = "https://example.com/" + "a" * 80
    text = "* " + "word " * 20 + "\n  " + "indented " * 12 + "\n" + url
    wrapped = wrap_text(text, 30).splitlines()
    assert all(len(line) <= 30 for line in wrapped if line != url)
    assert url in wrapped
    bullet = [line for line in wrapped if "word" in line]
    assert bullet[0].startswith("* word") and all(b.startswith("  word") for b in bullet[1:])
    assert all(line.startswith("  indented") for line in wrapped if "indented" in line)


def test_html_to_text() -> None:
    assert html_to_text("<p>One&nbsp;<b>two</b></p><p>three<br>four</p>") == "One two three four"
    assert html_to_text("<p>in<b>line</b></p>") == "inline"
    assert html_to_text("<style>p { x: y }</style><script>x()</script>Fish &amp; chips") == (
        "Fish & chips"
    )
    assert html_to_text("") == ""


# --- subject and preheader ------------------------------------------------------------------


def test_subject_is_one_line_of_at_most_78_characters(config: Config) -> None:
    title = "Über die Größe\nvon Überschriften: " + "äußerst lange Wörter " * 8
    subject = DigestRenderer(config).render([make_article(0, title=title)], now=NOW).subject
    assert len(subject) <= 78
    assert "\n" not in subject and "\r" not in subject
    assert subject.endswith("…")
    full = " ".join(f"The Test Weekly: {title}".split())
    stem = subject[:-1]
    assert full.startswith(stem) and full[len(stem)] == " "  # cut at a word boundary


def test_a_long_lead_title_is_shortened_so_the_count_stays_visible(config: Config) -> None:
    title = "Ein außergewöhnlich langer Titel über Größen, Maße und Gewichte im Alltag"
    items = [make_article(0, title=title), *[make_article(n) for n in range(1, 12)]]
    subject = DigestRenderer(config).render(items, now=NOW).subject
    assert len(subject) <= 78
    assert subject.startswith("The Test Weekly: Ein außergewöhnlich langer Titel")
    assert subject.endswith("… (+11 more)")  # the count is whole; the title gave way
    stem = subject.removeprefix("The Test Weekly: ").removesuffix("… (+11 more)")
    assert title.startswith(stem) and not title[len(stem)].isalnum()  # cut between words


def test_a_subject_that_cannot_shrink_by_its_title_is_cut_at_the_end(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, f'[digest]\nsubject = "{"Sehr lange Betreffzeile " * 5}{{{{ rest }}}}"\n'
    )
    subject = DigestRenderer(config).render(articles(), now=NOW).subject
    assert len(subject) <= 78 and subject.endswith("…")
    assert subject.startswith("Sehr lange Betreffzeile Sehr")


def test_subject_template_comes_from_the_config(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        '[digest]\nsubject = "{{ rest + 1 }} new: {{ lead.title }} & {{ newsletter.title }}"\n',
    )
    subject = DigestRenderer(config).render(articles(), now=NOW).subject
    assert subject == "3 new: Post number 0 & The Test Weekly"  # no HTML escaping in a subject
    default = DigestRenderer(make_config(tmp_path)).render(articles(), now=NOW).subject
    assert default == "The Test Weekly: Post number 0 (+2 more)"


@pytest.mark.parametrize("key", ["subject", "preheader"])
def test_a_bad_subject_or_preheader_template_is_a_render_error_at_construction(
    tmp_path: Path, key: str
) -> None:
    config = make_config(tmp_path, f'[digest]\n{key} = "{{{{ lead.title "\n')
    with pytest.raises(RenderError) as info:
        DigestRenderer(config)
    assert info.value.template == f"[digest] {key}"


def test_shorten() -> None:
    assert shorten("  short\n text ", 78) == "short text"
    assert shorten("alpha beta gamma", 11) == "alpha beta…"
    assert shorten("alpha beta gamma", 10) == "alpha…"
    assert shorten("x" * 20, 10) == "x" * 9 + "…"


def test_preheader_is_plain_text_from_the_lead_summary(config: Config) -> None:
    summary = "<p>" + "Lead <em>story</em> &amp; friends. " * 10 + "</p>"
    rendered = DigestRenderer(config).render([make_article(0, summary=summary)], now=NOW)
    assert rendered.preheader.startswith("Lead story & friends. Lead story")
    assert len(rendered.preheader) <= 100 and rendered.preheader.endswith("…")
    untitled = DigestRenderer(config).render([make_article(0, summary="")], now=NOW)
    assert untitled.preheader == "Post number 0"


def test_the_preheader_template_comes_from_the_config(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        '[digest]\npreheader = "Diese Woche: {{ lead.title }} und {{ rest }} weitere – '
        "{{ articles | map(attribute='source') | unique | join(', ') }}\"\n",
    )
    rendered = DigestRenderer(config).render(articles(), now=NOW)
    assert (
        rendered.preheader == "Diese Woche: Post number 0 und 2 weitere – Field Notes, Tiny Links"
    )
    # hidden in the body, followed by invisible filler that keeps body text out of the inbox
    hidden = re.search(r'<div class="preheader"[^>]*>([^<]*)</div>', rendered.html)
    assert hidden is not None
    assert hidden.group(1).rstrip("\u034f\u200c\xa0") == escape(rendered.preheader, quote=False)
    (style,) = [a["style"] for t, a in Tags(rendered.html).tags if a.get("class") == "preheader"]
    assert "display:none" in style


# --- sections, templates, errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("section_by", "headings"),
    [
        ("source", ["FIELD NOTES", "TINY LINKS"]),
        ("tag", ["WEB", "PYTHON", "MORE"]),  # first tag, in order of appearance; "More" last
        ("none", []),
    ],
)
def test_sections(tmp_path: Path, section_by: str, headings: list[str]) -> None:
    config = make_config(tmp_path, f'[digest]\nsection_by = "{section_by}"\n')
    items = [
        make_article(0, tags=()),
        make_article(1, source="Tiny Links", tags=("web",)),
        make_article(2),
        make_article(3, source="Tiny Links", tags=("python", "web")),
    ]
    text = DigestRenderer(config).render(items, now=NOW).text
    lines = text.splitlines()
    found = [line for i, line in enumerate(lines[:-1]) if lines[i + 1].startswith("---")]
    assert found == [*headings, ""]  # "" is the blank line before the footer's "---"
    order = [int(m) for m in re.findall(r"^\* Post number (\d)", text, re.MULTILINE)]
    expected = {"source": [0, 2, 1, 3], "tag": [1, 2, 3, 0], "none": [0, 1, 2, 3]}
    assert order == expected[section_by]


def test_user_templates_override_only_what_they_define(tmp_path: Path) -> None:
    templates = tmp_path / "my-templates"
    templates.mkdir()
    (templates / "digest.txt").write_text(
        "Custom for {{ recipient.first_name }}: {{ lead.title }} <&> {{ ref(lead.url) }}\n"
    )
    config = make_config(tmp_path, top='templates = "my-templates"\n')
    rendered = DigestRenderer(config).render(articles(), now=NOW)
    assert rendered.text.startswith("Custom for nlvar:first_name: Post number 0 <&> [1]\n")
    assert rendered.text.endswith("Links:\n[1] https://example.com/posts/0\n")
    assert 'class="container"' in rendered.html  # digest.html still ours


def test_a_template_added_to_the_users_folder_later_takes_effect(tmp_path: Path) -> None:
    # A long-running process (the scheduler, the preview) keeps one renderer.
    templates = tmp_path / "templates"
    templates.mkdir()
    renderer = DigestRenderer(make_config(tmp_path, top='templates = "templates"\n'))
    assert "Custom footer" not in renderer.render(articles(), now=NOW).html
    (templates / "_footer.html").write_text("<tr><td>Custom footer</td></tr>")
    assert "Custom footer" in renderer.render(articles(), now=NOW).html
    (templates / "_footer.html").unlink()
    html = renderer.render(articles(), now=NOW).html
    assert "Custom footer" not in html and "with one click" in html


def test_template_errors_become_render_errors(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    config = make_config(tmp_path, top='templates = "templates"\n')
    (templates / "digest.txt").write_text("{{ recipient.no_such_value }}\n")
    with pytest.raises(RenderError) as info:
        DigestRenderer(config).render(articles(), now=NOW)
    assert info.value.template == "digest.txt"
    assert "no_such_value" in str(info.value)
    (templates / "digest.txt").write_text("ok\n\n{% for x in articles %}\n")
    with pytest.raises(RenderError, match="line 3") as info:
        DigestRenderer(config).render(articles(), now=NOW)
    assert info.value.template == "digest.txt"


def test_a_digest_needs_articles(config: Config) -> None:
    with pytest.raises(RenderError, match="at least one article"):
        DigestRenderer(config).render([], now=NOW)


def test_rendering_is_deterministic(config: Config) -> None:
    renderer = DigestRenderer(config)
    assert renderer.render(articles(), now=NOW) == renderer.render(articles(), now=NOW)


# --- the messages a digest becomes -----------------------------------------------------------

SNEAKY_TITLE = "Größe zählt\r\nBcc: victim@example.com\nX-Evil: 1 — 😀 Grüße"


@pytest.fixture
def sent(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Publisher]:
    """The example project with a Reply-To, a subscriber whose name tries to add a header and a
    lead article whose title does, gathered and sent through the outbox."""
    text = example_project.read_text().replace(
        'timezone = "Europe/Berlin"',
        'timezone = "Europe/Berlin"\nreply_to = "Editors <editors@news.example.org>"',
    )
    example_project.write_text(text)
    # YAML's double-quoted escapes: the title really holds CR and LF characters
    (example_project.parent / "articles" / "sneaky.md").write_text(
        '---\ntitle: "Größe zählt\\r\\nBcc: victim@example.com\\nX-Evil: 1 — 😀 Grüße"\n'
        "date: 2026-11-22T07:00:00+00:00\n---\nBody.\n",
        encoding="utf-8",
    )
    publisher = make_publisher(load_config(example_project))
    publisher.import_subscribers(example_project.parent / "subscribers.csv")
    publisher.add_subscriber("eve@example.com", "Eve\r\nBcc: victim@example.com")
    publisher.gather()
    report = publisher.send_digest()
    assert report.sent == 5 and report.failed == 0
    yield publisher
    publisher.close()


def read_outbox(publisher: Publisher) -> list[tuple[bytes, EmailMessage]]:
    out = []
    for path in sorted(publisher.config.mail.provider("outbox").outbox_dir.rglob("*.eml")):
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append((raw, msg))
    return out


def test_every_message_carries_the_headers_and_both_parts(sent: Publisher) -> None:
    digest = sent.storage.last_digest()
    assert digest is not None
    page = archive.page_url(sent.config.newsletter, digest.created_at, digest.uid)
    messages = read_outbox(sent)
    assert len(messages) == 5
    ids = set()
    for raw, msg in messages:
        assert raw.isascii()
        assert msg["From"] == "The Example Weekly <weekly@news.example.org>"
        assert msg["From"].addresses[0].display_name == "The Example Weekly"
        assert msg["Reply-To"] == "editors@news.example.org"
        assert msg["Date"].datetime == datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
        assert msg["MIME-Version"] == "1.0"
        message_id = msg["Message-ID"]
        assert re.fullmatch(rf"<{digest.uid}\.\d+@news\.example\.org>", message_id)
        ids.add(message_id)
        assert msg["List-Id"] == "<the-example-weekly.news.example.org>"
        https, mailto = [u.strip(" <>") for u in msg["List-Unsubscribe"].split(",")]
        assert https.startswith("https://news.example.org/unsubscribe/")
        assert mailto == "mailto:weekly@news.example.org?subject=unsubscribe"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        address = msg["To"].addresses[0].addr_spec
        assert sent.tokens.matches(https.rsplit("/", 1)[1], address)
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and html is not None
        for body in (text.get_content(), html.get_content()):
            assert "nlvar:" not in body
            assert https in body.replace("&amp;", "&")
            assert page in body  # the view-in-browser link points at this page
        assert f"because {address} subscribed" in html.get_content()
    assert len(ids) == 5  # one Message-ID per message


def test_a_title_or_name_with_line_breaks_cannot_add_headers(sent: Publisher) -> None:
    digest = sent.storage.last_digest()
    assert digest is not None
    one_line = " ".join(SNEAKY_TITLE.split())
    assert digest.subject.startswith("The Example Weekly: Größe zählt Bcc: victim@example.com")
    assert len(digest.subject) <= 78 and "\n" not in digest.subject
    for raw, msg in read_outbox(sent):
        assert msg["Bcc"] is None and msg["X-Evil"] is None
        assert msg["Subject"] == digest.subject  # decoded back from RFC 2047, whole
        head = raw.split(b"\r\n\r\n", 1)[0]
        names = [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1] not in b" \t"]
        assert b"Bcc" not in names and b"X-Evil" not in names
        assert names.count(b"Subject") == 1
        subject = re.search(rb"\r\nSubject: (.*?)\r\n(?! )", head, re.DOTALL)
        assert subject is not None and b"=?utf-8?" in subject.group(1)  # RFC 2047 words
        html = msg.get_body(("html",))
        assert html is not None
        assert escape(one_line, quote=False) in html.get_content()
    eve = [msg for _, msg in read_outbox(sent) if "eve@" in str(msg["To"])]
    assert len(eve) == 1
    assert eve[0]["To"].addresses[0].display_name == "Eve Bcc: victim@example.com"


def test_a_rendered_subject_is_safe_for_any_backend(config: Config, tmp_path: Path) -> None:
    # Without the pipeline around it: the renderer alone already makes the subject one line.
    rendered = DigestRenderer(config).render([make_article(0, title=SNEAKY_TITLE)], now=NOW)
    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    content = MessageContent(
        digest_id=1,
        digest_uid="0123456789abcdef",
        subject=rendered.subject,
        from_addr=config.newsletter.sender,
        html=rendered.html,
        text=rendered.text,
        list_id=config.newsletter.list_id,
        message_id_domain=config.newsletter.domain,
    )
    recipient = Recipient(
        1,
        "ada@example.com",
        "Ada",
        {"unsubscribe_url": "https://news.example.org/unsubscribe/t", "first_name": "Ada"},
    )
    ledger = ListLedger([recipient])
    OutboxBackend(tmp_path).send(content, ledger)
    assert [r.error for r in ledger.results] == [None]
    (path,) = tmp_path.rglob("*.eml")
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == rendered.subject and msg["Bcc"] is None
