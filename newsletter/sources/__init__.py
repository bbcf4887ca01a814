"""Sources: where articles come from, one module per kind behind the ``Source`` Protocol.

Owns: the ``Source`` contract, the registry of kinds (``KINDS``: a kind's name and where its
settings class lives) and building a source from its ``SourceConfig`` (``make_source``). Each
kind owns its ``[[sources]]`` keys: its settings class (``SourceSettings``) parses and checks
them, and names the class that reads the source. The built-in kinds keep their settings in
``settings`` (light to import, so loading a config does not import feedparser or a Markdown
parser) and their readers in ``feed``, ``folder``, ``page`` and ``sitemap``; a kind that reads
a URL or a file gets its bytes through ``fetch`` (conditional GET, remembered redirects, size
cap, total deadline, charset), whose settings (``settings.FetchSettings``) it can reuse, and a
kind that crawls web pages goes through ``crawl`` (robots.txt, one request at a time per host).

A kind outside this package registers itself with ``register_kind`` (from a test, or from the
module an installed plugin's ``newsletter.sources`` entry point names: entry points are read
the first time a kind is not found, so a config naming a plugin's kind needs nothing else).

Does not own: normalizing, sanitizing or storing entries (``newsletter.gather``), remembering
validators and redirects between runs (``newsletter.storage``; a source only reads them from the
``SourceState`` it is handed), retries or scheduling.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from newsletter.exceptions import ConfigError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    import requests

    from newsletter.config import HttpSettings, SourceConfig, Table
    from newsletter.types import FetchResult, SourceState

__all__ = [
    "COMMON_KEYS",
    "KINDS",
    "Source",
    "SourceContext",
    "SourceSettings",
    "StoredKeys",
    "kind_settings",
    "make_source",
    "register_kind",
]

log = logging.getLogger(__name__)

# name -> "module:SettingsClass"; a new kind adds a line here (or calls ``register_kind``).
KINDS: dict[str, str] = {
    "feed": "newsletter.sources.settings:FeedSettings",
    "folder": "newsletter.sources.settings:FolderSettings",
    "page": "newsletter.sources.settings:PageSettings",
    "sitemap": "newsletter.sources.settings:SitemapSettings",
}
# The keys of every ``[[sources]]`` table, read by the config loader whatever the kind.
COMMON_KEYS = ("name", "kind", "enabled")
ENTRY_POINT_GROUP = "newsletter.sources"
_entry_points_read = False


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


# ``stored(source, keys)``: which of ``keys`` the source ``source`` already has in storage.
StoredKeys = Callable[[str, Sequence[str]], Set[str]]


@dataclass(frozen=True)
class SourceContext:
    """What one gather run hands every source it builds: the HTTP session shared by all of
    them, the ``[http]`` settings, the zone in which dates written without one are read, and
    the site's URL (``newsletter.site_url``), against which a local file's relative links
    resolve (None: left as they are).

    ``stored`` answers which article keys a source already has, for the kinds that must decide
    what to fetch (a listing page links to articles gathered on earlier runs: fetching each
    again would cost a request per link per run). It reads storage without the source knowing
    storage, may be called from the worker thread a source is fetched in, and is None when
    nothing is stored anywhere (a source built by hand): then every key is new.
    """

    session: requests.Session
    http: HttpSettings
    timezone: ZoneInfo
    stored: StoredKeys | None = None
    site_url: str | None = None


class SourceSettings(Protocol):
    """The settings of one kind: a frozen dataclass, ``SourceConfig.options``.

    ``parse(t)`` reads them from one ``[[sources]]`` table (``t``, a ``newsletter.config.Table``
    whose key paths are ``sources[i].<key>``). It first calls ``t.allow(*COMMON_KEYS, *keys)``,
    so a misspelt key is reported as such, then checks each of its keys, raising ``ConfigError``
    through ``t.error``/``t.get`` (which name the file, line and key path). The common keys are
    the loader's; ``parse`` only lets them through.

    ``keys`` are the kind's own keys; ``source`` names, as ``"module:Class"``, the class that
    reads a source of this kind: ``Class.from_config(config, context)`` returns a ``Source``
    (or raises ``ConfigError`` for settings built by hand that it cannot use). It is imported
    only when a source is built, so parsing a config stays cheap. ``location`` is the URL or
    path the source reads, which ``Source.location`` repeats.
    """

    keys: ClassVar[tuple[str, ...]]
    source: ClassVar[str]

    @property
    def location(self) -> str: ...

    @classmethod
    def parse(cls, t: Table) -> Self: ...


class _SourceClass(Protocol):
    def from_config(self, config: SourceConfig, context: SourceContext) -> Source: ...


def register_kind(name: str, target: str) -> None:
    """Make the kind ``name`` known: ``target`` is ``"module:SettingsClass"``, imported when a
    config first names the kind. Re-registering a name with the same target is allowed (a
    plugin module imported twice); another target for a taken name raises ``ValueError``."""
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise ValueError(f"expected 'module:Class' for source kind {name!r}, got {target!r}")
    if KINDS.get(name, target) != target:
        raise ValueError(f"source kind {name!r} is already registered as {KINDS[name]!r}")
    KINDS[name] = target


def kind_settings(name: str) -> type[SourceSettings] | None:
    """The settings class of the kind ``name``, or None when no kind has that name.

    Looks in ``KINDS``, then (once per process) in the installed plugins' entry points. Raises
    ``ConfigError`` when the class a kind is registered with cannot be imported."""
    if name not in KINDS:
        _read_entry_points()
    target = KINDS.get(name)
    if target is None:
        return None
    settings: type[SourceSettings] = _import(target, f"source kind {name!r}")
    return settings


def make_source(
    config: SourceConfig,
    *,
    session: requests.Session,
    http: HttpSettings,
    timezone: ZoneInfo,
    stored: StoredKeys | None = None,
    site_url: str | None = None,
) -> Source:
    """Build the source ``config`` describes.

    ``session`` is shared by every HTTP source of one gather run; ``timezone`` is the zone in
    which dates written without one (in front matter, say) are read; ``stored`` tells which
    article keys are stored already (see ``SourceContext``). Raises ``ConfigError`` for
    a kind no module implements, settings of another kind's type, or settings the kind cannot
    use (a feed with both or neither of ``url`` and ``path``); ``load_config`` already refuses
    those, so this guards configs built by hand.
    """
    where = f"sources.{config.name}.kind"
    settings = kind_settings(config.kind)
    if settings is None:
        known = ", ".join(sorted(KINDS))
        raise ConfigError(
            f"unknown source kind {config.kind!r} (expected one of {known})", key=where
        )
    if not isinstance(config.options, settings):
        raise ConfigError(
            f"{config.kind} source {config.name!r} needs {settings.__name__}, "
            f"got {type(config.options).__name__}",
            key=where,
        )
    source_class: _SourceClass = _import(settings.source, f"the reader of kind {config.kind!r}")
    return source_class.from_config(
        config,
        SourceContext(
            session=session, http=http, timezone=timezone, stored=stored, site_url=site_url
        ),
    )


def _import(target: str, what: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"{what} is registered as {target!r}, which cannot be imported: {e}"
        ) from e


def _read_entry_points() -> None:
    """Register the kinds installed plugins declare. Read once, and only when a config names a
    kind we do not know: it scans every installed distribution's metadata (about 5 ms here),
    which a config of built-in kinds need not pay."""
    global _entry_points_read
    if _entry_points_read:
        return
    # Imported here, not at the top, for the same reason: importing importlib.metadata costs
    # milliseconds too.
    from importlib import metadata

    _entry_points_read = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in KINDS:
            log.warning(
                "ignoring the %s entry point %r of %s: the kind is already registered",
                ENTRY_POINT_GROUP,
                entry.name,
                entry.value,
            )
            continue
        KINDS[entry.name] = entry.value
