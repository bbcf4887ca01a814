"""The digest renderer: templates, the one premailer pass, placeholders, subject and text part."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from newsletter.config import Config
from newsletter.exceptions import RenderError
from newsletter.render.digest import DigestRenderer, RenderedDigest, inline_css
from newsletter.render.personalize import Template, placeholder
from newsletter.text import html_to_text, shorten, wrap_text
from newsletter.types import Article
from tests._factories import make_article, make_config

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


def style_block(html: str) -> str:
    match = re.search(r"<style[^>]*>(.*?)</style>", html, re.DOTALL)
    assert match, "no <style> block"
    return match.group(1)


def articles() -> list[Article]:
    return [
        make_article(0, summary='<p>Read <a href="/docs/intro">the intro</a> &amp; more.</p>'),
        make_article(1, source="Tiny Links", tags=("web",), author=None),
        make_article(2, tags=(), summary='<p>An image: <img src="img/chart.png" alt=""></p>'),
    ]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def rendered(config: Config) -> RenderedDigest:
    return DigestRenderer(config).render(articles(), now=NOW)


# --- HTML ------------------------------------------------------------------------------------


def test_css_is_inlined_and_urls_are_absolute(rendered: RenderedDigest) -> None:
    tags = Tags(rendered.html).tags
    assert not [a for t, a in tags if t == "link" and "stylesheet" in a.get("rel", "")]
    styled = {t for t, a in tags if "style" in a}
    assert {"body", "table", "td", "a", "p", "h1"} <= styled
    td = next(a for t, a in tags if t == "td" and "cell" in a.get("class", ""))
    assert "padding:24px 32px" in td["style"]
    urls = [a[k] for _, a in tags for k in ("href", "src") if k in a]
    assert "https://news.example.org/docs/intro" in urls  # relative link in a summary
    assert "https://news.example.org/img/chart.png" in urls
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
    assert "the intro</a> &amp; more." in html  # summary HTML kept, not escaped twice
    assert html.index("Post number 0") < html.index("Post number 2") < html.index("Post number 1")


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
    long_summary = "<p>" + " ".join(["wrapping"] * 40) + " &amp; <b>bold</b> words.</p>"
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


def test_subject_template_comes_from_the_config(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        '[digest]\nsubject = "{{ rest + 1 }} new: {{ lead.title }} & {{ newsletter.title }}"\n',
    )
    subject = DigestRenderer(config).render(articles(), now=NOW).subject
    assert subject == "3 new: Post number 0 & The Test Weekly"  # no HTML escaping in a subject
    default = DigestRenderer(make_config(tmp_path)).render(articles(), now=NOW).subject
    assert default == "The Test Weekly: Post number 0 (+2 more)"


def test_bad_subject_template_is_a_render_error_at_construction(tmp_path: Path) -> None:
    config = make_config(tmp_path, '[digest]\nsubject = "{{ lead.title "\n')
    with pytest.raises(RenderError) as info:
        DigestRenderer(config)
    assert info.value.template == "[digest] subject"


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
