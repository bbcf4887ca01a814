"""Fuzzing the two inputs an operator hands over whole: the config file and a subscribers CSV.

The config loader, given any TOML document built from the keys it knows with values of any
type, returns a ``Config`` or raises a ``ConfigError`` that starts with the file's path;
nothing else. The CSV importer, given any bytes in a real file and a real SQLite database,
returns an ``ImportReport`` and imports every valid row. Budgets are bounded so ``make test``
stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.config import Config, load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import ConfigError
from newsletter.mail import BACKENDS, settings_class
from newsletter.sources import COMMON_KEYS, KINDS, kind_settings
from newsletter.types import ImportReport, SubscriberStatus

# --- a TOML writer small enough to trust (tomllib reads; nothing in the stdlib writes) ------------


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # TOML cannot hold a lone surrogate
            out.append("\\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


def _toml_document(tables: dict[str, Any]) -> str:
    lines: list[str] = []
    top = [f"{k} = {_toml_value(v)}" for k, v in tables.items() if not isinstance(v, dict | list)]
    for name, body in tables.items():
        if name == "sources":
            for source in body:
                lines.append("[[sources]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in source.items()]
        elif isinstance(body, dict):  # (a list elsewhere than sources is not drawn)
            if "." in name and not body:
                continue  # an empty [mail.<backend>] would refuse [mail]'s flat keys
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    # Top-level keys come before the first table header, or they would belong to it.
    return "\n".join(top + lines) + "\n"


# --- strategies ----------------------------------------------------------------------------------


def _source_keys() -> tuple[str, ...]:
    """Every key some source kind reads: the registry's, so a new kind is fuzzed too."""
    keys = list(COMMON_KEYS)
    for kind in KINDS:
        settings = kind_settings(kind)
        assert settings is not None
        keys += [k for k in settings.keys if k not in keys]
    return tuple(keys)


KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "newsletter": (
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
    ),
    "sources": _source_keys(),
    "schedule": (
        "gather_interval_minutes",
        "digest_cron",
        "timezone",
        "misfire_grace_seconds",
        "lease_seconds",
        "stop_timeout_seconds",
    ),
    "feeds": ("output_dir", "max_items", "ttl_minutes", "archive_page_size", "websub_hub"),
    "digest": (
        "lookback_hours",
        "max_items",
        "section_by",
        "subject",
        "preheader",
        "greeting_fallback",
        "group",
        "group_min_overlap",
        "group_min_shared",
        "group_max_df",
        "group_window_hours",
    ),
    # The common keys, and (the deprecated flat layout) every backend's own keys in [mail].
    "mail": (
        "backend",
        "batch_size",
        "concurrency",
        "rate_limit",
        *sorted({f.name for n in BACKENDS for f in dataclasses.fields(settings_class(n))}),
    ),
    # Each backend's table, its keys read from the backend's own Settings.
    **{f"mail.{n}": tuple(f.name for f in dataclasses.fields(settings_class(n))) for n in BACKENDS},
    "storage": ("url", "path"),
    "http": ("user_agent", "timeout"),
    "web": (
        "host",
        "port",
        "trusted_proxies",
        "subscribe_rate_per_minute",
        "confirm_hours",
        "postmark_webhook_user_env",
        "postmark_webhook_password_env",
        "sendgrid_webhook_key_env",
        "mailgun_signing_key_env",
    ),
}

# Plausible values first, so that a good share of documents get past the first key and the
# checks deep inside the loader are reached too.
PLAUSIBLE = st.sampled_from(
    [
        "T",
        "https://example.com/",
        "http://[::1",
        "T <t@example.com>",
        "t@example.com\r\nBcc: x@example.com",
        "=?utf-8?q?x?=@example.com",
        "1 Street",
        "feed",
        "folder",
        "UTC",
        "Mars/Olympus",
        "0 7 * * *",
        "99 99 * * *",
        "*/0 * * * *",
        "smtp",
        "outbox",
        "postmark",
        "starttls",
        "none",
        "source",
        "tag",
        ".",
        "..",
        "/",
        "feeds",
        "a\x00b",
        "sqlite:///x.db",
        "postgresql://h/db",
        "NAME_ENV",
        "us",
        "eu",
        "10.0.0.0/8",
        "{{ oops",
    ]
)
NUMBER_KEYS = frozenset(
    {
        "timeout",
        "max_bytes",
        "gather_interval_minutes",
        "misfire_grace_seconds",
        "lease_seconds",
        "stop_timeout_seconds",
        "max_items",
        "ttl_minutes",
        "archive_page_size",
        "lookback_hours",
        "batch_size",
        "concurrency",
        "rate_limit",
        "max_retries",
        "port",
        "subscribe_rate_per_minute",
        "confirm_hours",
        "group_min_overlap",
        "group_min_shared",
        "group_max_df",
        "group_window_hours",
    }
)
NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e10, 1e300, 0.05, 2.5]),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 65535, 65536, 99999, 2**31, 2**63 - 1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        PLAUSIBLE,
        NUMBERS,
        st.booleans(),
        st.text(max_size=30),
        st.datetimes(timezones=st.just(UTC)),
        st.dates(),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "name"]), inner, max_size=2)
    ),
    max_leaves=6,
)


# A document every check accepts; each example changes a few of its keys, so the checks deep
# inside the loader (ranges, paths, cron, addresses) are reached, not only the first key.
BASELINE: dict[str, Any] = {
    "newsletter": {
        "title": "T",
        "site_url": "https://example.com",
        "sender": "T <t@example.com>",
        "postal_address": "1 Street",
    },
    "sources": [{"name": "s", "kind": "feed", "url": "https://example.com/feed"}],
    "schedule": {"gather_interval_minutes": 30, "digest_cron": "0 7 * * *"},
    "feeds": {"output_dir": "out", "max_items": 50},
    "digest": {"lookback_hours": 24, "max_items": 30},
    "mail": {"backend": "outbox"},
    "storage": {"path": "n.db"},
    "http": {"timeout": 20},
    "web": {"port": 8080},
    **{f"mail.{n}": {} for n in BACKENDS},
}


@st.composite
def documents(draw: st.DrawFn) -> str:
    tables: dict[str, Any] = {
        name: [dict(s) for s in body] if isinstance(body, list) else dict(body)
        for name, body in BASELINE.items()
    }
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        name = draw(st.sampled_from(sorted(KNOWN_KEYS)))
        target = tables[name][0] if name == "sources" else tables[name]
        key = draw(st.sampled_from(KNOWN_KEYS[name]))
        action = draw(st.sampled_from(["set", "set", "set", "set", "drop", "unknown"]))
        if action == "set":
            # Mostly a value of the key's own type (so the range and content checks are the
            # ones tried), sometimes anything at all.
            typed = NUMBERS if key in NUMBER_KEYS else (PLAUSIBLE | st.text(max_size=20))
            target[key] = draw(st.sampled_from([typed, typed, typed, VALUES]).flatmap(lambda x: x))
        elif action == "drop":
            target.pop(key, None)
        else:
            target["max_itmes"] = draw(VALUES)
    if draw(st.integers(min_value=0, max_value=9)) == 9:
        tables["templates"] = draw(VALUES)
    if draw(st.integers(min_value=0, max_value=9)) == 9:
        tables["sources"].append(dict(tables["sources"][0]))  # a duplicate name
    return _toml_document(tables)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "newsletter.toml"


@settings(max_examples=300, deadline=None)
@given(text=documents())
def test_config_loader_returns_a_config_or_a_config_error(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    try:
        config = load_config(config_file)
    except ConfigError as e:
        assert str(e).startswith(str(config_file.resolve())), str(e)
        assert "\n" not in str(e).split(": ", 1)[0]
    else:
        assert_usable(config)


def _numbers(value: object) -> Iterator[int | float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _numbers(getattr(value, f.name))
    elif isinstance(value, tuple):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _numbers(item)


def assert_usable(config: Config) -> None:
    """What a loaded config promises the rest of the program: nothing here can raise later."""
    assert isinstance(config, Config)
    for number in _numbers(config):
        assert math.isfinite(number) and abs(number) < 2**31, number
    timedelta(hours=config.digest.lookback_hours)
    timedelta(minutes=config.schedule.gather_interval_minutes)
    smtp = config.mail.provider("smtp")
    assert smtp is None or smtp.port is None or 1 <= smtp.port <= 65535
    assert config.mail.provider(config.mail.backend) is not None
    assert 0 <= config.web.port <= 65535
    nl = config.newsletter
    for header in (nl.title, nl.sender, nl.reply_to or ""):
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in header), header
    output = config.feeds.output_dir
    assert not output.exists() or output.is_dir()
    assert config.file is not None and not config.file.is_relative_to(output.resolve())
    if config.storage.url.startswith("sqlite:///"):
        db = Path(config.storage.url.removeprefix("sqlite:///"))
        assert not db.resolve().is_relative_to(output.resolve())


@settings(max_examples=100, deadline=None)
@given(
    raw=st.binary(max_size=400)
    | st.text(alphabet=string.printable + "\x00\x1b\x7f\x85é\u2028\ud800", max_size=200).map(
        lambda s: s.encode("utf-8", "surrogatepass")
    )
)
def test_config_loader_on_any_bytes(config_file: Path, raw: bytes) -> None:
    config_file.write_bytes(raw)
    try:
        load_config(config_file)
    except ConfigError as e:
        assert str(e).startswith(str(config_file.resolve())), str(e)


# --- the CSV importer ----------------------------------------------------------------------------


@pytest.fixture
def publisher(example_project: Path) -> Iterator[Publisher]:
    with make_publisher(load_config(example_project)) as pub:
        yield pub


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=600))
def test_import_of_any_bytes_never_raises(publisher: Publisher, tmp_path: Path, raw: bytes) -> None:
    csv_file = tmp_path / "any.csv"
    csv_file.write_bytes(raw)
    before = publisher.storage.count_subscribers()
    report = publisher.import_subscribers(csv_file)
    assert isinstance(report, ImportReport)
    assert publisher.storage.count_subscribers() - before == report.added
    for line, _, reason in report.rejected:
        assert line >= 1 and reason


GARBAGE = st.binary(max_size=40).map(
    # Garbage confined to its own line: no line break, and no quote that would open a field
    # running into the next rows.
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(b'"', b"")
)


@st.composite
def mixed_csv(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    rows: list[bytes] = []
    valid: list[str] = []
    for i in range(draw(st.integers(min_value=1, max_value=12))):
        if draw(st.booleans()):
            local = draw(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8))
            address = f"{local}.{i}@example.com"
            name = draw(st.sampled_from(["", "Ada", "Léa Ünal", "Lovelace, Ada"]))
            rows.append(f'{address},"{name}"'.encode() if name else address.encode())
            valid.append(address)
        else:
            rows.append(draw(GARBAGE))
    return b"\n".join(rows) + b"\n", valid


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mixed_csv())
def test_import_keeps_every_valid_row_among_garbage(
    publisher: Publisher, tmp_path: Path, case: tuple[bytes, list[str]]
) -> None:
    data, valid = case
    csv_file = tmp_path / "mixed.csv"
    csv_file.write_bytes(data)
    report = publisher.import_subscribers(csv_file)
    assert isinstance(report, ImportReport)
    active = {s.email for s in publisher.subscribers(SubscriberStatus.ACTIVE)}
    assert set(valid) <= active
