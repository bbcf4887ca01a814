"""Storage: the only code that writes SQL. One module per domain behind the ``Storage`` seam.

- ``protocol``: the ``Storage`` Protocol, the contract the core relies on (what each method
  does and raises);
- ``articles``: sources and articles; ``pages``: the full-text page cache; ``subscribers``;
  ``deliveries``: digests, batches and deliveries with their leases; ``runs``: scheduled
  fires, nodes, meta values, the run lock; ``web``: what the ``serve`` processes share (rate
  buckets, webhook tokens, confirmations waiting to go); ``notes``: the editor's note waiting
  for the next digest;
- ``schema``: tables and numbered migrations; ``_base``: the engine, transactions, dialects.

``SqlStorage`` puts the domains together for SQLite and PostgreSQL (psycopg 3). No business
rule lives here: the decisions are in ``newsletter.rules`` and ``newsletter.schedule``.
"""

from __future__ import annotations

import secrets

from newsletter.storage._base import normalize_url, safe_url
from newsletter.storage.articles import ArticlesMixin, article_uid
from newsletter.storage.deliveries import DeliveriesMixin
from newsletter.storage.notes import NotesMixin
from newsletter.storage.pages import PagesMixin
from newsletter.storage.protocol import Storage
from newsletter.storage.runs import RunsMixin
from newsletter.storage.subscribers import SubscribersMixin
from newsletter.storage.web import WebStateMixin

__all__ = [
    "SqlStorage",
    "Storage",
    "article_uid",
    "new_digest_uid",
    "normalize_url",
    "open_storage",
    "safe_url",
]


class SqlStorage(
    ArticlesMixin,
    PagesMixin,
    SubscribersMixin,
    DeliveriesMixin,
    RunsMixin,
    WebStateMixin,
    NotesMixin,
):
    """``Storage`` on SQLite or PostgreSQL. Opening migrates; raises ``StorageError``."""


def open_storage(url: str) -> SqlStorage:
    """Open (and migrate) the database at the SQLAlchemy ``url``. Raises ``StorageError``."""
    return SqlStorage(url)


def new_digest_uid() -> str:
    """A fresh public id for a digest: random, URL- and Message-ID-safe."""
    return secrets.token_hex(8)
