"""Small builders for the render and mail tests: articles and configs from plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.config import Config, parse_config
from newsletter.types import Article

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

CONFIG = """\
[newsletter]
title = "The Test Weekly"
site_url = "https://news.example.org/"
sender = "The Test Weekly <weekly@news.example.org>"
postal_address = "Test Weekly, 42 Sample Road, 10115 Berlin"
description = "Things worth reading."
timezone = "Europe/Berlin"
"""


def make_config(tmp_path: Path, extra: str = "", *, top: str = "") -> Config:
    """A config parsed from ``top`` (top-level keys), ``CONFIG`` and ``extra`` (tables)."""
    text = top + CONFIG + "\n" + extra
    return parse_config(text, tmp_path / "newsletter.toml")


def make_article(n: int, **changes: object) -> Article:
    """Article ``n``, published ``n`` hours before ``BASE_TIME`` (so 0 is the newest)."""
    published = BASE_TIME - timedelta(hours=n)
    values: dict[str, object] = {
        "id": n + 1,
        "uid": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
        "source": "Field Notes",
        "key": f"https://example.com/posts/{n}",
        "title": f"Post number {n}",
        "url": f"https://example.com/posts/{n}",
        "author": "Ada Lovelace",
        "published": published,
        "updated": published,
        "first_seen": published,
        "summary": f"<p>Summary of post {n}.</p>",
        "content": f"<p>The full text of post {n}.</p>",
        "tags": ("python",),
        "image_url": None,
    }
    values.update(changes)
    return Article(**values)  # type: ignore[arg-type]
