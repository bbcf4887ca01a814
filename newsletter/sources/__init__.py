"""Sources: where articles come from, one module per kind behind the ``Source`` Protocol.

Owns: the ``Source`` contract and the registry that builds a source from its ``SourceConfig``
(``make_source``). Each kind lives in its own module (``feed``, ``folder``) and turns what it
reads into ``EntryData`` values; a kind that reads a URL or a file gets its bytes through
``fetch`` (conditional GET, remembered redirects, size cap, total deadline, charset).

Does not own: normalizing, sanitizing or storing entries (``newsletter.gather``), remembering
validators and redirects between runs (``newsletter.storage``; a source only reads them from the
``SourceState`` it is handed), retries or scheduling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

import requests

from newsletter.config import HttpSettings, SourceConfig
from newsletter.exceptions import ConfigError
from newsletter.sources.feed import FeedSource
from newsletter.sources.folder import FolderSource
from newsletter.types import FetchResult, SourceState

__all__ = ["Source", "make_source"]


@runtime_checkable
class Source(Protocol):
    """One configured source of articles.

    ``name`` is the configured name (the key storage files the source under); ``location`` is
    the configured URL or path, which ``Storage.sync_source`` compares to notice a changed
    configuration.

    ``fetch(state)`` reads the source once and returns a ``FetchResult``:

    - it uses ``state`` (as storage last saved it) for conditional requests and remembered
      permanent redirects, and returns ``FetchResult(not_modified=True)`` without parsing when
      nothing changed since;
    - it returns the entries it could read; a problem that did not stop it (a malformed but
      readable feed, one broken file in a folder) is described in ``FetchResult.warning``;
    - it raises ``SourceError`` (carrying the source name, the URL or path, and the HTTP status
      when there is one) when nothing usable could be read. It raises nothing else on purpose:
      third-party errors are wrapped once, inside the source.

    ``fetch`` may run in a worker thread, in parallel with other sources' fetches; it must not
    touch storage and must not share mutable state with other sources beyond the HTTP session
    it was given (shared for its connection pool; sources only call ``session.get`` on it, and
    ``deadline.mount`` once, which is idempotent).
    """

    name: str
    location: str

    def fetch(self, state: SourceState) -> FetchResult: ...


SourceFactory = Callable[[SourceConfig, requests.Session, HttpSettings, ZoneInfo], Source]

# Kinds are the values of ``config.SOURCE_KINDS``; a new kind adds a module and a line here.
_REGISTRY: dict[str, SourceFactory] = {
    "feed": lambda config, session, http, tz: FeedSource(config, session=session, http=http),
    "folder": lambda config, session, http, tz: FolderSource(config, timezone=tz),
}


def make_source(
    config: SourceConfig,
    *,
    session: requests.Session,
    http: HttpSettings,
    timezone: ZoneInfo,
) -> Source:
    """Build the source ``config`` describes.

    ``session`` is shared by every HTTP source of one gather run; ``timezone`` is the zone in
    which dates written without one (in front matter, say) are read. Raises ``ConfigError`` for
    a kind no module implements, or a config its kind cannot use (a feed with both or neither of
    ``url`` and ``path``); ``load_config`` already refuses those, so this guards configs built
    by hand.
    """
    factory = _REGISTRY.get(config.kind)
    if factory is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(
            f"unknown source kind {config.kind!r} (expected one of {known})",
            key=f"sources.{config.name}.kind",
        )
    return factory(config, session, http, timezone)
