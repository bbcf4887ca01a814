"""Editing a copy of the example project for a test: its tables, its mail backend, its
database, new articles; and running the real command on it in a child process (``serve``
too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from newsletter.config import MAIL_COMMON_KEYS
from tests.emulators import TOKEN, Emulator


def set_table(config: Path, table: str, body: str) -> None:
    """Replace the body of ``[table]`` (added at the end when absent)."""
    text = config.read_text()
    match = re.search(rf"(?ms)^\[{re.escape(table)}\]\n.*?(?=^\[|\Z)", text)
    block = f"[{table}]\n{body.strip()}\n\n"
    text = text[: match.start()] + block + text[match.end() :] if match else text + "\n" + block
    config.write_text(text)


def use_emulator(config: Path, emulator: Emulator, **extra: object) -> None:
    """Send through ``emulator`` (its name from its class): ``[mail]`` names it and takes the
    common keys of ``extra``, ``[mail.<name>]`` the rest."""
    name = type(emulator).__name__.removesuffix("Emulator").lower()
    common = [f'backend = "{name}"']
    own = ['token_env = "MAIL_TOKEN"', f'base_url = "{emulator.base_url}"']
    if name == "mailgun":
        own.append('domain = "mg.news.example.org"')
    for key, value in extra.items():
        (common if key in MAIL_COMMON_KEYS else own).append(f"{key} = {_toml(value)}")
    set_table(config, "mail", "\n".join(common))
    set_table(config, f"mail.{name}", "\n".join(own))


def use_database(config: Path, url: str) -> None:
    set_table(config, "storage", f'url = "{url}"')


def add_article(config: Path, slug: str, title: str, when: datetime) -> Path:
    """A new Markdown article in the example's editorial folder."""
    path = config.parent / "articles" / f"{slug}.md"
    path.write_text(
        f"---\ntitle: {title}\ndate: {when.isoformat()}\nauthor: Test Desk\n---\n\n"
        f"Body of {title}.\n"
    )
    return path


def command(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``newsletter --config CONFIG ARGS`` as a child process (its own process group)."""
    full_env = {
        **os.environ,
        "NEWSLETTER_SECRET": "test-secret",
        "MAIL_TOKEN": TOKEN,
        "COLUMNS": "200",
        # SIGABRT then prints every thread's stack: a child that does not exit in time tells
        # where it waits (tests/test_nodes.py ``finish``).
        "PYTHONFAULTHANDLER": "1",
        **(env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        text=True,
    )


@contextmanager
def serving(config: Path, env: dict[str, str], *options: str) -> Iterator[tuple[str, Path]]:
    """``newsletter serve --port 0``: its base URL, and the file its stderr goes to (read it
    once the block is left, the server stopped)."""
    log = config.parent / f"serve-{os.urandom(4).hex()}.log"
    args = ["--config", str(config), *options, "serve", "--port", "0"]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "newsletter", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once the socket is bound
            match = re.search(r"serving: (http://127\.0\.0\.1:\d+)/", line)
            assert match, line + log.read_text()
            yield match.group(1), log
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=20)
    assert process.returncode == 0, log.read_text()


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f'"{value}"'
