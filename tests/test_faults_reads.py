"""Readers never wait for writers (issue 9, item 4), with real processes on a real SQLite file.

Another process holds the database's write lock (``BEGIN IMMEDIATE``, then sleeps), as a
large gather does between its commits. Meanwhile ``newsletter status`` (a child process),
``/healthz`` and ``GET /unsubscribe/<token>`` on a served app must answer at once and
truthfully: they only read, and a read never waits for the write lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.storage import SqlStorage, schema
from newsletter.types import SubscriberStatus
from tests.test_storage_contract import NOW, db_url
from tests.test_web_feeds import running_site

__all__ = ["db_url"]  # the contract suite's engines, used here too

SECRET = "reads-test-secret"
HOLD_SECONDS = 25.0  # longer than any answer may take; shorter than the busy timeout (30 s)

# Takes the write lock as our writers do, writes a row, and keeps the transaction open.
HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO meta (key, value) VALUES ('holder', 'uncommitted')")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.fixture
def project(example_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example gathered, its feeds written, one subscriber and one digest sent."""
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)
    with make_publisher(load_config(example_project)) as publisher:
        publisher.gather()
        publisher.build_feeds()
        publisher.add_subscriber("reader@example.com")
        assert publisher.send_digest().sent == 1
    return example_project


@contextmanager
def write_lock_held(database: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the write lock of ``database`` until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(database), str(HOLD_SECONDS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held", holder.stderr
        yield holder
    finally:
        holder.kill()
        holder.communicate(timeout=10)  # reaps it and closes its pipes


def database_of(config: Path) -> Path:
    url = load_config(config).storage.url
    return Path(url.removeprefix("sqlite:///"))


def test_status_health_and_the_unsubscribe_page_answer_while_a_writer_holds_the_lock(
    project: Path,
) -> None:
    with make_publisher(load_config(project)) as publisher:
        subscriber = publisher.storage.get_subscriber("reader@example.com")
        assert subscriber is not None
        token = publisher.tokens.make(subscriber.id, subscriber.email)
    with running_site(project) as site:
        # Warm the site up (its Publisher opened) before the lock is taken, as a running
        # server is; the checks below are what a request does then.
        assert requests.get(site.url + "/healthz", timeout=10).status_code == 200
        with write_lock_held(database_of(project)) as holder:
            started = time.monotonic()
            health = requests.get(site.url + "/healthz", timeout=HOLD_SECONDS)
            health_took = time.monotonic() - started

            started = time.monotonic()
            page = requests.get(f"{site.url}/unsubscribe/{token}", timeout=HOLD_SECONDS)
            page_took = time.monotonic() - started

            started = time.monotonic()
            status = subprocess.run(
                [sys.executable, "-m", "newsletter", "--config", str(project), "status"],
                capture_output=True,
                text=True,
                timeout=HOLD_SECONDS + 30,
                env={**os.environ, "NEWSLETTER_SECRET": SECRET, "COLUMNS": "200"},
            )
            status_took = time.monotonic() - started
            still_held = holder.poll() is None

    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "database": True, "feeds": True}
    assert health_took < 2.0, health_took

    assert page.status_code == 200, page.text
    assert "reader@example.com" in page.text
    assert page_took < 2.0, page_took

    assert status.returncode == 0, status.stderr
    assert "reader@example.com" not in status.stderr
    assert "1 active" in status.stdout or "active" in status.stdout, status.stdout
    # It finished while the writer still held the lock: it did not wait for it. (A child
    # Python process's start-up alone takes a moment on a busy machine, hence the margin.)
    assert still_held
    assert status_took < 10.0, status_took


# --- the storage contract, on SQLite and PostgreSQL ----------------------------------------------


def test_reads_answer_while_another_connection_holds_a_write(db_url: str) -> None:
    """A writer mid-transaction (the SQLite write lock, PostgreSQL row locks on what is
    read) does not hold up a read, which sees the last commit."""
    reader = SqlStorage(db_url)
    writer = SqlStorage(db_url)
    try:
        subscriber, _ = reader.add_subscriber("held@example.com", None, NOW)
        with writer._tx() as conn:
            conn.execute(
                update(schema.subscribers)
                .where(schema.subscribers.c.id == subscriber.id)
                .values(status=SubscriberStatus.UNSUBSCRIBED)
            )
            started = time.monotonic()
            seen = reader.get_subscriber_by_id(subscriber.id)
            counted = reader.count_subscribers(SubscriberStatus.ACTIVE)
            listed = [s.email for s in reader.iter_subscribers()]
            reader.ping(timeout=1.0)
            took = time.monotonic() - started
        assert seen is not None and seen.status == SubscriberStatus.ACTIVE  # the last commit
        assert counted == 1 and listed == ["held@example.com"]
        assert took < 2.0, took
        after = reader.get_subscriber_by_id(subscriber.id)
        assert after is not None and after.status == SubscriberStatus.UNSUBSCRIBED
        # A write after those reads, on the same pooled connections, is still a write.
        assert reader.unsubscribe_id(subscriber.id, NOW) is not None
    finally:
        reader.close()
        writer.close()
