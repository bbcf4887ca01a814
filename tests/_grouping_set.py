"""The labelled grouping set in ``tests/data/grouping/``, as articles and pairs (shared by
``tests/test_grouping.py`` and ``benchmarks/grouping.py``).

Each ``<name>.txt`` is ``source:`` and ``title:`` lines, a blank line, then paragraphs
separated by blank lines; ``labels.toml`` lists the pairs that must and must not group.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

from newsletter.types import Article

FOLDER = Path(__file__).parent / "data" / "grouping"
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@dataclass(frozen=True)
class LabelledSet:
    articles: dict[str, Article]  # by file name, without .txt
    must_group: list[tuple[str, str]]
    must_not_group: list[tuple[str, str]]


def paragraphs_html(text: str) -> str:
    return "".join(f"<p>{escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())


def story(
    n: int,
    *,
    source: str,
    when: datetime,
    content: str,
    title: str | None = None,
    url: str | None = None,
) -> Article:
    """Stored article ``n`` (its id is ``n + 1``), first seen and published at ``when``."""
    return Article(
        id=n + 1,
        uid=f"urn:uuid:00000000-0000-4000-9000-{n:012d}",
        source=source,
        key=url or f"story-{n}",
        title=title or f"Story {n}",
        url=url,
        author=None,
        published=when,
        updated=when,
        first_seen=when,
        summary="",
        content=content,
    )


def load_set(folder: Path = FOLDER) -> LabelledSet:
    articles: dict[str, Article] = {}
    for n, path in enumerate(sorted(folder.glob("*.txt"))):
        head, _, text = path.read_text(encoding="utf-8").partition("\n\n")
        meta = dict(line.split(": ", 1) for line in head.splitlines())
        # An hour apart, in file order: all inside one grouping window.
        when = START + timedelta(hours=n)
        articles[path.stem] = story(
            n,
            source=meta["source"],
            when=when,
            content=paragraphs_html(text),
            title=meta["title"],
            url=f"https://{path.stem}.example.com/story",
        )
    labels = tomllib.loads((folder / "labels.toml").read_text(encoding="utf-8"))
    return LabelledSet(
        articles,
        [(a, b) for a, b in labels["must_group"]],
        [(a, b) for a, b in labels["must_not_group"]],
    )


def write_two_feeds_project(
    config: Path, wire: str, metro: str, *, full_text: str = "never"
) -> None:
    """The project of the end-to-end grouping tests: a news wire's RSS and another outlet's
    Atom at these URLs (``full_text`` for the wire), the outbox, feeds in ``feeds-out``."""
    config.write_text(
        f"""\
[newsletter]
title = "Northfield Weekly"
site_url = "https://weekly.example.org/"
sender = "Northfield Weekly <weekly@weekly.example.org>"
postal_address = "1 Market Street, Northfield"

[[sources]]
name = "Regional Wire"
kind = "feed"
url = "{wire}"
full_text = "{full_text}"

[[sources]]
name = "Metro Daily"
kind = "feed"
url = "{metro}"

[digest]
lookback_hours = 100000  # the CLI runs on the real clock, the feeds are dated

[feeds]
output_dir = "feeds-out"

[mail]
backend = "outbox"

[mail.outbox]
outbox_dir = "outbox"

[storage]
path = "newsletter.db"
"""
    )
