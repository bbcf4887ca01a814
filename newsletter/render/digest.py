"""Render the e-mail digest once: subject, preheader, inlined HTML and wrapped plain text.

Owns: the one Jinja environment (the user's templates directory first, then ours), the
template context, the subject and preheader, the single premailer pass that inlines the CSS,
the size budget (Gmail clips a message over 102 KB: a full-content article that does not fit
is shown as its excerpt with a "Read more" link, then articles that still do not fit become
the "N more on the web" link), the editor's note that opens a digest and the plain-text
layout (72 columns, links as numbered references). Per-recipient values are left in as
``personalize`` placeholders, so a digest is rendered and inlined once, whatever the number of
subscribers; ``personalize.Template`` fills them per recipient.

Does not own: choosing the articles, storing the digest, filling the placeholders, building
MIME messages (``mail.message``) or anything per recipient.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from html import escape
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from premailer import Premailer

from newsletter import personalize
from newsletter.config import Config, DigestSettings
from newsletter.exceptions import RenderError
from newsletter.grouping import body, group_stories
from newsletter.text import clean_line, clean_text, html_to_text, shorten, wrap_text
from newsletter.types import Article

log = logging.getLogger(__name__)

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
SUBJECT_TEMPLATE = "[digest] subject"  # how errors name the subject template from the config
ITEM_SUBJECT_TEMPLATE = "[digest] per_item_subject"  # a one-article mail's (per_item mode)
PREHEADER_TEMPLATE = "[digest] preheader"
# RFC 5322 2.1.1: lines SHOULD stay within 78 characters; a subject that fits reads whole in
# most inbox lists too.
SUBJECT_MAX = 78
# Below this, a shortened lead title says nothing; the whole subject is cut instead.
SUBJECT_MIN_TITLE = 12
PREHEADER_MAX = 100
SUMMARY_MAX = 300  # characters of an article's summary in the digest (``excerpt``)
IMAGE_WIDTH = 536  # px: the 600 px column less its padding; the width attribute Outlook uses
# Gmail clips a message whose HTML is over 102 KB ("[Message clipped]"), hiding the footer and
# its unsubscribe link. The budget is for the inlined HTML with its placeholders; the margin
# left is for the values filled per recipient (an unsubscribe URL is longer than its
# placeholder).
HTML_MAX_BYTES = 100_000
UNTAGGED = "More"
# What one article may bring into a digest, whatever its source sent: a 200,000-character
# title is shown twice (heading and image alt text) and would fill the budget on its own.
TITLE_MAX = 300
AUTHOR_MAX = 100
URL_MAX = 2000  # longer links are dropped: no mail client or browser handles them well
TAGS_MAX = 10
TAG_MAX = 60
SUMMARY_HTML_MAX = 5000  # a stored summary is at most ~1,000 characters of text; this is markup


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    preheader: str
    html: str  # inlined, with placeholders
    text: str  # wrapped, with placeholders
    # The articles shown, in the order given: fewer than asked when the HTML had to shrink.
    # A story's other versions ("Also in") count as shown: their links are in the digest.
    articles: tuple[Article, ...] = ()
    more: int = 0  # articles not shown (beyond max_items, or left out for size): "N more"
    full: frozenset[int] = frozenset()  # ids of the articles shown whole (``full_content``)
    # The stories told by several sources, each as its ids: the lead's, then the others'.
    groups: tuple[tuple[int, ...], ...] = ()

    @property
    def grouped(self) -> int:
        """How many articles are shown as one of a story's several versions."""
        return sum(len(g) for g in self.groups)

    def stories(self) -> list[tuple[Article, tuple[Article, ...]]]:
        """The items as the digest shows them: each lead with its story's other versions."""
        by_id = {a.id: a for a in self.articles}
        group_of = {i: g for g in self.groups for i in g}
        out: list[tuple[Article, tuple[Article, ...]]] = []
        seen: set[int] = set()
        for article in self.articles:
            group = group_of.get(article.id, (article.id,))
            if group[0] not in seen:
                seen.add(group[0])
                out.append((by_id[group[0]], tuple(by_id[i] for i in group[1:])))
        return out

    @property
    def size(self) -> int:
        """Bytes of the HTML part as rendered (placeholders unfilled)."""
        return len(self.html.encode())


def default_templates_dir() -> Path:
    """Our templates: ``newsletter/_templates``, a link to the top-level ``templates/``."""
    found = resources.files("newsletter") / "_templates"
    if not isinstance(found, Path) or not found.is_dir():
        # Jinja's FileSystemLoader needs a real folder; a zipped install has none.
        raise RenderError(f"default templates folder not found: {found}")
    return found


class DigestRenderer:
    """Renders digests for one configuration. Build it once; ``render`` is reentrant.

    Template context (HTML and text): ``newsletter`` (NewsletterSettings), ``articles`` (the
    ones shown), ``sections`` (list of ``(heading, articles)``; the heading is empty when not
    sectioned), ``lead`` (first article), ``rest`` (how many others are shown), ``more`` (how
    many are not, with ``more_url`` where to find them), ``archive_url`` (this issue on the
    web, or None), ``now`` (in the newsletter's time zone), ``subject``, ``preheader``,
    ``greeting_fallback``, ``image_width``, ``also`` (article id -> the other versions of
    its story, for "Also in"; a story told by several sources is shown once, by its fullest
    version, at the place of its newest), ``recipient`` (placeholders: ``first_name``,
    ``name``, ``email``, ``unsubscribe_url``), ``full`` (ids of the articles shown whole:
    ``{% if article.id in full %}``) and ``note`` (the editor's note as sanitized HTML, or
    ""). The text template also gets ``ref(url)``, which returns ``[n]`` and lists the URL at
    the end of the message, and ``fulltext(html)`` (HTML as paragraphs of text, links as
    ``ref`` numbers).
    Filters: ``plaintext`` (HTML to one line of text), ``excerpt`` (plain text cut at a word
    boundary, ``SUMMARY_MAX`` characters unless given) and ``date`` (in the newsletter's zone).
    The subject and preheader templates see ``newsletter``, ``lead``, ``rest``, ``more`` and
    ``articles``.
    """

    def __init__(self, config: Config) -> None:
        self.newsletter = config.newsletter
        self.settings = config.digest
        self.tz = ZoneInfo(config.newsletter.timezone)
        folders = [config.templates_dir] if config.templates_dir is not None else []
        folders.append(default_templates_dir())
        self.template_dirs: tuple[Path, ...] = tuple(folders)
        # Sources whose articles the digest shows whole (their kind's ``full_content``).
        self.full_sources = frozenset(
            c.name for c in config.sources if getattr(c.options, "full_content", False) is True
        )
        self.env = jinja2.Environment(
            loader=_OverridesLoader(folders),
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
        self.env.filters["excerpt"] = excerpt
        self.env.filters["date"] = self._date
        with template_errors(SUBJECT_TEMPLATE):
            self.subject_template = self.env.from_string(config.digest.subject)
        with template_errors(ITEM_SUBJECT_TEMPLATE):
            self.item_subject_template = self.env.from_string(config.digest.per_item_subject)
        with template_errors(PREHEADER_TEMPLATE):
            self.preheader_template = self.env.from_string(config.digest.preheader)

    def render(
        self,
        articles: Sequence[Article],
        *,
        now: datetime,
        more: int = 0,
        archive_url: str | None = None,
        note: str = "",
        single: bool = False,
    ) -> RenderedDigest:
        """Render the digest of ``articles`` (newest first). Raises ``RenderError``.

        ``single``: the one-article mail of ``[digest] mode = "per_item"``, whose subject is
        ``per_item_subject``.

        ``more`` counts articles that did not make it into ``articles`` (beyond
        ``digest.max_items``); ``archive_url`` is where this issue can be read on the web (the
        "view in your browser" link; none without it); ``note`` is the editor's note that
        opens it (sanitized HTML). Articles of a ``full_content`` source are shown whole.
        When the inlined HTML is over ``HTML_MAX_BYTES``, whole articles become excerpts with
        their link, from the end, then articles are left out from the end, and counted into
        ``more``, until it fits; the result says which articles it shows, and which whole.
        """
        if not articles:
            raise RenderError("a digest needs at least one article")
        leads, also = _stories(articles, self.settings)
        # The digest shows trimmed copies; storage keeps the articles as they are.
        shown = [_trimmed(a) for a in leads]
        others = {k: [_trimmed(a) for a in v] for k, v in also.items()}
        full = {a.id for a in shown if a.source in self.full_sources and a.content.strip()}
        note = clean_text(note)

        def weight(lead: Article) -> int:  # the articles a lead brings into the digest
            return 1 + len(also.get(lead.id, ()))

        while True:
            rendered = self._render(
                shown,
                now=now,
                more=more,
                archive_url=archive_url,
                also=others,
                full=full,
                note=note,
                single=single,
            )
            size = rendered.size
            if size > HTML_MAX_BYTES and full:
                full = _fewer_whole(shown, full, size - HTML_MAX_BYTES)
                continue
            if size > HTML_MAX_BYTES and len(shown) == 1 and shown[0] != _compact(shown[0]):
                # One article still too big: a template that shows the whole content, say.
                # It goes in as its excerpt, with the link to the rest.
                shown = [_compact(shown[0])]
                continue
            if size <= HTML_MAX_BYTES or len(shown) == 1:
                break
            # Every article costs about the same once inlined; dropping the estimate usually
            # fits at the next pass, and the loop checks rather than trusts it.
            per_article = size / len(shown)
            drop = min(len(shown) - 1, max(1, math.ceil((size - HTML_MAX_BYTES) / per_article)))
            shown = shown[:-drop]
            more += sum(weight(lead) for lead in leads[len(shown) : len(shown) + drop])
        # Callers get the articles they gave (the ones shown), not the trimmed copies.
        kept = leads[: len(shown)]
        ids = {a.id for lead in kept for a in (lead, *also.get(lead.id, ()))}
        groups = tuple(
            (lead.id, *(a.id for a in also[lead.id])) for lead in kept if lead.id in also
        )
        rendered = replace(
            rendered, articles=tuple(a for a in articles if a.id in ids), groups=groups
        )
        whole = sum(a.source in self.full_sources and bool(a.content.strip()) for a in shown)
        if len(full) < whole:
            log.warning(
                "the digest HTML was over %d KB, where Gmail clips a message: %d of %d "
                "full-content articles are shown as excerpts with their link",
                HTML_MAX_BYTES // 1000,
                whole - len(full),
                whole,
            )
        left_out = len(articles) - len(ids)
        if left_out:
            log.warning(
                "the digest HTML was over %d KB, where Gmail clips a message: left the last %d "
                'of %d articles out (counted in the "%d more on the web" link)',
                HTML_MAX_BYTES // 1000,
                left_out,
                len(articles),
                more,
            )
        if size > HTML_MAX_BYTES:
            log.warning(
                "the digest HTML is %.1f KB with a single article; Gmail clips it after 102 KB",
                size / 1000,
            )
        log.debug(
            "rendered digest of %d articles (+%d more, %d stories from several sources): "
            "%d bytes of HTML",
            len(ids),
            more,
            len(groups),
            size,
        )
        return rendered

    def _render(
        self,
        articles: list[Article],
        *,
        now: datetime,
        more: int,
        archive_url: str | None,
        full: set[int],
        note: str,
        also: dict[int, list[Article]],
        single: bool = False,
    ) -> RenderedDigest:
        lead = articles[0]
        base: dict[str, Any] = {
            "newsletter": self.newsletter,
            "articles": articles,
            "lead": lead,
            "rest": len(articles) - 1,
            "more": more,
        }
        subject = (
            self._subject(base, self.item_subject_template, ITEM_SUBJECT_TEMPLATE)
            if single
            else self._subject(base, self.subject_template, SUBJECT_TEMPLATE)
        )
        with template_errors(PREHEADER_TEMPLATE):
            preheader = shorten(clean_line(self.preheader_template.render(base)), PREHEADER_MAX)
        context = {
            **base,
            "sections": self._sections(articles),
            "recipient": personalize.Placeholders(),
            "now": now.astimezone(self.tz),
            "subject": subject,
            "preheader": preheader,
            "greeting_fallback": self.settings.greeting_fallback,
            "more_url": self.newsletter.site_url,
            "archive_url": archive_url,
            "image_width": IMAGE_WIDTH,
            "full": frozenset(full),
            "note": note,
            "also": also,
        }
        return RenderedDigest(
            subject=subject,
            preheader=preheader,
            html=self._html(context),
            text=self._text(context),
            articles=tuple(articles),
            more=more,
            full=frozenset(full),
        )

    def _subject(self, base: dict[str, Any], template: jinja2.Template, name: str) -> str:
        """The subject on one line, at most ``SUBJECT_MAX`` characters.

        When it is too long, the lead's title is shortened (at a word boundary) rather than
        the end cut off, so a count such as "(+4 more)" stays readable. A template whose
        length does not depend on the title is cut at the end as a last resort.
        """
        with template_errors(name):
            full = clean_line(template.render(base))
            subject = full
            lead: Article = base["lead"]
            title = clean_line(lead.title)
            limit = len(title) - (len(subject) - SUBJECT_MAX)
            while len(subject) > SUBJECT_MAX and limit >= SUBJECT_MIN_TITLE:
                short = replace(lead, title=shorten(title, limit))
                subject = clean_line(template.render({**base, "lead": short}))
                limit -= max(1, len(subject) - SUBJECT_MAX)
        if len(subject) > SUBJECT_MAX:
            subject = shorten(full, SUBJECT_MAX)
        if not subject:
            raise RenderError("the subject is empty", template=name)
        return subject

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
        with template_errors(HTML_TEMPLATE):
            html = self.env.get_template(HTML_TEMPLATE).render(context)
        return inline_css(html, base_url=self.newsletter.site_url)

    def _text(self, context: dict[str, Any]) -> str:
        refs = _References()
        with template_errors(TEXT_TEMPLATE):
            body = self.env.get_template(TEXT_TEMPLATE).render(
                {**context, "ref": refs, "fulltext": _FullText(refs)}
            )
        return wrap_text(body.strip("\n")) + "\n" + refs.listing()

    def _date(self, value: datetime, fmt: str | None = None) -> str:
        local = value.astimezone(self.tz)
        return local.strftime(fmt) if fmt else f"{local.day} {local:%B %Y}"


class _OverridesLoader(jinja2.BaseLoader):
    """The first folder that has a template wins (the user's, then ours), as a ChoiceLoader
    of FileSystemLoaders would do.

    Jinja re-reads a cached template when *its* file changes; this loader also drops it when
    another file starts winning, so a file added to (or removed from) the user's folder takes
    effect in a long-running process (``newsletter run``, the preview) without a restart.
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = tuple(folders)
        self.loaders = [jinja2.FileSystemLoader(f) for f in folders]

    def _winner(self, template: str) -> Path | None:
        pieces = jinja2.loaders.split_template_path(template)
        return next(
            (f.joinpath(*pieces) for f in self.folders if f.joinpath(*pieces).is_file()), None
        )

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        found = None
        for loader in self.loaders:
            try:
                found = loader.get_source(environment, template)
                break
            except jinja2.TemplateNotFound:
                continue
        if found is None:
            raise jinja2.TemplateNotFound(template)
        source, filename, uptodate = found
        winner = self._winner(template)

        def current() -> bool:
            if self._winner(template) != winner:
                return False
            return uptodate() if uptodate is not None else True

        return source, filename, current

    def list_templates(self) -> list[str]:
        return sorted({name for loader in self.loaders for name in loader.list_templates()})


def _trimmed(article: Article) -> Article:
    """``article`` as a digest shows it: each field held to a size that a source cannot
    inflate, and no character that does not belong in a line of text."""
    # Stored text is clean since gathering scrubs it, but rows stored before then may hold a
    # NUL or a lone surrogate, which lxml (premailer) and every encoder refuse.
    summary = clean_text(article.summary)
    if len(summary) > SUMMARY_HTML_MAX:
        # The excerpt needs the first few hundred characters of text; parsing a megabyte of
        # markup for them would cost seconds per article.
        summary = escape(excerpt(summary[: 4 * SUMMARY_HTML_MAX]), quote=False)
    tags = tuple(t for t in (_cut(clean_line(t), TAG_MAX) for t in article.tags[:TAGS_MAX]) if t)
    return replace(
        article,
        title=_cut(clean_line(article.title), TITLE_MAX),
        author=_cut(clean_line(article.author), AUTHOR_MAX) or None if article.author else None,
        url=_link(article.url),
        image_url=_link(article.image_url),
        summary=summary,
        content=clean_text(article.content),
        tags=tags,
    )


def _fewer_whole(shown: Sequence[Article], full: set[int], excess: int) -> set[int]:
    """``full`` less the last whole articles whose bodies add up to ``excess`` bytes (at
    least one): they go in as excerpts. The render loop checks the result again."""
    left = set(full)
    for article in reversed(shown):
        if article.id not in left:
            continue
        left.discard(article.id)
        excess -= len(article.content.encode())
        if excess <= 0:
            break
    return left


def _stories(
    articles: Sequence[Article], settings: DigestSettings
) -> tuple[list[Article], dict[int, list[Article]]]:
    """The digest's items: a story told by several sources once, by its fullest version (the
    longest text) at the place of its first version in ``articles``, and for each such lead
    the story's other versions in the order given."""
    stories = group_stories(articles, settings.group)
    by_id = {a.id: a for a in articles}
    leads: list[Article] = []
    also: dict[int, list[Article]] = {}
    done: set[int] = set()
    for article in articles:
        if article.id in done:
            continue
        group = stories.group_of(article.id)
        done.update(group)
        members = [a for a in articles if a.id in group] if len(group) > 1 else [article]
        lead = max(members, key=lambda a: (len(html_to_text(body(a))), -members.index(a)))
        leads.append(lead)
        if len(members) > 1:
            also[lead.id] = [by_id[a.id] for a in members if a is not lead]
    return leads, also


def _compact(article: Article) -> Article:
    """The least an article can be in a digest: its title, link and the excerpt of its
    summary, with no content and no image."""
    return replace(
        article,
        title=_cut(article.title, SUBJECT_MAX),
        summary=escape(excerpt(article.summary), quote=False),
        content="",
        image_url=None,
        tags=article.tags[:1],
    )


def _link(url: str | None) -> str | None:
    return clean_text(url) if url and len(url) <= URL_MAX else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else shorten(text, limit)


def excerpt(fragment: str | None, limit: int = SUMMARY_MAX) -> str:
    """The text of an HTML fragment on one line, cut at a word boundary to ``limit`` chars."""
    return shorten(html_to_text(fragment), limit)


@contextmanager
def template_errors(name: str) -> Iterator[None]:
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
            # premailer copies CSS sizes into attributes: `height: auto` on images becomes an
            # invalid height="auto", and `width: 100%` would overwrite the pixel width the
            # templates give images and tables for Outlook, which reads only the attribute.
            disable_basic_attributes=["height", "width"],
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


# What inscriptis writes for a link with ``display_links``: ``[text](url)``.
_TEXT_LINK = re.compile(r"\[([^\[\]\n]*)\]\(([^()\s]+)\)")
_TEXT_CONFIG = ParserConfig(display_links=True)


class _FullText:
    """``fulltext(html)`` in the text template: an HTML body as paragraphs of text (lists and
    headings on lines of their own), its links numbered by ``ref`` and listed at the end, as
    every other link of the text part."""

    def __init__(self, refs: _References) -> None:
        self.refs = refs

    def __call__(self, fragment: str | None) -> str:
        if not fragment:
            return ""
        text = get_text(fragment, _TEXT_CONFIG)

        def numbered(match: re.Match[str]) -> str:
            label, url = match.group(1).strip(), match.group(2)
            return f"{label} {self.refs(url)}" if label else self.refs(url)

        lines = (line.rstrip() for line in _TEXT_LINK.sub(numbered, text).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


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
