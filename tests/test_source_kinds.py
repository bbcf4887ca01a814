"""A source kind is a plugin: it brings its own settings and registers in one place.

The kind under test (``tests/_jsonl_kind.py``) is registered at runtime through the registry's
public API, or found through an installed plugin's entry point by the real CLI in a subprocess;
``newsletter.config`` is never edited. Real files, a real HTTP server on 127.0.0.1, real SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.exceptions import ConfigError
from newsletter.sources import KINDS, kind_settings, register_kind
from newsletter.storage import open_storage
from tests._http import LoopbackServer, conditional
from tests._jsonl_kind import JsonLinesSettings

ROOT = Path(__file__).resolve().parent.parent
HEAD = """\
[newsletter]
title = "T"
site_url = "https://example.com"
sender = "T <t@example.com>"
postal_address = "1 Street"

[storage]
path = "n.db"
"""
LINES = (
    b'{"id": "a", "title": "First", "url": "https://example.org/a", "content": "<p>A</p>"}\n'
    b"\n"
    b'{"id": "b", "title": "Second", "url": "https://example.org/b"}\n'
)


@pytest.fixture
def jsonl_kind() -> Iterator[str]:
    register_kind("jsonl", "tests._jsonl_kind:JsonLinesSettings")
    yield "jsonl"
    # The registry is a plain dict; later tests expect the built-in kinds only.
    del KINDS["jsonl"]


def write_config(tmp_path: Path, sources: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(HEAD + sources, encoding="utf-8")
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_a_kind_registered_at_runtime_is_configured_and_gathered(
    tmp_path: Path, server: LoopbackServer, jsonl_kind: str
) -> None:
    url = server.route("/items.jsonl", conditional(LINES, "application/jsonl"))
    (tmp_path / "local.jsonl").write_text('{"id": "c", "headline": "Third"}\n', encoding="utf-8")
    path = write_config(
        tmp_path,
        f'\n[[sources]]\nname = "remote"\nkind = "{jsonl_kind}"\nurl = "{url}"\ntimeout = 5\n'
        f'\n[[sources]]\nname = "local"\nkind = "{jsonl_kind}"\npath = "local.jsonl"\n'
        'title_key = "headline"\n',
    )

    config = load_config(path)
    assert [s.options for s in config.sources] == [
        JsonLinesSettings(url=url, timeout=5.0),
        JsonLinesSettings(path=tmp_path / "local.jsonl", title_key="headline"),
    ]
    assert [s.location for s in config.sources] == [url, str(tmp_path / "local.jsonl")]

    publisher = make_publisher(config)
    try:
        first = {r.source: r for r in publisher.gather()}
        again = {r.source: r for r in publisher.gather()}
        titles = sorted(a.title for a in publisher.storage.recent_articles(10))
    finally:
        publisher.close()
    assert [(r.ok, r.new) for r in first.values()] == [(True, 2), (True, 1)], first
    assert titles == ["First", "Second", "Third"]
    # The shared fetcher's conditional GET and file validator, reused as they are.
    assert again["remote"].not_modified and again["local"].not_modified, again
    requests_seen = server.seen("/items.jsonl")
    assert len(requests_seen) == 2
    assert requests_seen[1].headers.get("if-none-match") == '"v1"'
    assert requests_seen[0].headers["accept"] == "application/jsonl"


def test_a_registered_kinds_keys_are_checked_like_the_built_in_ones(
    tmp_path: Path, jsonl_kind: str
) -> None:
    base = '\n[[sources]]\nname = "a"\nkind = "feed"\nurl = "https://e.org/f"\n'
    typo = f'\n[[sources]]\nname = "b"\nkind = "{jsonl_kind}"\npath = "x"\ntitle_kye = "t"\n'
    path = write_config(tmp_path, base + typo)
    e = config_error(path)
    line = (HEAD + base + typo).splitlines().index('title_kye = "t"') + 1
    assert str(e) == f"{path}:{line}: sources[1].title_kye: unknown key; did you mean 'title_key'?"

    e = config_error(write_config(tmp_path, f'\n[[sources]]\nname = "b"\nkind = "{jsonl_kind}"\n'))
    assert (e.key, e.message) == (
        "sources[0].url",
        "a jsonl source needs exactly one of `url` or `path`",
    )

    e = config_error(
        write_config(
            tmp_path,
            f'\n[[sources]]\nname = "b"\nkind = "{jsonl_kind}"\npath = "x"\nmax_bytes = 9\n',
        )
    )
    assert (e.key, e.message) == ("sources[0].max_bytes", "must be at least 1024, got 9")

    e = config_error(
        write_config(tmp_path, '\n[[sources]]\nname = "b"\nkind = "csv"\npath = "x"\n')
    )
    assert (e.key, e.message) == (
        "sources[0].kind",
        "expected one of feed, folder, page, sitemap, jsonl, got 'csv'",
    )


def test_register_kind_refuses_a_taken_name_and_a_malformed_target(jsonl_kind: str) -> None:
    register_kind(jsonl_kind, "tests._jsonl_kind:JsonLinesSettings")  # the same again: allowed
    with pytest.raises(ValueError, match="already registered"):
        register_kind(jsonl_kind, "tests._jsonl_kind:OtherSettings")
    with pytest.raises(ValueError, match="expected 'module:Class'"):
        register_kind("lines", "tests._jsonl_kind")
    assert kind_settings(jsonl_kind) is JsonLinesSettings
    assert "lines" not in KINDS


def test_a_kind_whose_module_is_gone_is_a_config_error_on_its_kind_key(tmp_path: Path) -> None:
    register_kind("gone", "tests._no_such_module:Settings")
    try:
        e = config_error(write_config(tmp_path, '\n[[sources]]\nname = "g"\nkind = "gone"\n'))
    finally:
        del KINDS["gone"]
    assert e.key == "sources[0].kind"
    assert "'tests._no_such_module:Settings', which cannot be imported" in e.message


def test_a_folder_refuses_the_keys_only_a_feed_reads(tmp_path: Path) -> None:
    e = config_error(
        write_config(
            tmp_path, '\n[[sources]]\nname = "f"\nkind = "folder"\npath = "a"\ntimeout = 5\n'
        )
    )
    assert (e.key, e.message) == (
        "sources[0].timeout",
        "unknown key (known: enabled, full_content, kind, name, path)",
    )


def test_a_plugins_entry_point_brings_its_kind_to_the_cli(tmp_path: Path) -> None:
    """An installed plugin (a dist-info on the path) declares its kind as an entry point; the
    real CLI finds it when the config names the kind, with nothing registered by hand."""
    plugins = tmp_path / "plugins"
    info = plugins / "newsletter_jsonl-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: newsletter-jsonl\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[newsletter.sources]\njsonl = tests._jsonl_kind:JsonLinesSettings\n"
    )
    (tmp_path / "items.jsonl").write_bytes(LINES)
    path = write_config(
        tmp_path, '\n[[sources]]\nname = "lines"\nkind = "jsonl"\npath = "items.jsonl"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), str(ROOT)])
    env["NEWSLETTER_SECRET"] = "kinds-test-secret"
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(path), "gather"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "gathered 1 sources: 2 new" in done.stdout
    storage = open_storage(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        assert sorted(a.title for a in storage.recent_articles(10)) == ["First", "Second"]
    finally:
        storage.close()


def test_loading_a_config_imports_no_reader(example_project: Path) -> None:
    """Settings live apart from the readers: parsing a config of every built-in kind does not
    import feedparser, requests or a Markdown parser (the CLI's quick commands stay quick)."""
    code = (
        "import sys\n"
        "from newsletter.config import load_config\n"
        f"config = load_config({str(example_project)!r})\n"
        "assert {s.kind for s in config.sources} == {'feed', 'folder'}\n"
        "heavy = ('feedparser', 'requests', 'markdown_it', 'frontmatter',"
        " 'newsletter.sources.feed', 'newsletter.sources.folder')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
