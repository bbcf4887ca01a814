"""Shared fixtures: a copy of the shipped example project in a temp dir, a fixed clock, and a
real PostgreSQL server with a fresh database per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from sqlalchemy.engine import make_url

from newsletter import clock
from tests._http import LoopbackServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from tests._postgres import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def example_project(tmp_path: Path) -> Path:
    """examples/ copied to tmp_path/project, with feeds and outbox kept inside the copy.

    Returns the path of the copied config file.
    """
    project = tmp_path / "project"
    shutil.copytree(EXAMPLES, project, ignore=shutil.ignore_patterns("*.db*"))
    config = project / "newsletter.toml"
    text = config.read_text()
    text = text.replace('output_dir = "../feeds"', 'output_dir = "feeds-out"')
    text = text.replace('outbox_dir = "../outbox"', 'outbox_dir = "outbox"')
    config.write_text(text)
    return config


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A loopback HTTP server whose routes each test sets, recording every request."""
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def session(server: LoopbackServer) -> Iterator[requests.Session]:
    # Depends on ``server`` so the client's connections close before the server stops.
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright, one per test module. A missing browser fails
    the tests with the reason (never a silent skip)."""
    from playwright.sync_api import sync_playwright

    from tests._browser import BrowserMissing, launch

    try:
        with sync_playwright() as playwright:
            chromium = launch(playwright)
            yield chromium
            chromium.close()
    except BrowserMissing as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def fixed_clock() -> Iterator[list[datetime]]:
    """Freeze ``clock.now()``; tests move time by assigning ``fixed_clock[0]``."""
    current = [datetime(2026, 11, 22, 8, 0, tzinfo=UTC)]
    clock.set_now(lambda: current[0])
    yield current
    clock.set_now(None)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (see tests/_postgres.py; set
    ``$NEWSLETTER_TEST_POSTGRES`` to use an existing one). A server that cannot be had fails
    the tests that need it with the reason (never a silent skip)."""
    try:
        from tests._postgres import PostgresServer, PostgresUnavailable
    except ImportError as e:
        reason = f"{e}: install the test extras (`pip install -e '.[test]'`)"
    else:
        try:
            server = PostgresServer()
            server.start()
            reason = ""
        except PostgresUnavailable as e:
            reason = str(e)
    if reason:  # failed outside the except blocks, so the report is the reason alone
        pytest.fail(reason, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database for this test alone; dropped afterwards
    (connections the test left open are ended)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(make_url(url).database or "")
