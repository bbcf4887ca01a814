"""Load ``newsletter.toml`` into frozen dataclasses, validated once.

Owns: reading the TOML file, resolving relative paths against the file's folder, checking every
key (unknown keys, wrong types, missing values) and naming the file, line and key path in each
error. Does not own: reading secrets (only the *names* of environment variables are stored here;
``Config.secret(...)`` reads them when asked) or anything that touches the network or database.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter._version import USER_AGENT
from newsletter.addresses import validate_address
from newsletter.cron import Crontab
from newsletter.exceptions import ConfigError, SubscriberError
from newsletter.grouping import GroupSettings
from newsletter.sources import KINDS, kind_settings

if TYPE_CHECKING:
    from newsletter.sources import SourceSettings

log = logging.getLogger(__name__)

DEFAULT_CONFIG_NAME = "newsletter.toml"
CONFIG_ENV = "NEWSLETTER_CONFIG"
# The keys of ``[mail]`` itself; everything else a backend takes lives in its own table.
MAIL_COMMON_KEYS = ("backend", "batch_size", "concurrency", "rate_limit")
# ``[web]`` keys of the release before ``[mail.<backend>]`` tables: still read (with a warning)
# as the key of the provider's own table they became.
_LEGACY_WEBHOOK_KEYS: dict[str, tuple[str, str]] = {
    "postmark_webhook_user_env": ("postmark", "webhook_user_env"),
    "postmark_webhook_password_env": ("postmark", "webhook_password_env"),
    "sendgrid_webhook_key_env": ("sendgrid", "webhook_key_env"),
    "mailgun_signing_key_env": ("mailgun", "webhook_signing_key_env"),
}
# Ceilings of the duration keys (README, "Configuration"): generous, but each still fits a
# timedelta, a timer and a SQL integer.
_HOUR_S = 3600
_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S
_YEAR_H = 366 * 24
_YEAR_MIN = _YEAR_H * 60
SECTION_BY = ("source", "tag", "none")
DIGEST_MODES = ("digest", "per_item")


@dataclass(frozen=True)
class NewsletterSettings:
    title: str
    site_url: str  # absolute, ends with "/"
    sender_name: str
    sender_email: str
    postal_address: str
    description: str = ""
    language: str = "en"
    reply_to: str | None = None
    timezone: str = "UTC"
    secret_env: str = "NEWSLETTER_SECRET"  # noqa: S105 - the NAME of a variable, not a secret
    # The NAME of a variable holding the secrets used before, comma-separated: links signed
    # with them stay valid after a rotation.
    previous_secrets_env: str = "NEWSLETTER_PREVIOUS_SECRETS"

    @property
    def sender(self) -> str:
        return formataddr((self.sender_name, self.sender_email))

    @property
    def domain(self) -> str:
        return self.sender_email.rpartition("@")[2]

    @property
    def list_id(self) -> str:
        """RFC 2919 List-Id: a stable, unique identifier for this list under our domain."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "newsletter"
        return f"{slug}.{self.domain}"


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[sources]]`` table: the keys every source has, and ``options``, the settings its
    kind parsed from the rest (a ``SourceSettings`` of the class ``newsletter.sources.KINDS``
    names for ``kind``)."""

    name: str
    kind: str  # a key of newsletter.sources.KINDS
    options: SourceSettings
    enabled: bool = True

    @property
    def location(self) -> str:
        return self.options.location


@dataclass(frozen=True)
class ScheduleSettings:
    gather_interval_minutes: int = 30
    digest_cron: str = "0 7 * * *"
    timezone: str = "UTC"
    misfire_grace_seconds: int = 3600
    # How long a node's claim on a batch or a scheduled run lasts without its heartbeat
    # (renewed every third of it): how soon other nodes take a dead node's work back.
    lease_seconds: float = 60.0
    # After SIGTERM/SIGINT, how long batches already on the wire may take to answer before
    # the process exits anyway. Deployment units must allow more (systemd TimeoutStopSec,
    # docker stop -t).
    stop_timeout_seconds: float = 30.0


@dataclass(frozen=True)
class FeedSettings:
    output_dir: Path
    max_items: int = 50
    ttl_minutes: int = 60
    archive_page_size: int | None = None  # items per RFC 5005 archive page; None: max_items
    websub_hub: str | None = None  # absolute http(s) URL of a WebSub hub to name and ping

    @property
    def page_size(self) -> int:
        return self.archive_page_size or self.max_items


@dataclass(frozen=True)
class DigestSettings:
    lookback_hours: float = 24.0
    max_items: int = 30
    section_by: str = "source"  # one of SECTION_BY
    subject: str = (
        "{{ newsletter.title }}: {{ lead.title }}{% if rest %} (+{{ rest }} more){% endif %}"
    )
    preheader: str = "{{ lead.summary | plaintext or lead.title }}"
    greeting_fallback: str = "there"
    # A Markdown file whose text opens the next digest, then is renamed "<name>.sent-<time>".
    note_file: Path | None = None
    # ``group*`` keys: one story from several sources shown once (and related in the feeds).
    group: GroupSettings = field(default_factory=GroupSettings)
    # "digest": one mail per digest cron fire; "per_item": one mail per new article, sent
    # after each gather, at most ``per_item_max`` of them per backlog (the rest: one digest).
    mode: str = "digest"  # one of DIGEST_MODES
    per_item_max: int = 5
    per_item_subject: str = "{{ lead.title }}"


@dataclass(frozen=True)
class MailSettings:
    """``[mail]``: which backend sends and how hard it may push; each backend's own keys are in
    its table ``[mail.<backend>]``, parsed by the backend's ``Settings`` class (``providers``)."""

    backend: str = "outbox"
    batch_size: int | None = None  # None: the backend's own default (its documented maximum)
    concurrency: int = 4  # batches in flight at once
    rate_limit: float | None = None  # messages per second, None: as fast as the provider takes
    # backend name -> its parsed settings: the chosen backend's always, others' when their
    # table is present (a provider's webhook keeps working after switching away from it).
    providers: Mapping[str, Any] = field(default_factory=dict)

    def provider(self, name: str) -> Any:
        """The settings of backend ``name`` (its ``Settings`` class), or None when neither
        chosen nor configured."""
        return self.providers.get(name)


@dataclass(frozen=True)
class StorageSettings:
    url: str  # SQLAlchemy URL


@dataclass(frozen=True)
class HttpSettings:
    user_agent: str = USER_AGENT
    timeout: float = 20.0
    # What one item from any source may carry; more is cut with a warning against the source.
    max_tags_per_item: int = 50
    max_title_chars: int = 1000
    # Pages and sitemaps: the pause between two requests to one host (robots.txt's
    # Crawl-delay may make it longer). Per host, not per source: two sources on one site share it.
    per_host_delay_seconds: float = 1.0


@dataclass(frozen=True)
class WebSettings:
    """``newsletter serve``: where it listens and whom it trusts. (The webhooks' secrets are
    named in each provider's ``[mail.<backend>]`` table.)"""

    host: str = "127.0.0.1"
    port: int = 8080
    # Peers whose X-Forwarded-For/-Proto/-Host headers are believed: addresses or networks.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    subscribe_rate_per_minute: float = 5.0  # POST /subscribe per client address
    confirm_hours: float = 72.0  # lifetime of a confirmation link
    # Addresses that asked to subscribe and never confirmed are forgotten after this long.
    purge_pending_days: float = 30.0


@dataclass(frozen=True)
class Config:
    file: Path | None
    newsletter: NewsletterSettings
    sources: tuple[SourceConfig, ...]
    schedule: ScheduleSettings
    feeds: FeedSettings
    digest: DigestSettings
    mail: MailSettings
    storage: StorageSettings
    http: HttpSettings = field(default_factory=HttpSettings)
    templates_dir: Path | None = None  # the user's overrides, searched before ours
    web: WebSettings = field(default_factory=WebSettings)
    # What the file says in a layout that still works but will not in the next release, each
    # with the form to write instead (logged when the file is read; ``newsletter check`` too).
    deprecations: tuple[str, ...] = ()

    def secret(self, env_name: str) -> str | None:
        """Read a secret from the environment variable the config names (never from the file)."""
        value = os.environ.get(env_name)
        return value or None

    def secret_list(self, env_name: str) -> tuple[str, ...]:
        """The comma-separated secrets of an environment variable, blanks dropped."""
        return tuple(v.strip() for v in os.environ.get(env_name, "").split(",") if v.strip())


# --- reading ---------------------------------------------------------------------------------


class _Locator:
    """Finds the line of a key path in the TOML text, so errors can say ``file:line``.

    tomllib keeps no positions; a small scan of the text is enough for the shapes a config
    uses (``[table]``, ``[[array]]`` and ``key = value`` lines).
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, path: list[str | int]) -> int | None:
        start = 0
        table: str | None = None
        i = 0
        while i < len(path):
            part = path[i]
            nxt = path[i + 1] if i + 1 < len(path) else None
            if isinstance(part, str) and isinstance(nxt, int):
                found = self._nth_header(f"[[{part}]]", nxt)
                if found is None:
                    return None
                start, table = found, part
                i += 2
                continue
            if isinstance(part, str) and i < len(path) - 1 and table is None:
                # The longest dotted header first: ``[mail.smtp]`` before ``[mail]``.
                for end in range(len(path) - 1, i, -1):
                    names = path[i:end]
                    if not all(isinstance(n, str) for n in names):
                        continue
                    found = self._nth_header(f"[{'.'.join(map(str, names))}]", 0)
                    if found is not None:
                        start, table, i = found, ".".join(map(str, names)), end
                        break
                else:
                    found = None
                if found is not None:
                    continue
            if isinstance(part, str):
                key_re = re.compile(rf"^\s*[\"']?{re.escape(part)}[\"']?\s*=")
                for n in range(start, len(self.lines)):
                    if n > start and self.lines[n].lstrip().startswith("[") and table:
                        break
                    if key_re.match(self.lines[n]):
                        return n + 1
                return start + 1 if table else None
            i += 1
        return start + 1 if table else None

    def _nth_header(self, header: str, n: int) -> int | None:
        seen = 0
        for number, line in enumerate(self.lines):
            if line.strip().split("#", 1)[0].strip() == header:
                if seen == n:
                    return number
                seen += 1
        return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The ceiling of a number key that names none of its own: what a 32-bit SQL integer holds.
_MAX_INTEGER = 2**31 - 1
_MAX_NUMBER = 1e9


class Table:
    """A view of one TOML table that type-checks each key and reports unknown ones.

    Public because the parts that own settings (each mail backend's ``[mail.<name>]``, each
    source kind's ``[[sources]]`` keys) parse them with it, so their errors name the file,
    line and key path like every other.
    """

    def __init__(self, data: Mapping[str, Any], path: list[str | int], loader: _Loader) -> None:
        self.data = data
        self.path = path
        self.loader = loader
        self.owner = "this table"  # who reads it, for messages: "the 'smtp' backend"

    def require(self, *keys: str) -> None:
        """Refuse the table when one of ``keys`` is missing, naming who needs it."""
        for key in keys:
            if key not in self.data:
                raise self.error(key, f"is required by {self.owner}")

    def error(self, key: str | None, message: str) -> ConfigError:
        return self.loader.error([*self.path, key] if key else self.path, message)

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., what: str = ""
    ) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.error(key, f"is required ({what or _type_name(kind)})")
            return default
        value = self.data[key]
        # bool is a subclass of int; a config that says `max_items = true` is a mistake.
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            raise self.error(key, f"expected {what or _type_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(
                key, f"expected {what or _type_name(kind)}, got {type(value).__name__} {value!r}"
            )
        return value

    def text(self, key: str, default: Any = ..., *, nonempty: bool = True) -> Any:
        value = self.get(key, str, default, "a string")
        if isinstance(value, str) and nonempty and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def number(
        self,
        key: str,
        default: Any,
        *,
        minimum: float,
        maximum: float | None = None,
        integer: bool = False,
    ) -> Any:
        """A number in ``minimum..maximum``. TOML allows ``nan``, ``inf`` and integers of any
        size; each would reach a timedelta, a SQL LIMIT or a socket and fail there, far from
        the config, so every number has a ceiling (``maximum``, else a generic one)."""
        value = self.get(
            key,
            int if integer else (int, float),
            default,
            "a whole number" if integer else "a number",
        )
        if value is None:
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, got {value}")
        ceiling = maximum if maximum is not None else (_MAX_INTEGER if integer else _MAX_NUMBER)
        if value > ceiling:
            raise self.error(key, f"must be at most {_plain(ceiling)}, got {value}")
        return value

    def path_value(self, key: str, default: Any = ...) -> Any:
        value = self.text(key, default)
        if isinstance(value, str):
            if "\x00" in value:  # every file system call would raise ValueError on it
                raise self.error(key, "a path must not contain a NUL character")
            return self.loader.resolve(value)
        return value

    def dir_value(self, key: str, default: Any = ...) -> Any:
        """A directory we write into: it may not exist yet, but it must not be a file."""
        value = self.path_value(key, default)
        if isinstance(value, Path) and value.exists() and not value.is_dir():
            raise self.error(key, f"expected a directory, but {value} is a file")
        return value

    def header_text(self, key: str, default: Any = ...) -> Any:
        """Text that ends up in a mail header: a control character there (CR/LF above all)
        would start another header or silently change the address."""
        value = self.text(key, default)
        if isinstance(value, str):
            bad = _CONTROL.search(value)
            if bad is not None:
                raise self.error(key, f"must not contain control characters, found {bad.group()!r}")
        return value

    def env_name(self, key: str, default: Any = None) -> Any:
        """The NAME of an environment variable (secrets are read from it, never stored)."""
        value = self.text(key, default)
        if isinstance(value, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise self.error(key, "expected the NAME of an environment variable, not a value")
        return value

    def url(self, key: str, default: Any = None) -> Any:
        """An absolute http(s) URL, without a trailing slash."""
        value = self.text(key, default)
        if isinstance(value, str):
            if not is_http_url(value):
                raise self.error(key, f"expected an absolute http(s) URL, got {value!r}")
            return value.rstrip("/")
        return value

    def table(self, key: str) -> Table:
        value = self.get(key, dict, {}, "a table")
        return Table(value, [*self.path, key], self.loader)

    def allow(self, *keys: str) -> None:
        """Refuse keys not listed. Checked first, so a misspelt key is reported as such and
        not as the absence of the key it was meant to be."""
        unknown = [k for k in self.data if k not in keys]
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(key, keys, n=1)
            known = ", ".join(sorted(keys))
            message = "unknown key" + (
                f"; did you mean {hint[0]!r}?" if hint else f" (known: {known})"
            )
            raise self.error(key, message)


class _Loader:
    def __init__(self, file: Path | None, text: str) -> None:
        self.file = file
        self.base = file.parent if file is not None else Path.cwd()
        self.locator = _Locator(text)

    def error(self, path: list[str | int], message: str) -> ConfigError:
        return ConfigError(
            message, file=self.file, key=_format_path(path), line=self.locator.line_of(path)
        )

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()


def _plain(number: float) -> str:
    """65535 rather than 65535.0 or 6.5535e+04."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _format_path(path: list[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _type_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return {
        str: "a string",
        int: "a whole number",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def find_config(explicit: str | Path | None) -> Path:
    """The config file: the explicit path, else ``$NEWSLETTER_CONFIG``, else ./newsletter.toml."""
    chosen = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME
    path = Path(chosen).expanduser()
    if not path.is_file():
        hint = (
            ""
            if explicit or os.environ.get(CONFIG_ENV)
            else ("; create one with `newsletter init`, or pass --config FILE")
        )
        raise ConfigError(f"config file not found{hint}", file=path)
    return path


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ``ConfigError`` naming file, line and key."""
    file = Path(path).expanduser().resolve()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config: {e.strerror}", file=file) from e
    except UnicodeDecodeError as e:
        raise ConfigError("config is not valid UTF-8", file=file) from e
    return parse_config(text, file)


def parse_config(text: str, file: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python 3.11's TOMLDecodeError has no lineno attribute; the message carries it.
        found = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(found.group(1)) if found else None
        raise ConfigError(f"invalid TOML: {e}", file=file, line=line) from e
    loader = _Loader(file, text)
    root = Table(data, [], loader)
    root.allow(
        "newsletter",
        "sources",
        "schedule",
        "feeds",
        "digest",
        "mail",
        "storage",
        "http",
        "templates",
        "web",
    )

    nl = _newsletter(root.table("newsletter"))
    sources = _sources(root, loader)
    schedule = _schedule(root.table("schedule"), nl.timezone)
    feeds_t = root.table("feeds")
    feeds_t.allow("output_dir", "max_items", "ttl_minutes", "archive_page_size", "websub_hub")
    feeds = FeedSettings(
        output_dir=feeds_t.dir_value("output_dir", "feeds"),
        max_items=feeds_t.number("max_items", 50, minimum=1, maximum=10_000, integer=True),
        ttl_minutes=feeds_t.number("ttl_minutes", 60, minimum=1, maximum=_YEAR_MIN, integer=True),
        archive_page_size=feeds_t.number(
            "archive_page_size", None, minimum=1, maximum=10_000, integer=True
        ),
        websub_hub=feeds_t.text("websub_hub", None),
    )
    # The newest partial archive page lives only in the current feed, so a page larger than
    # the current feed would leave items in neither.
    if feeds.page_size > feeds.max_items:
        raise feeds_t.error(
            "archive_page_size",
            f"must not exceed max_items ({feeds.max_items}), got {feeds.page_size}",
        )
    if feeds.websub_hub is not None and not is_http_url(feeds.websub_hub):
        raise feeds_t.error(
            "websub_hub", f"expected an absolute http(s) URL, got {feeds.websub_hub!r}"
        )
    digest = _digest(root.table("digest"))
    deprecations: list[str] = []
    web, legacy_hooks = _web(root.table("web"), deprecations)
    mail = _mail(root.table("mail"), legacy_hooks, deprecations)
    storage_t = root.table("storage")
    storage_t.allow("url", "path")
    storage = StorageSettings(url=_storage_url(storage_t, loader))
    _check_output_dir(feeds_t, feeds.output_dir, file, _sqlite_file(storage.url))
    http_t = root.table("http")
    http_t.allow(
        "user_agent", "timeout", "max_tags_per_item", "max_title_chars", "per_host_delay_seconds"
    )
    http = HttpSettings(
        user_agent=http_t.text("user_agent", HttpSettings.user_agent),
        timeout=float(http_t.number("timeout", HttpSettings.timeout, minimum=0.1, maximum=_HOUR_S)),
        # Past these upper bounds a "cap" caps nothing, and the work grows with what a source
        # sends (each tag is a feed of its own).
        max_tags_per_item=http_t.number(
            "max_tags_per_item", 50, minimum=0, maximum=1000, integer=True
        ),
        max_title_chars=http_t.number(
            "max_title_chars", 1000, minimum=20, maximum=100_000, integer=True
        ),
        per_host_delay_seconds=float(
            http_t.number(
                "per_host_delay_seconds", HttpSettings.per_host_delay_seconds, minimum=0, maximum=60
            )
        ),
    )
    templates = root.path_value("templates", None)
    if templates is not None and not templates.is_dir():
        raise root.error("templates", f"is not a directory: {templates}")
    for message in deprecations:
        log.warning("%s", message)
    return Config(
        file=file,
        newsletter=nl,
        sources=sources,
        schedule=schedule,
        feeds=feeds,
        digest=digest,
        mail=mail,
        storage=storage,
        http=http,
        templates_dir=templates,
        web=web,
        deprecations=tuple(deprecations),
    )


def _newsletter(t: Table) -> NewsletterSettings:
    if not t.data:
        raise t.loader.error(["newsletter"], "the [newsletter] table is required")
    t.allow(
        "title",
        "site_url",
        "sender",
        "postal_address",
        "description",
        "language",
        "reply_to",
        "timezone",
        "secret_env",
        "previous_secrets_env",
    )
    site_url = t.text("site_url")
    if not is_http_url(site_url):
        raise t.error("site_url", f"expected an absolute http(s) URL, got {site_url!r}")
    if not site_url.endswith("/"):
        site_url += "/"
    sender = t.header_text("sender")
    name, address = parseaddr(sender)
    try:
        address = validate_address(address)
    except SubscriberError as e:
        raise t.error("sender", f'expected "Name <address@example.com>": {e.message}') from e
    reply_to = t.header_text("reply_to", None)
    if reply_to is not None:
        try:
            reply_to = validate_address(parseaddr(reply_to)[1])
        except SubscriberError as e:
            raise t.error("reply_to", e.message) from e
    tz = t.text("timezone", "UTC")
    _check_timezone(t, "timezone", tz)
    secret_env = t.env_name("secret_env", "NEWSLETTER_SECRET")
    previous_secrets_env = t.env_name("previous_secrets_env", "NEWSLETTER_PREVIOUS_SECRETS")
    if previous_secrets_env == secret_env:
        raise t.error("previous_secrets_env", "must name another variable than secret_env")
    title = t.header_text("title")
    settings = NewsletterSettings(
        title=title,
        site_url=site_url,
        sender_name=name or title,
        sender_email=address,
        postal_address=t.text("postal_address"),
        description=t.text("description", "", nonempty=False),
        language=t.text("language", "en"),
        reply_to=reply_to,
        timezone=tz,
        secret_env=secret_env,
        previous_secrets_env=previous_secrets_env,
    )
    return settings


def _sources(root: Table, loader: _Loader) -> tuple[SourceConfig, ...]:
    """The keys every source has; the kind's settings class parses the rest of its table."""
    raw = root.get("sources", list, [], "an array of tables ([[sources]])")
    out: list[SourceConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise loader.error(["sources", i], "expected a table ([[sources]])")
        t = Table(item, ["sources", i], loader)
        name = t.text("name")
        if name in names:
            raise t.error("name", f"duplicate source name {name!r}")
        names.add(name)
        kind = t.text("kind")
        try:
            settings = kind_settings(kind)
        except ConfigError as e:
            raise t.error("kind", e.message) from e
        if settings is None:
            raise t.error("kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        options = settings.parse(t)
        out.append(
            SourceConfig(
                name=name, kind=kind, options=options, enabled=t.get("enabled", bool, True)
            )
        )
    return tuple(out)


def _schedule(t: Table, default_tz: str) -> ScheduleSettings:
    t.allow(
        "gather_interval_minutes",
        "digest_cron",
        "timezone",
        "misfire_grace_seconds",
        "lease_seconds",
        "stop_timeout_seconds",
    )
    tz = t.text("timezone", default_tz)
    _check_timezone(t, "timezone", tz)
    cron = t.text("digest_cron", ScheduleSettings.digest_cron)
    try:
        Crontab(cron)
    except ValueError as e:
        raise t.error("digest_cron", f"not a valid crontab expression ({e})") from e
    settings = ScheduleSettings(
        gather_interval_minutes=t.number(
            "gather_interval_minutes", 30, minimum=1, maximum=_WEEK_S // 60, integer=True
        ),
        digest_cron=cron,
        timezone=tz,
        misfire_grace_seconds=t.number(
            "misfire_grace_seconds", 3600, minimum=1, maximum=_WEEK_S, integer=True
        ),
        lease_seconds=t.number(
            "lease_seconds", ScheduleSettings.lease_seconds, minimum=1, maximum=_DAY_S
        ),
        stop_timeout_seconds=t.number(
            "stop_timeout_seconds",
            ScheduleSettings.stop_timeout_seconds,
            minimum=0,
            maximum=_DAY_S,
        ),
    )
    return settings


def _digest(t: Table) -> DigestSettings:
    t.allow(
        "lookback_hours",
        "max_items",
        "section_by",
        "subject",
        "preheader",
        "greeting_fallback",
        "note_file",
        "group",
        "group_min_overlap",
        "group_min_shared",
        "group_max_df",
        "group_window_hours",
        "mode",
        "per_item_max",
        "per_item_subject",
    )
    mode = t.text("mode", "digest")
    if mode not in DIGEST_MODES:
        raise t.error("mode", f"expected one of {', '.join(DIGEST_MODES)}, got {mode!r}")
    section_by = t.text("section_by", "source")
    if section_by not in SECTION_BY:
        raise t.error("section_by", f"expected one of {', '.join(SECTION_BY)}, got {section_by!r}")
    settings = DigestSettings(
        lookback_hours=float(
            # The example project looks 100,000 hours back to reach its fixed 2026 dates.
            t.number("lookback_hours", 24.0, minimum=0, maximum=1_000_000)
        ),
        max_items=t.number("max_items", 30, minimum=1, maximum=1_000, integer=True),
        section_by=section_by,
        subject=t.text("subject", DigestSettings.subject),
        preheader=t.text("preheader", DigestSettings.preheader),
        greeting_fallback=t.text("greeting_fallback", "there"),
        note_file=t.path_value("note_file", None),
        group=_grouping(t),
        mode=mode,
        per_item_max=t.number("per_item_max", 5, minimum=1, maximum=1_000, integer=True),
        per_item_subject=t.text("per_item_subject", DigestSettings.per_item_subject),
    )
    return settings


def _grouping(t: Table) -> GroupSettings:
    """``[digest] group*``: the story grouping rule's switch and thresholds."""
    d = GroupSettings()
    return GroupSettings(
        enabled=t.get("group", bool, d.enabled),
        # Above 1 nothing could group; 0 would group anything sharing min_shared shingles.
        min_overlap=float(t.number("group_min_overlap", d.min_overlap, minimum=0.01, maximum=1)),
        min_shared=t.number(
            "group_min_shared", d.min_shared, minimum=1, maximum=10_000, integer=True
        ),
        # A shingle in two articles is what makes a pair: a ceiling below that ignores all.
        max_df=t.number("group_max_df", d.max_df, minimum=2, maximum=1_000_000, integer=True),
        window_hours=float(
            t.number("group_window_hours", d.window_hours, minimum=1, maximum=_YEAR_H)
        ),
    )


def _mail(
    t: Table, legacy_hooks: dict[str, dict[str, str]], deprecations: list[str]
) -> MailSettings:
    """``[mail]``'s common keys, then each backend's table, parsed by the backend's own
    ``Settings`` class found through the registry (``newsletter.mail.BACKENDS``)."""
    from newsletter.mail import BACKENDS, settings_class

    backend = t.get("backend", str, "outbox", "a string")
    if backend not in BACKENDS:
        raise t.error("backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    tables = {k for k, v in t.data.items() if k in BACKENDS and isinstance(v, dict)}
    flat = {k: v for k, v in t.data.items() if k not in MAIL_COMMON_KEYS and k not in tables}
    if flat:
        _legacy_mail_keys(t, backend, flat, tables, deprecations)
    rate = t.number("rate_limit", None, minimum=0.001, maximum=1_000_000)
    providers: dict[str, Any] = {}
    for name in sorted(tables | {backend} | set(legacy_hooks)):
        selected = name == backend
        if name in tables:
            sub = t.table(name)
        elif selected and flat:  # the old layout: the backend's keys right in [mail]
            sub = Table(flat, t.path, t.loader)
        else:
            sub = Table({}, [*t.path, name], t.loader)
        moved = legacy_hooks.get(name, {})
        both = sorted(set(moved) & set(sub.data))
        if both:
            raise sub.error(both[0], "is also given in [web] (the old place); keep this one")
        if moved:
            sub = Table({**sub.data, **moved}, sub.path, sub.loader)
        sub.owner = f"the {name!r} backend"
        providers[name] = settings_class(name).parse(sub, selected=selected)
    return MailSettings(
        backend=backend,
        batch_size=t.number("batch_size", None, minimum=1, maximum=100_000, integer=True),
        concurrency=t.number("concurrency", 4, minimum=1, maximum=256, integer=True),
        rate_limit=float(rate) if rate is not None else None,
        providers=providers,
    )


def _legacy_mail_keys(
    t: Table, backend: str, flat: dict[str, Any], tables: set[str], deprecations: list[str]
) -> None:
    """The layout before ``[mail.<backend>]`` tables put the backend's keys in ``[mail]``:
    still read (one release), with a warning that prints the table to write instead."""
    from newsletter.mail import BACKENDS, settings_class

    first = next(iter(flat))
    if backend in tables:
        raise t.error(first, f"belongs in [mail.{backend}] (or give no [mail.{backend}] table)")
    own = {f.name for f in fields(settings_class(backend))}
    for key in flat:
        if key in own:
            continue
        for other in BACKENDS:
            if other != backend and key in {f.name for f in fields(settings_class(other))}:
                raise t.error(key, f"is not used by the {backend!r} backend")
    table = "\n".join(f"{key} = {_toml_value(value)}" for key, value in flat.items())
    where = _where(t, [*t.path, first])
    deprecations.append(
        f"{where}the backend's keys in [mail] ({', '.join(flat)}) are deprecated and will "
        f"stop working in the next release; write them in its own table:\n"
        f"[mail.{backend}]\n{table}"
    )


def _web(t: Table, deprecations: list[str]) -> tuple[WebSettings, dict[str, dict[str, str]]]:
    """``[web]``, and the webhook variables it named in the release before ``[mail.<backend>]``
    tables (by provider), which ``_mail`` reads as the provider's keys."""
    t.allow(
        "host",
        "port",
        "trusted_proxies",
        "subscribe_rate_per_minute",
        "confirm_hours",
        "purge_pending_days",
        *_LEGACY_WEBHOOK_KEYS,
    )
    legacy: dict[str, dict[str, str]] = {}
    for key, (provider, new_key) in _LEGACY_WEBHOOK_KEYS.items():
        name = t.env_name(key, None)
        if name is not None:
            legacy.setdefault(provider, {})[new_key] = name
            deprecations.append(
                f"{_where(t, [*t.path, key])}[web] {key} is deprecated and will stop working "
                f"in the next release; write it in the provider's table:\n"
                f"[mail.{provider}]\n{new_key} = {_toml_value(name)}"
            )
    postmark = legacy.get("postmark", {})
    if len(postmark) == 1:
        missing = next(
            k for k, (p, n) in _LEGACY_WEBHOOK_KEYS.items() if p == "postmark" and n not in postmark
        )
        raise t.error(missing, "the Postmark webhook needs both a user and a password variable")
    proxies = t.get(
        "trusted_proxies", list, list(WebSettings.trusted_proxies), "a list of addresses"
    )
    for proxy in proxies:
        try:
            if not isinstance(proxy, str):  # ip_network(5) would be 0.0.0.5
                raise TypeError(proxy)
            ipaddress.ip_network(proxy, strict=False)
        except (TypeError, ValueError) as e:
            raise t.error(
                "trusted_proxies",
                f"expected IP addresses or networks such as 10.0.0.0/8, got {proxy!r}",
            ) from e
    port = t.number("port", WebSettings.port, minimum=0, maximum=65535, integer=True)
    settings = WebSettings(
        host=t.text("host", WebSettings.host),
        port=port,
        trusted_proxies=tuple(proxies),
        subscribe_rate_per_minute=float(
            t.number(
                "subscribe_rate_per_minute",
                WebSettings.subscribe_rate_per_minute,
                minimum=0.1,
                maximum=1_000_000,
            )
        ),
        confirm_hours=float(
            t.number("confirm_hours", WebSettings.confirm_hours, minimum=0.1, maximum=_YEAR_H)
        ),
        purge_pending_days=float(
            t.number("purge_pending_days", WebSettings.purge_pending_days, minimum=1, maximum=3650)
        ),
    )
    if settings.purge_pending_days * 24 < settings.confirm_hours:
        raise t.error(
            "purge_pending_days",
            f"must be at least the confirmation link's lifetime (confirm_hours = "
            f"{settings.confirm_hours:g}), or a valid link could find its request gone",
        )
    return settings, legacy


def _where(t: Table, path: list[str | int]) -> str:
    """``file:line: `` of a key, for messages that are not errors."""
    line = t.loader.locator.line_of(path)
    if t.loader.file is None:
        return f"line {line}: " if line else ""
    return f"{t.loader.file}:{line}: " if line else f"{t.loader.file}: "


def _toml_value(value: Any) -> str:
    """A value as TOML writes it (the deprecation messages print tables to paste)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _storage_url(t: Table, loader: _Loader) -> str:
    url = t.text("url", None)
    path = t.path_value("path", None)
    if url is not None and path is not None:
        raise t.error("url", "give either `url` or `path`, not both")
    if url is not None:
        if "://" not in url:
            raise t.error("url", f"expected a database URL such as sqlite:///file.db, got {url!r}")
        return str(url)
    file = path or loader.resolve("newsletter.db")
    return f"sqlite:///{file}"


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL (public: the source kinds and backends check theirs with it)."""
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1" is an invalid IPv6 URL to urlsplit
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for a server database or an in-memory one)."""
    if not url.startswith("sqlite:///"):
        return None
    name = url[len("sqlite:///") :].split("?", 1)[0]
    if not name or name == ":memory:":
        return None
    return Path(name).resolve()


def _check_output_dir(t: Table, output: Path, config: Path | None, db: Path | None) -> None:
    """``newsletter serve`` publishes the output directory as ``/feeds/``: one that holds the
    database or the config (and the key files beside it) would publish them too."""
    if output.exists() and not output.is_dir():
        return  # dir_value already refused it
    top = output.resolve()
    for what, path in (("the database", db), ("the config file", config)):
        if path is not None and path.resolve().is_relative_to(top):
            raise t.error(
                "output_dir",
                f"{top} holds {what} ({path}), which `newsletter serve` would publish; "
                "choose a folder of its own",
            )


def _check_timezone(t: Table, key: str, name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise t.error(
            key, f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)"
        ) from e
