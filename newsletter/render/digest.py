"""Render the e-mail digest once: subject, preheader, inlined HTML and wrapped plain text.

Owns: the one Jinja environment (the user's templates directory first, then ours), the
template context, the subject and preheader, the single premailer pass that inlines the CSS,
and the plain-text layout (72 columns, links as numbered references). Per-recipient values are
left in as ``personalize`` placeholders, so a digest is rendered and inlined once, whatever the
number of subscribers; ``personalize.Template`` fills them per recipient.

Does not own: choosing the articles, storing the digest, filling the placeholders, building
MIME messages (``mail.message``) or anything per recipient.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from premailer import Premailer

from newsletter.config import Config
from newsletter.exceptions import RenderError
from newsletter.render import personalize
from newsletter.text import html_to_text, shorten, wrap_text
from newsletter.types import Article

log = logging.getLogger(__name__)

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
SUBJECT_TEMPLATE = "[digest] subject"  # how errors name the subject template from the config
# RFC 5322 2.1.1: lines SHOULD stay within 78 characters; a subject that fits reads whole in
# most inbox lists too.
SUBJECT_MAX = 78
PREHEADER_MAX = 100
UNTAGGED = "More"


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    preheader: str
    html: str  # inlined, with placeholders
    text: str  # wrapped, with placeholders


def default_templates_dir() -> Path:
    """Our templates: ``newsletter/_templates``, a link to the top-level ``templates/``."""
    found = resources.files("newsletter") / "_templates"
    if not isinstance(found, Path) or not found.is_dir():
        # Jinja's FileSystemLoader needs a real folder; a zipped install has none.
        raise RenderError(f"default templates folder not found: {found}")
    return found


class DigestRenderer:
    """Renders digests for one configuration. Build it once; ``render`` is reentrant.

    Template context (HTML and text): ``newsletter`` (NewsletterSettings), ``articles``,
    ``sections`` (list of ``(heading, articles)``; the heading is empty when not sectioned),
    ``lead`` (first article), ``rest`` (how many others), ``now`` (in the newsletter's time
    zone), ``subject``, ``preheader``, ``greeting_fallback`` and ``recipient`` (placeholders:
    ``first_name``, ``name``, ``email``, ``unsubscribe_url``). The text template also gets
    ``ref(url)``, which returns ``[n]`` and lists the URL at the end of the message.
    Filters: ``plaintext`` (HTML to one line of text) and ``date`` (in the newsletter's zone).
    The subject template sees ``newsletter``, ``lead``, ``rest`` and ``articles``.
    """

    def __init__(self, config: Config) -> None:
        self.newsletter = config.newsletter
        self.settings = config.digest
        self.tz = ZoneInfo(config.newsletter.timezone)
        folders = [config.templates_dir] if config.templates_dir is not None else []
        folders.append(default_templates_dir())
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(f) for f in folders]),
            # HTML is escaped; the text template and the subject string are not.
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html", "htm", "xml"),
                default_for_string=False,
                default=False,
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["plaintext"] = html_to_text
        self.env.filters["date"] = self._date
        with _template_errors(SUBJECT_TEMPLATE):
            self.subject_template = self.env.from_string(config.digest.subject)

    def render(self, articles: Sequence[Article], *, now: datetime) -> RenderedDigest:
        """Render the digest of ``articles`` (newest first). Raises ``RenderError``."""
        if not articles:
            raise RenderError("a digest needs at least one article")
        lead = articles[0]
        base: dict[str, Any] = {
            "newsletter": self.newsletter,
            "articles": list(articles),
            "lead": lead,
            "rest": len(articles) - 1,
        }
        with _template_errors(SUBJECT_TEMPLATE):
            subject = shorten(self.subject_template.render(base), SUBJECT_MAX)
        if not subject:
            raise RenderError("the subject is empty", template=SUBJECT_TEMPLATE)
        context = {
            **base,
            "sections": self._sections(articles),
            "recipient": personalize.Placeholders(),
            "now": now.astimezone(self.tz),
            "subject": subject,
            "preheader": shorten(html_to_text(lead.summary) or lead.title, PREHEADER_MAX),
            "greeting_fallback": self.settings.greeting_fallback,
        }
        html = self._html(context)
        text = self._text(context)
        log.debug("rendered digest of %d articles: %d chars HTML", len(articles), len(html))
        return RenderedDigest(subject=subject, preheader=context["preheader"], html=html, text=text)

    def _sections(self, articles: Sequence[Article]) -> list[tuple[str, list[Article]]]:
        by = self.settings.section_by
        if by == "none":
            return [("", list(articles))]
        groups: dict[str, list[Article]] = {}
        for article in articles:
            if by == "source":
                key = article.source
            else:
                key = article.tags[0] if article.tags else UNTAGGED
            groups.setdefault(key, []).append(article)
        if UNTAGGED in groups and by == "tag":
            groups[UNTAGGED] = groups.pop(UNTAGGED)  # the catch-all section goes last
        return list(groups.items())

    def _html(self, context: dict[str, Any]) -> str:
        with _template_errors(HTML_TEMPLATE):
            html = self.env.get_template(HTML_TEMPLATE).render(context)
        return inline_css(html, base_url=self.newsletter.site_url)

    def _text(self, context: dict[str, Any]) -> str:
        refs = _References()
        with _template_errors(TEXT_TEMPLATE):
            body = self.env.get_template(TEXT_TEMPLATE).render({**context, "ref": refs})
        return wrap_text(body.strip("\n")) + "\n" + refs.listing()

    def _date(self, value: datetime, fmt: str | None = None) -> str:
        local = value.astimezone(self.tz)
        return local.strftime(fmt) if fmt else f"{local.day} {local:%B %Y}"


@contextmanager
def _template_errors(name: str) -> Iterator[None]:
    """The Jinja boundary: any ``TemplateError`` becomes one ``RenderError`` naming the file."""
    try:
        yield
    except jinja2.TemplateSyntaxError as e:
        where = e.name or name
        raise RenderError(f"line {e.lineno}: {e.message}", template=where) from e
    except jinja2.TemplateError as e:
        raise RenderError(e.message or type(e).__name__, template=name) from e


def inline_css(html: str, *, base_url: str) -> str:
    """Move the CSS of ``html`` into style attributes once, keeping what cannot be inlined.

    The ``<style>`` block stays (``keep_style_tags``) for the media queries (narrow screens,
    dark mode), which only work from there, and ``strip_important=False`` keeps their
    ``!important``: premailer's default strips it, and the inlined styles would then win over
    every media query. Relative ``href``/``src`` become absolute against ``base_url``; the
    placeholders have their own scheme, which ``urljoin`` leaves alone (checked below).
    """
    if not html.strip():
        raise RenderError("the template rendered an empty document", template=HTML_TEMPLATE)
    try:
        inlined: str = Premailer(
            html,
            base_url=base_url,
            strip_important=False,
            keep_style_tags=True,
            remove_classes=False,
            # cssutils' validator predates properties e-mail CSS needs (color-scheme, mso-*,
            # -webkit-*); it only logs and never changes the output, so it is time for nothing.
            disable_validation=True,
            # premailer turns `height: auto` on images into an invalid height="auto" attribute.
            disable_basic_attributes=["height"],
            allow_network=False,
            cssutils_logging_level=logging.CRITICAL,
        ).transform()
    except Exception as e:
        # premailer has no exception types of its own; it lets lxml's, cssutils' and plain
        # ValueError/AttributeError through. This is the one place that calls it.
        raise RenderError(f"cannot inline the CSS: {e}", template=HTML_TEMPLATE) from e
    before = personalize.Template(html, is_html=True).names
    after = personalize.Template(inlined, is_html=True).names
    if sorted(before) != sorted(after):
        raise RenderError(
            f"inlining changed the placeholders ({sorted(before)} -> {sorted(after)})",
            template=HTML_TEMPLATE,
        )
    sheets = _StylesheetLinks.find(inlined)
    if sheets:
        # With allow_network=False premailer leaves <link> alone, and mail clients ignore it.
        raise RenderError(
            f"external stylesheets cannot be inlined ({', '.join(sheets)}); "
            "put the CSS in a <style> block",
            template=HTML_TEMPLATE,
        )
    return inlined


class _References:
    """``ref(url)`` for the text template: numbers each distinct URL once, in order of use."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str) -> str:
        if url not in self.urls:
            self.urls.append(url)
        return f"[{self.urls.index(url) + 1}]"

    def listing(self) -> str:
        if not self.urls:
            return ""
        lines = [f"[{n}] {url}" for n, url in enumerate(self.urls, 1)]
        return "\nLinks:\n" + "\n".join(lines) + "\n"


class _StylesheetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    @classmethod
    def find(cls, html: str) -> list[str]:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser.hrefs

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and "stylesheet" in (values.get("rel") or "").lower().split():
            self.hrefs.append(values.get("href") or "")
