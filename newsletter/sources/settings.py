"""The settings of the built-in source kinds, each parsed from its ``[[sources]]`` table.

Owns: each kind's keys, their types, ranges and the rules between them (a feed reads exactly
one of ``url`` and ``path``), and ``FetchSettings``, what ``fetch`` needs to read one document
(where it is, ``timeout``, ``max_bytes``), which any kind reading a URL or a file can reuse.

Kept apart from the readers (``feed``, ``folder``) so that loading a config imports none of
feedparser, requests or a Markdown parser. Does not own: the keys every source has (``name``,
``kind``, ``enabled``: ``newsletter.config``) or the registry of kinds (``newsletter.sources``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from newsletter.config import Table, is_http_url
from newsletter.sources import COMMON_KEYS

__all__ = ["FeedSettings", "FetchSettings", "FolderSettings"]

_HOUR_S = 3600


@dataclass(frozen=True)
class FetchSettings:
    """One document at an http(s) URL or in a local file, and the limits of reading it.

    Exactly one of ``url`` and ``path`` is set in a loaded config (the reader checks it again
    for settings built by hand). ``timeout`` bounds the connection, each read and the whole
    fetch; a document over ``max_bytes`` is refused. A kind that reads one document subclasses
    this and names its reader in ``source``; one with keys of its own extends ``keys`` and
    ``parse`` (``fetch_fields`` reads the shared ones).
    """

    url: str | None = None
    path: Path | None = None
    timeout: float = 20.0
    max_bytes: int = 10 * 1024 * 1024

    keys: ClassVar[tuple[str, ...]] = ("url", "path", "timeout", "max_bytes")

    @property
    def location(self) -> str:
        return self.url if self.url is not None else str(self.path)

    @classmethod
    def parse(cls, t: Table) -> Self:
        t.allow(*COMMON_KEYS, *cls.keys)
        return cls(**cls.fetch_fields(t))

    @classmethod
    def fetch_fields(cls, t: Table) -> dict[str, Any]:
        """The shared keys, checked, as keyword arguments of the settings class."""
        url = t.text("url", None)
        path = t.path_value("path", None)
        if (url is None) == (path is None):
            kind = t.data.get("kind")
            raise t.error("url", f"a {kind} source needs exactly one of `url` or `path`")
        if url is not None and not is_http_url(url):
            raise t.error("url", f"expected an http(s) URL, got {url!r}")
        return {
            "url": url,
            "path": path,
            "timeout": float(t.number("timeout", cls.timeout, minimum=0.1, maximum=_HOUR_S)),
            "max_bytes": t.number(
                "max_bytes", cls.max_bytes, minimum=1024, maximum=2**30, integer=True
            ),
        }


@dataclass(frozen=True)
class FeedSettings(FetchSettings):
    """``kind = "feed"``: RSS, Atom or JSON Feed at ``url`` or in the file at ``path``.

    ``full_content``: the digest shows each item's whole body (within the digest's size
    budget) instead of an excerpt; off by default, a feed's item usually has a page to read.
    """

    full_content: bool = False

    keys: ClassVar[tuple[str, ...]] = (*FetchSettings.keys, "full_content")
    source: ClassVar[str] = "newsletter.sources.feed:FeedSource"

    @classmethod
    def parse(cls, t: Table) -> Self:
        t.allow(*COMMON_KEYS, *cls.keys)
        return cls(
            **cls.fetch_fields(t), full_content=t.get("full_content", bool, False, "true or false")
        )


@dataclass(frozen=True)
class FolderSettings:
    """``kind = "folder"``: the Markdown files under the directory ``path``.

    ``full_content`` (on by default): the digest shows each article whole, links kept, since
    an editor's article is written for the readers of this newsletter.
    """

    path: Path
    full_content: bool = True

    keys: ClassVar[tuple[str, ...]] = ("path", "full_content")
    source: ClassVar[str] = "newsletter.sources.folder:FolderSource"

    @property
    def location(self) -> str:
        return str(self.path)

    @classmethod
    def parse(cls, t: Table) -> Self:
        # Said before the unknown-key check: `url` is the likeliest key to find here, and this
        # names the one a folder needs instead.
        if "url" in t.data:
            raise t.error("path", "a folder source needs `path` (and no `url`)")
        t.allow(*COMMON_KEYS, *cls.keys)
        path = t.path_value("path", None)
        if path is None:
            raise t.error("path", "a folder source needs `path` (and no `url`)")
        return cls(path=path, full_content=t.get("full_content", bool, True, "true or false"))
