"""Hostile input at the command line: remote text that looks like console markup or carries
control characters, config errors with brackets in them, bad arguments and paths.

The CLI runs as a real process against a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests._http import LoopbackServer, Reply
from tests.test_cli import newsletter

MINIMAL = """\
[newsletter]
title = "T"
site_url = "https://example.com"
sender = "T <t@example.com>"
postal_address = "1 Street"
"""

# A feed whose every title is something rich would read as a tag: "[/bold]" closes a tag that
# was never opened and raises MarkupError when printed with markup on.
HOSTILE_RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>[/bold]</title><link>http://example.com/</link>
<description>d</description>
<item><title>[/b] first [bold]item</title><link>http://example.com/1</link><guid>g1</guid>
<pubDate>Sun, 22 Nov 2026 07:00:00 GMT</pubDate><description>[/x] body</description></item>
<item><title>[link=http://x]second[/link] :smile:</title><link>http://example.com/2</link>
<guid>g2</guid><pubDate>Sun, 22 Nov 2026 08:00:00 GMT</pubDate></item>
</channel></rss>"""


@pytest.fixture
def hostile(tmp_path: Path, server: LoopbackServer) -> Path:
    """A project with three sources on a loopback server: one answers ``503 [/nope]``, one
    declares ``charset="[/x]"``, one serves bracketed titles. Source names have brackets too."""
    down = server.route(
        "/down", Reply(503, b"no", {"Content-Type": "text/plain"}, reason="[/nope]")
    )
    charset = server.route(
        "/charset", Reply(200, HOSTILE_RSS, {"Content-Type": 'application/rss+xml; charset="[/x]"'})
    )
    titles = server.route(
        "/titles", Reply(200, HOSTILE_RSS, {"Content-Type": "application/rss+xml"})
    )
    config = tmp_path / "newsletter.toml"
    config.write_text(
        MINIMAL
        + f'\n[[sources]]\nname = "Down [/i]"\nkind = "feed"\nurl = "{down}"\n'
        + f'\n[[sources]]\nname = "Charset [red]"\nkind = "feed"\nurl = "{charset}"\n'
        + f'\n[[sources]]\nname = "Titles [/]"\nkind = "feed"\nurl = "{titles}"\n'
        # The feed's dates are fixed; look far enough back for them to count as new.
        + "\n[digest]\nlookback_hours = 100000\n"
    )
    return config


def gathered(config: Path) -> Path:
    """Gather in this process: the state a command under test starts from, without paying for
    one more CLI process start."""
    with make_publisher(load_config(config)) as publisher:
        publisher.gather()
    return config


def assert_clean(result: object) -> None:
    stderr = getattr(result, "stderr", "")
    assert "Traceback" not in stderr and "MarkupError" not in stderr, stderr


def test_gather_names_the_source_and_shows_bracketed_text(hostile: Path) -> None:
    result = newsletter("--config", str(hostile), "gather")
    assert_clean(result)
    assert result.returncode == 3  # a source failed; the others were done
    assert "gathered 3 sources: 4 new" in result.stdout
    assert "failed source 'Down [/i]'" in result.stderr
    assert "HTTP 503 [/nope]" in result.stderr
    assert "warning source 'Charset [red]': document declared as [/x]" in result.stderr


def test_status_shows_bracketed_names_and_errors(hostile: Path) -> None:
    result = newsletter("--config", str(gathered(hostile)), "status")
    assert_clean(result)
    assert result.returncode == 3
    for text in ("Down [/i]", "HTTP 503 [/nope]", "Charset [red]", "[/x]", "Titles [/]"):
        assert text in result.stdout


def test_digest_preview_shows_bracketed_titles(hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.html"
    result = newsletter("--config", str(gathered(hostile)), "digest", "--preview", str(out))
    assert_clean(result)
    assert result.returncode == 0
    assert "subject: T: [link=http://x]second[/link] :smile: (+3 more)" in result.stdout
    assert "  - [/b] first [bold]item (Titles [/])" in result.stdout
    assert "  - [link=http://x]second[/link] :smile: (Charset [red])" in result.stdout
    assert "[/b] first [bold]item" in out.read_text()


def test_run_once_goes_through_and_names_the_source(hostile: Path) -> None:
    result = newsletter("--config", str(hostile), "run", "--once")
    assert_clean(result)
    assert result.returncode == 3
    assert "failed source 'Down [/i]'" in result.stderr and "[/nope]" in result.stderr
    assert "feeds: wrote rss.xml, atom.xml, feed.json" in result.stdout
    assert "digest 1 created and delivered (4 articles)" in result.stdout


def test_control_characters_from_a_source_are_shown_escaped(
    tmp_path: Path, server: LoopbackServer
) -> None:
    # An ESC in a reason phrase would reach the operator's terminal as an escape sequence.
    url = server.route("/esc", Reply(503, b"", reason="bad \x1b[2J gone"))
    config = tmp_path / "newsletter.toml"
    config.write_text(MINIMAL + f'\n[[sources]]\nname = "E"\nkind = "feed"\nurl = "{url}"\n')
    result = newsletter("--config", str(config), "gather")
    assert_clean(result)
    assert result.returncode == 3
    assert "HTTP 503 bad \\x1b[2J gone" in result.stderr
    assert "\x1b" not in result.stderr


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("[feeds]\nmax_items = 3\n", "newsletter: the [newsletter] table is required"),
        ("sources = 3\n" + MINIMAL, "sources: expected an array of tables ([[sources]]), got"),
        ("sources = [1]\n" + MINIMAL, "sources[0]: expected a table ([[sources]])"),
    ],
)
def test_config_errors_keep_their_brackets(tmp_path: Path, text: str, shown: str) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(text)
    result = newsletter("--config", str(config), "digest", "--force")
    assert_clean(result)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {config}")
    assert shown in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- command-line arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "preview"])
def test_port_out_of_range_is_refused_by_the_parser(example_project: Path, command: str) -> None:
    result = newsletter("--config", str(example_project), command, "--port", "99999")
    assert result.returncode == 2
    assert "99999 is not in the range 0<=x<=65535" in result.stderr
    assert "serving" not in result.stdout and "preview:" not in result.stdout


def test_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    result = newsletter("init", "/proc/x.toml", cwd=tmp_path)
    assert_clean(result)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot write /proc/x.toml: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_digest_output_to_a_special_file_is_one_line(example_project: Path) -> None:
    cfg = str(gathered(example_project))
    for option in ("--text", "--preview"):
        result = newsletter("--config", cfg, "digest", option, "/proc/version")
        assert_clean(result)
        assert result.returncode == 1
        assert "error: cannot write /proc/version: " in result.stderr


def test_import_of_an_unreadable_file_is_one_line(example_project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    result = newsletter("--config", str(example_project), "subscribers", "import", str(folder))
    assert_clean(result)
    assert result.returncode == 2  # click refuses a directory before we open it
    assert "is a directory" in result.stderr


def test_import_of_a_file_that_fails_on_read_is_one_line(example_project: Path) -> None:
    # The process's own memory opens fine and fails on the first read (EIO).
    cfg = str(example_project)
    result = newsletter("--config", cfg, "subscribers", "import", "/proc/self/mem")
    assert_clean(result)
    assert result.returncode == 1
    assert result.stderr == "error: cannot read /proc/self/mem: Input/output error\n"


def test_init_below_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    result = newsletter("init", str(tmp_path / "plain" / "x.toml"))
    assert_clean(result)
    assert result.returncode == 1
    assert "a file stands in the way of its folder" in result.stderr
