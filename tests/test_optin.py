"""Double opt-in that link scanners cannot complete, unconfirmed requests forgotten after
``[web] purge_pending_days``, and no way back onto the list after an unsubscribe without a
new confirmation (or ``subscribers add --force``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser
from sqlalchemy import select

from newsletter import load_config, make_publisher
from newsletter.core import Publisher
from newsletter.exceptions import ConfigError, SubscriberError
from newsletter.storage import SqlStorage, schema
from newsletter.types import SubscriberStatus
from tests._browser import wait_for
from tests._smtp import SMTPServer
from tests.test_cli import newsletter
from tests.test_storage_contract import NOW, _digest, db_url, race, storage
from tests.test_web_browser import site, smtp
from tests.test_web_feeds import Running, confirm_link, link_secret, running_site
from tests.test_web_subscribe import status_of, subscribe

__all__ = ["db_url", "link_secret", "site", "smtp", "storage"]  # fixtures

# --- a scanner's GET or HEAD confirms nothing -----------------------------------------------------


def test_scanner_requests_confirm_nobody(example_project: Path) -> None:
    with running_site(example_project) as site:
        subscribe(site, "scanned@example.com")
        with site.publisher() as publisher:
            sub = publisher.storage.get_subscriber("scanned@example.com")
            assert sub is not None
            link = publisher.confirmation_url(sub)
        # What link-checking mail filters do: HEAD, GET, GET with a crawler's headers.
        assert requests.head(link, timeout=10).status_code == 200
        for agent in ("Mozilla/5.0 (compatible; SafeLinks)", "python-requests"):
            page = requests.get(link, headers={"User-Agent": agent}, timeout=10)
            assert page.status_code == 200 and 'method="post"' in page.text
        # Checked in the database file itself, not through our code.
        database = example_project.parent / "newsletter.db"
        assert database.exists()
        with sqlite3.connect(database) as conn:
            row = conn.execute(
                "SELECT status, confirmed_at FROM subscribers WHERE email = ?",
                ("scanned@example.com",),
            ).fetchone()
        assert row == ("pending", None)


# --- the page and its button, in a browser; re-subscribing asks again ----------------------------


def test_confirm_button_and_resubscribe_in_a_browser(
    browser: Browser, site: Running, smtp: SMTPServer
) -> None:
    page = browser.new_page()
    try:
        for round_ in (1, 2):
            page.goto(site.url + "/subscribe")
            page.fill("#email", "ada@example.com")
            with page.expect_navigation():
                page.click("#submit")
            assert page.text_content("#heading") == "Check your inbox"
            assert status_of(site, "ada@example.com") == SubscriberStatus.PENDING
            wait_for(lambda n=round_: len(smtp.received) >= n, timeout=10)
            link = confirm_link(smtp.received[round_ - 1].message)

            page.goto(link)  # what a scanner sees too: a button, nothing changed
            assert page.text_content("#heading") == "Confirm"
            assert status_of(site, "ada@example.com") == SubscriberStatus.PENDING
            with page.expect_navigation():
                page.click("#confirm")
            assert page.text_content("#heading") == "You are subscribed"
            assert status_of(site, "ada@example.com") == SubscriberStatus.ACTIVE
            if round_ == 1:  # leave, through the web; coming back must be confirmed again
                with site.publisher() as publisher:
                    publisher.remove_subscriber("ada@example.com")
                assert status_of(site, "ada@example.com") == SubscriberStatus.UNSUBSCRIBED
        assert [m.rcpt_tos for m in smtp.received] == [("ada@example.com",)] * 2
    finally:
        page.close()


# --- purging old pending addresses ---------------------------------------------------------------


@pytest.fixture
def publisher(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Publisher]:
    pub = make_publisher(load_config(example_project))
    yield pub
    pub.close()


def test_old_pending_requests_are_purged(publisher: Publisher, fixed_clock: list[datetime]) -> None:
    assert publisher.config.web.purge_pending_days == 30
    publisher.request_subscription("never@example.com")
    publisher.add_subscriber("came-back@example.com")
    publisher.remove_subscriber("came-back@example.com")
    publisher.request_subscription("came-back@example.com")  # asked again, never confirmed
    publisher.add_subscriber("active@example.com")

    fixed_clock[0] += timedelta(days=20)
    publisher.request_subscription("recent@example.com")
    assert publisher.purge_pending() == 0  # nothing is 30 days old yet

    fixed_clock[0] += timedelta(days=10, seconds=1)
    assert publisher.purge_pending() == 2
    statuses = {s.email: s.status for s in publisher.subscribers()}
    assert statuses == {
        # unsubscribed before it asked again: the unsubscribe stays on record
        "came-back@example.com": SubscriberStatus.UNSUBSCRIBED,
        "active@example.com": SubscriberStatus.ACTIVE,
        "recent@example.com": SubscriberStatus.PENDING,
    }
    assert publisher.purge_pending() == 0  # done once


def test_purge_keeps_delivery_history(storage: SqlStorage) -> None:
    """On both engines: a pending address that received issues goes back to unsubscribed
    (its deliveries stay); one that never did is deleted."""
    old = NOW - timedelta(days=90)
    storage.add_subscriber("reader@example.com", None, old)
    digest, _ = _digest(storage)  # it was sent issues
    storage.unsubscribe("reader@example.com", old)
    resend = timedelta(minutes=10)
    storage.request_subscription(
        "reader@example.com", None, NOW - timedelta(days=40), resend_after=resend
    )
    storage.request_subscription(
        "fresh@example.com", None, NOW - timedelta(days=40), resend_after=resend
    )
    storage.request_subscription(
        "young@example.com", None, NOW - timedelta(days=5), resend_after=resend
    )

    assert storage.purge_pending(NOW - timedelta(days=30)) == 2
    assert storage.get_subscriber("fresh@example.com") is None
    reader = storage.get_subscriber("reader@example.com")
    assert reader is not None and reader.status == SubscriberStatus.UNSUBSCRIBED
    young = storage.get_subscriber("young@example.com")
    assert young is not None and young.status == SubscriberStatus.PENDING
    with storage.engine.connect() as conn:
        kept = conn.execute(
            select(schema.deliveries.c.subscriber_id).where(
                schema.deliveries.c.digest_id == digest.id
            )
        ).all()
    assert [row.subscriber_id for row in kept] == [reader.id]
    assert storage.claim_confirmations(limit=10, lease=timedelta(minutes=5))[
        0
    ].subscriber.email == ("young@example.com")


def test_purge_races_change_each_row_once(db_url: str) -> None:
    setup = SqlStorage(db_url)
    try:
        for i in range(20):
            setup.request_subscription(
                f"p{i}@example.com", None, NOW - timedelta(days=40), resend_after=timedelta(0)
            )
    finally:
        setup.close()
    counts = race(db_url, 4, lambda own, i: own.purge_pending(NOW - timedelta(days=30)))
    assert sum(counts) == 20


def test_purge_pending_days_is_validated(example_project: Path) -> None:
    text = example_project.read_text()
    example_project.write_text(text + "\n[web]\npurge_pending_days = 2\n")
    with pytest.raises(ConfigError, match="purge_pending_days"):
        load_config(example_project)
    example_project.write_text(text + "\n[web]\npurge_pending_days = 7\n")
    assert load_config(example_project).web.purge_pending_days == 7


def test_serve_purges_at_start(example_project: Path, fixed_clock: list[datetime]) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        publisher.request_subscription("stale@example.com")
    fixed_clock[0] += timedelta(days=31)
    with running_site(example_project) as site:
        wait_for(lambda: status_of(site, "stale@example.com") is None, timeout=10)
        assert status_of(site, "stale@example.com") is None


# --- `subscribers add` and --force -------------------------------------------------------------


def test_add_does_not_undo_an_unsubscribe_without_force(publisher: Publisher) -> None:
    publisher.add_subscriber("a@example.com")
    publisher.remove_subscriber("a@example.com")
    with pytest.raises(SubscriberError, match="--force"):
        publisher.add_subscriber("a@example.com", "A")
    sub = publisher.storage.get_subscriber("a@example.com")
    assert sub is not None and sub.status == SubscriberStatus.UNSUBSCRIBED and sub.name is None
    again, created = publisher.add_subscriber("a@example.com", force=True)
    assert again.status == SubscriberStatus.ACTIVE and not created
    # A pending request is activated by an editor's add without --force.
    publisher.request_subscription("p@example.com")
    pending, _ = publisher.add_subscriber("p@example.com")
    assert pending.status == SubscriberStatus.ACTIVE


def test_cli_add_with_and_without_force(example_project: Path) -> None:
    cfg = str(example_project)
    added = newsletter("--config", cfg, "subscribers", "add", "b@example.com")
    assert added.returncode == 0, added.stderr
    assert "added: b@example.com (active)" in added.stdout
    removed = newsletter("--config", cfg, "subscribers", "remove", "b@example.com")
    assert removed.returncode == 0, removed.stderr

    refused = newsletter("--config", cfg, "subscribers", "add", "b@example.com")
    assert refused.returncode == 1
    assert "unsubscribed" in refused.stderr and "--force" in refused.stderr
    assert refused.stdout == ""
    with make_publisher(load_config(example_project)) as publisher:
        sub = publisher.storage.get_subscriber("b@example.com")
        assert sub is not None and sub.status == SubscriberStatus.UNSUBSCRIBED

    forced = newsletter("--config", cfg, "subscribers", "add", "--force", "b@example.com")
    assert forced.returncode == 0, forced.stderr
    assert "already present: b@example.com (active)" in forced.stdout
