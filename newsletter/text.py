"""Plain-text helpers shared by gathering (summaries) and rendering (subjects, text parts).

Owns turning HTML fragments into one line of text, shortening text at a word boundary and
wrapping text for e-mail. Knows nothing of articles, templates or storage.
"""

from __future__ import annotations

import re
import textwrap
from html.parser import HTMLParser

TEXT_WIDTH = 72  # RFC 3676 suggests <= 78; 72 leaves room for quoting ("> ") in replies


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, whitespace collapsed, cut at a word boundary to ``limit`` chars."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    # Room for the ellipsis: keep at most limit - 1 characters.
    space = text.rfind(" ", 0, limit)
    cut = text[:space] if space >= limit // 2 else text[: limit - 1]
    return cut.rstrip(" ,.;:-–—") + "…"


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap every line longer than ``width``, keeping its indent (and a bullet's hang).

    Words are never split, so a URL longer than ``width`` keeps a line of its own.
    """
    text = re.sub(r"\n{3,}", "\n\n", text)
    out: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if len(line) <= width:
            out.append(line)
            continue
        body = line.lstrip(" ")
        indent = line[: len(line) - len(body)]
        bullet = re.match(r"(?:[*\-•]|\d+\.)\s+", body)
        hang = indent + " " * (bullet.end() if bullet else 0)
        out.extend(
            textwrap.wrap(
                body,
                width=width,
                initial_indent=indent,
                subsequent_indent=hang,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def html_to_text(fragment: str | None) -> str:
    """The text of an HTML fragment on one line: tags dropped, entities decoded."""
    if not fragment:
        return ""
    parser = _TextExtractor()
    parser.feed(fragment)
    parser.close()
    return " ".join("".join(parser.parts).split())


class _TextExtractor(HTMLParser):
    # Tags whose boundaries separate words; inline tags (<b>, <a>) do not.
    # fmt: off
    BLOCKS = frozenset({
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
        "li", "main", "nav", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul",
    })
    # fmt: on
    HIDDEN = frozenset({"script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)
