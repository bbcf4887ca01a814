"""Small builders for the render and mail tests: articles and configs from plain values."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter.config import Config, parse_config
from newsletter.mail.base import Batch
from newsletter.types import Article, DeliveryResult, Recipient

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


class ListLedger:
    """A real Ledger over a list (not a mock): hands out batches, keeps every result.

    ``claims`` records the size of each batch handed out; ``released`` the batches put back;
    ``uncertain_batches`` those whose answer was lost.
    """

    def __init__(self, recipients: Sequence[Recipient]) -> None:
        self.pending = list(recipients)
        self.claims: list[int] = []
        self.results: list[DeliveryResult] = []
        self.released: list[Batch] = []
        self.uncertain_batches: list[Batch] = []
        self._lock = threading.Lock()

    def claim(self, size: int) -> Batch | None:
        with self._lock:
            taken, self.pending = self.pending[:size], self.pending[size:]
            if not taken:
                return None
            self.claims.append(len(taken))
            return Batch(key=f"batch-{taken[0].subscriber_id}", recipients=tuple(taken))

    def record(self, batch: Batch, results: Sequence[DeliveryResult]) -> bool:
        with self._lock:
            self.results.extend(results)
        return True

    def release(self, batch: Batch, delivered: Sequence[DeliveryResult] = ()) -> None:
        with self._lock:
            self.results.extend(delivered)
            self.released.append(batch)
            done = {r.subscriber_id for r in delivered}
            self.pending[:0] = [r for r in batch.recipients if r.subscriber_id not in done]

    def uncertain(self, batch: Batch) -> None:
        with self._lock:
            self.uncertain_batches.append(batch)


def make_recipient(n: int, address: str, name: str | None) -> Recipient:
    """A recipient with the per-recipient values the core would fill in."""
    first = (name or "").split()
    return Recipient(
        subscriber_id=n,
        email=address,
        name=name,
        values={
            "email": address,
            "name": name or "",
            "first_name": first[0] if first else "there",
            "unsubscribe_url": f"https://news.example.org/unsubscribe/token-{n}?x=1&y=2",
        },
    )
