"""Config loading: every mistake names the file, the line and the key path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from newsletter.config import find_config, load_config, parse_config
from newsletter.exceptions import ConfigError

from .conftest import EXAMPLES

MINIMAL = """\
[newsletter]
title = "T"
site_url = "https://example.com"
sender = "T <t@example.com>"
postal_address = "1 Street"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_example_config_loads_with_paths_relative_to_the_file() -> None:
    config = load_config(EXAMPLES / "newsletter.toml")
    assert config.newsletter.site_url == "https://news.example.org/"
    assert config.newsletter.sender_email == "weekly@news.example.org"
    assert [s.kind for s in config.sources] == ["folder", "feed", "feed", "feed"]
    assert config.sources[0].options.path == (EXAMPLES / "articles").resolve()
    assert config.feeds.output_dir == (EXAMPLES.parent / "feeds").resolve()
    assert config.storage.url == f"sqlite:///{(EXAMPLES / 'newsletter.db').resolve()}"
    assert config.schedule.timezone == "Europe/Berlin"  # inherited from [newsletter]


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.newsletter.site_url == "https://example.com/"
    assert config.mail.backend == "outbox"
    assert config.mail.provider("outbox").outbox_dir == tmp_path / "outbox"
    assert config.digest.lookback_hours == 24
    assert config.sources == ()
    assert config.newsletter.list_id == "t.example.com"


def test_starter_config_is_valid(tmp_path: Path) -> None:
    text = resources.files("newsletter").joinpath("starter.toml").read_text()
    config = parse_config(text, tmp_path / "newsletter.toml")
    assert config.sources[0].options.url == "https://blog.python.org/feeds/posts/default"


def test_unknown_key_names_file_line_key_and_suggestion(tmp_path: Path) -> None:
    text = MINIMAL + (
        '\n[[sources]]\nname = "a"\nkind = "feed"\nurl = "https://a.example/feed"\n'
        '\n[[sources]]\nname = "b"\nkind = "feed"\nurll = "https://b.example/feed"\n'
    )
    e = error_for(tmp_path, text)
    assert e.key == "sources[1].urll"
    assert e.line == text.splitlines().index('urll = "https://b.example/feed"') + 1
    where = f"{tmp_path / 'newsletter.toml'}:{e.line}"
    assert str(e) == f"{where}: sources[1].urll: unknown key; did you mean 'url'?"


def test_wrong_type_names_expected_value(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL + '\n[feeds]\nmax_items = "ten"\n')
    assert e.key == "feeds.max_items"
    assert e.line == 8
    assert "expected a whole number, got str 'ten'" in str(e)


def test_boolean_is_not_a_number(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL + "\n[digest]\nmax_items = true\n")
    assert e.key == "digest.max_items"
    assert "boolean" in e.message


def test_missing_required_value(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL.replace('sender = "T <t@example.com>"\n', ""))
    assert e.key == "newsletter.sender"
    assert "is required" in e.message


def test_invalid_toml_reports_line(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL + "\n[feeds\nmax_items = 3\n")
    assert e.line == 7
    assert "invalid TOML" in e.message


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ('\n[schedule]\ndigest_cron = "every monday"\n', "schedule.digest_cron", "crontab"),
        ('\n[schedule]\ntimezone = "Mars/Olympus"\n', "schedule.timezone", "unknown time zone"),
        ('\n[mail]\nbackend = "carrier-pigeon"\n', "mail.backend", "expected one of outbox"),
        ('\n[[sources]]\nname = "x"\nkind = "feed"\n', "sources[0].url", "exactly one of"),
        ('\n[[sources]]\nname = "x"\nkind = "feed"\nurl = "ftp://x/y"\n', "sources[0].url", "http"),
        ('\n[[sources]]\nname = "x"\nkind = "blog"\npath = "x"\n', "sources[0].kind", "one of"),
        ("\n[feeds]\nmax_items = 0\n", "feeds.max_items", "at least 1"),
        ('\n[digest]\nsection_by = "colour"\n', "digest.section_by", "one of"),
    ],
)
def test_invalid_values(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    e = error_for(tmp_path, MINIMAL + extra)
    assert e.key == key
    assert fragment in e.message


def test_duplicate_source_names(tmp_path: Path) -> None:
    src = '\n[[sources]]\nname = "x"\nkind = "folder"\npath = "a"\n'
    e = error_for(tmp_path, MINIMAL + src + src)
    assert e.key == "sources[1].name"
    assert "duplicate" in e.message


def test_bad_sender_address(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL.replace("t@example.com", "not an address"))
    assert e.key == "newsletter.sender"


def test_secret_env_must_be_a_variable_name(tmp_path: Path) -> None:
    text = MINIMAL + 'secret_env = "hunter2 is my password"\n'
    e = error_for(tmp_path, text)
    assert e.key == "newsletter.secret_env"
    assert "hunter2" not in str(e)  # a secret pasted by mistake is not echoed back


def test_site_url_must_be_absolute(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL.replace("https://example.com", "example.com"))
    assert e.key == "newsletter.site_url"


def test_find_config_uses_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(path))
    assert find_config(None) == path
    monkeypatch.delenv("NEWSLETTER_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert find_config(None) == Path("newsletter.toml")
    path.unlink()
    with pytest.raises(ConfigError, match="newsletter init"):
        find_config(None)


def test_previous_secrets_env_must_be_another_variable_name(tmp_path: Path) -> None:
    e = error_for(tmp_path, MINIMAL + 'previous_secrets_env = "old,key"\n')
    assert e.key == "newsletter.previous_secrets_env"
    assert "old,key" not in str(e)  # secrets pasted by mistake are not echoed back
    e = error_for(tmp_path, MINIMAL + 'secret_env = "NL_KEY"\nprevious_secrets_env = "NL_KEY"\n')
    assert e.key == "newsletter.previous_secrets_env"
    assert "another variable" in e.message
