"""A source kind that lives outside the package, as a plugin's would: JSON Lines, one entry a line.

Tests register it at runtime (``register_kind``) or through a ``newsletter.sources`` entry point,
never by editing ``newsletter.config`` or the built-in registry. It reuses the shared fetcher
with its settings (``FetchSettings``: ``url`` or ``path``, ``timeout``, ``max_bytes``) and adds a
key of its own, ``title_key``, which its ``parse`` checks like the built-in kinds check theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Self

from newsletter.config import SourceConfig, Table
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import COMMON_KEYS, SourceContext
from newsletter.sources.fetch import Fetcher
from newsletter.sources.settings import FetchSettings
from newsletter.types import EntryData, FetchResult, SourceState


@dataclass(frozen=True)
class JsonLinesSettings(FetchSettings):
    title_key: str = "title"

    keys: ClassVar[tuple[str, ...]] = (*FetchSettings.keys, "title_key")
    source: ClassVar[str] = "tests._jsonl_kind:JsonLinesSource"

    @classmethod
    def parse(cls, t: Table) -> Self:
        t.allow(*COMMON_KEYS, *cls.keys)
        return cls(**cls.fetch_fields(t), title_key=t.text("title_key", "title"))


class JsonLinesSource:
    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        if not isinstance(config.options, JsonLinesSettings):
            raise ConfigError(f"jsonl source {config.name!r} needs JsonLinesSettings")
        self.name = config.name
        self.location = config.location
        self._options = config.options
        self._fetcher = Fetcher(
            context.session, user_agent=context.http.user_agent, accept="application/jsonl"
        )

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, context)

    def fetch(self, state: SourceState) -> FetchResult:
        fetched = self._fetcher.document(self._options, state, source=self.name)
        if fetched.not_modified:
            return FetchResult(
                not_modified=True, etag=fetched.etag, permanent_url=fetched.permanent_url
            )
        entries = []
        for number, line in enumerate(fetched.body.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                title = item[self._options.title_key]
            except (ValueError, KeyError) as e:
                raise SourceError(f"line {number}: {e!r}", source=self.name, url=fetched.url) from e
            entries.append(
                EntryData(
                    title=str(title),
                    guid=item.get("id"),
                    url=item.get("url"),
                    content=item.get("content"),
                )
            )
        return FetchResult(
            entries=tuple(entries),
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            permanent_url=fetched.permanent_url,
            base_url=fetched.url if self._options.url is not None else None,
        )
