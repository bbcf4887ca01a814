"""The command line as a user runs it: a real process, real files, exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def newsletter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NEWSLETTER_CONFIG"}
    env["NEWSLETTER_SECRET"] = "cli-test-secret"
    env["COLUMNS"] = "200"  # rich wraps at the terminal width; keep messages on one line
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_run_once_twice_like_make_run(example_project: Path) -> None:
    cfg = str(example_project)
    imported = newsletter(
        "--config", cfg, "subscribers", "import", str(example_project.parent / "subscribers.csv")
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported 4" in imported.stdout

    first = newsletter("--config", cfg, "run", "--once")
    assert first.returncode == 0, first.stderr
    assert "gathered 4 sources: 9 new" in first.stdout
    assert "digest 1 created and delivered (9 articles): 4 sent" in first.stdout
    feeds = example_project.parent / "feeds-out"
    assert sorted(p.name for p in feeds.iterdir()) == [
        "archive",
        "atom.xml",
        "feed.json",
        "rss.xml",
        "tags",
    ]
    assert len(list((example_project.parent / "outbox" / "1").glob("*.eml"))) == 4

    second = newsletter("--config", cfg, "run", "--once")
    assert second.returncode == 0, second.stderr
    assert "0 new" in second.stdout
    assert "digest: nothing sent (no new articles since the last digest)" in second.stdout
    assert len(list((example_project.parent / "outbox").rglob("*.eml"))) == 4

    status = newsletter("--config", cfg, "status")
    assert status.returncode == 0, status.stderr
    assert "Field Notes" in status.stdout
    assert "last digest: #1 sent" in status.stdout
    assert "4 sent, 0 failed" in status.stdout


def test_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text(
        '[newsletter]\ntitle = "T"\nsite_url = "https://e.com/"\nsender = "t@e.com"\n'
        'postal_address = "x"\n\n[feeds]\nmax_itmes = 3\n'
    )
    result = newsletter("--config", str(cfg), "status")
    assert result.returncode == 1
    assert f"{cfg}:8: feeds.max_itmes: unknown key; did you mean 'max_items'?" in result.stderr


def test_missing_config_suggests_init(tmp_path: Path) -> None:
    result = newsletter("status", cwd=tmp_path)
    assert result.returncode == 1
    assert "newsletter init" in result.stderr


def test_import_reports_bad_lines_and_exits_3(example_project: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text("email,name\ngood@example.com,G\nnope,N\n")
    result = newsletter("--config", str(example_project), "subscribers", "import", str(csv_file))
    assert result.returncode == 3
    assert f"{csv_file}:3: 'nope':" in result.stderr
    assert "imported 1, already present 0, rejected 1" in result.stdout
    listing = newsletter("--config", str(example_project), "subscribers", "list")
    assert listing.stdout.splitlines()[1].startswith("good@example.com,G,active,")


def test_failing_source_is_reported_and_others_continue(example_project: Path) -> None:
    with example_project.open("a") as f:
        f.write('\n[[sources]]\nname = "Gone"\nkind = "feed"\npath = "feeds/missing.xml"\n')
    # TOML arrays of tables must be contiguous with their siblings only by name; appending a
    # [[sources]] after other tables is still valid TOML.
    result = newsletter("--config", str(example_project), "gather")
    assert result.returncode == 3
    assert "source 'Gone'" in result.stderr
    assert "gathered 5 sources: 9 new" in result.stdout
    status = newsletter("--config", str(example_project), "status")
    assert status.returncode == 3
    assert "Gone" in status.stdout


def test_init_writes_a_valid_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = newsletter("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "newsletter.toml").is_file()
    again = newsletter("init", cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_digest_preview_writes_the_html_that_would_be_sent(example_project: Path) -> None:
    cfg = str(example_project)
    assert newsletter("--config", cfg, "gather").returncode == 0
    out = example_project.parent / "preview.html"
    result = newsletter("--config", cfg, "digest", "--preview", str(out))
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "<html" in html.lower() and "nlvar:" not in html
    assert "Measuring twice" in html
    # preview creates nothing: the digest is still to be sent
    sent = newsletter("--config", cfg, "send")
    assert "digest 1 created" in sent.stdout


@pytest.mark.parametrize(
    "command", ["gather", "feeds", "digest", "send", "run", "status", "subscribers", "init"]
)
def test_every_command_has_help(command: str) -> None:
    result = newsletter(command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_send_dry_run_sends_nothing_and_says_where(example_project: Path) -> None:
    cfg = str(example_project)
    newsletter(
        "--config", cfg, "subscribers", "import", str(example_project.parent / "subscribers.csv")
    )
    assert newsletter("--config", cfg, "gather").returncode == 0
    dry = newsletter("--config", cfg, "send", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: a new digest, 9 articles" in dry.stdout
    assert f"4 messages to outbox ({example_project.parent / 'outbox'}), 1 batches" in dry.stdout
    assert "first: ada@example.com, grace@example.org" in dry.stdout
    assert not (example_project.parent / "outbox").exists()
    status = newsletter("--config", cfg, "status")
    assert "last digest: none yet" in status.stdout
    real = newsletter("--config", cfg, "send")
    assert "digest 1 created and delivered (9 articles): 4 sent" in real.stdout


def test_send_test_goes_outside_the_ledger(example_project: Path) -> None:
    cfg = str(example_project)
    assert newsletter("--config", cfg, "gather").returncode == 0
    result = newsletter("--config", cfg, "send", "--test", "Editor@Example.com")
    assert result.returncode == 0, result.stderr
    assert "test message sent to Editor@example.com through outbox" in result.stdout
    files = list((example_project.parent / "outbox").rglob("*.eml"))
    assert len(files) == 1 and "Editor@example.com" in files[0].name
    assert "last digest: none yet" in newsletter("--config", cfg, "status").stdout
    bad = newsletter("--config", cfg, "send", "--test", "not-an-address")
    assert bad.returncode == 1
    assert "not-an-address" in bad.stderr
