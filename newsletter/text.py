"""Plain-text helpers shared by gathering (summaries) and rendering (subjects, text parts).

Owns turning HTML fragments into one line of text, shortening text at a word boundary,
wrapping text for e-mail, and scrubbing characters no text from outside may carry (lone
surrogates, control characters). Knows nothing of articles, templates or storage.
"""

from __future__ import annotations

import re
import textwrap
from html.parser import HTMLParser

TEXT_WIDTH = 72  # RFC 3676 suggests <= 78; 72 leaves room for quoting ("> ") in replies

# A str decoded from JSON ("\ud800") or built by a lenient parser can hold a lone surrogate,
# which no encoder accepts: the first ``.encode()`` (a database driver, a hash, a file) raises
# UnicodeEncodeError. A valid pair never survives decoding as two code points, so every
# surrogate in a str is a lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Control characters in text that may span lines (HTML, summaries): C0 except tab, newline and
# carriage return, DEL, and C1; and the noncharacters U+FFFE and U+FFFF. NUL is refused by
# PostgreSQL, most of the others by XML 1.0 (lxml) or by every terminal and mail header.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff]")
# On one line (titles, names, tags, headers) tabs and line breaks become spaces.
_BREAKS = re.compile("[\t\n\r\u2028\u2029]")


def has_unsafe_chars(text: str) -> bool:
    """Whether ``clean_text`` would change ``text``."""
    return bool(_SURROGATE.search(text) or _CONTROL.search(text))


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD and control characters removed;
    tabs and line breaks are kept."""
    return _CONTROL.sub("", _SURROGATE.sub("\ufffd", text))


def clean_line(text: str) -> str:
    """``text`` as one clean line: as ``clean_text``, with tabs and line breaks turned into
    spaces and whitespace collapsed. For titles, names, tags and anything bound for a mail
    header."""
    return " ".join(clean_text(_BREAKS.sub(" ", text)).split())


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
