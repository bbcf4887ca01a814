"""A reader subscribes, confirms and leaves in a real browser (Debian's Chromium, Playwright).

The public site runs on 127.0.0.1 against a copy of the example project whose mail goes to a
real SMTP server (aiosmtpd, ``tests/_smtp.py``): the confirmation link is taken from the
message as it arrived over SMTP, and followed by the browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from newsletter.types import SubscriberStatus
from tests._browser import wait_for
from tests._smtp import SMTPServer, smtp_server
from tests.test_web_feeds import Running, confirm_link, link_secret, running_site, unsubscribe_link

__all__ = ["link_secret"]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def site(example_project: Path, smtp: SMTPServer) -> Iterator[Running]:
    text = re.sub(
        r"\[mail\]\n(?:[^\[].*\n|\n)*", smtp.mail_config() + "\n", example_project.read_text()
    )
    example_project.write_text(text)
    with running_site(example_project) as running:
        yield running


def status_of(site: Running, address: str) -> SubscriberStatus | None:
    with site.publisher() as publisher:
        found = publisher.storage.get_subscriber(address)
    return found.status if found else None


def test_subscribe_confirm_and_unsubscribe_in_a_browser(
    browser: Browser, site: Running, smtp: SMTPServer
) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    try:
        page.goto(site.url + "/")  # the home page leads to the form
        assert page.url == site.url + "/subscribe"
        page.fill("#email", "grace@example.com")
        page.fill("#name", "Grace Hopper")
        with page.expect_navigation():
            page.click("#submit")
        assert page.text_content("#heading") == "Check your inbox"
        assert status_of(site, "grace@example.com") == SubscriberStatus.PENDING

        received = wait_for(lambda: smtp.received, timeout=10)[0]
        assert received.rcpt_tos == ("grace@example.com",)
        # Opening the link (as a mail filter's scanner does too) only shows the button.
        page.goto(confirm_link(received.message))
        assert page.text_content("#heading") == "Confirm"
        assert "grace@example.com" in (page.text_content("#message") or "")
        assert status_of(site, "grace@example.com") == SubscriberStatus.PENDING
        with page.expect_navigation():
            page.click("#confirm")
        assert page.text_content("#heading") == "You are subscribed"
        assert status_of(site, "grace@example.com") == SubscriberStatus.ACTIVE

        # The personal unsubscribe link (the same one every digest carries): opening it
        # shows a button and changes nothing; the button unsubscribes.
        page.goto(unsubscribe_link(received.message))
        assert page.text_content("#heading") == "Unsubscribe"
        assert "grace@example.com" in (page.text_content("#message") or "")
        assert status_of(site, "grace@example.com") == SubscriberStatus.ACTIVE
        with page.expect_navigation():
            page.click("#confirm")
        assert page.text_content("#heading") == "You are unsubscribed"
        assert status_of(site, "grace@example.com") == SubscriberStatus.UNSUBSCRIBED
        assert len(smtp.received) == 1  # nothing else was sent
    finally:
        page.close()


def test_the_form_reports_a_bad_address_in_place(browser: Browser, site: Running) -> None:
    page = browser.new_page()
    try:
        page.goto(site.url + "/subscribe")
        # The browser's own check (type=email) would stop "a@b c"; go around it as a script
        # or an old browser would, to see the server's answer.
        page.eval_on_selector("#subscribe", "f => f.noValidate = true")
        page.fill("#email", "not an address")
        with page.expect_navigation():
            page.click("#submit")
        assert page.text_content("#heading") == "Subscribe"
        assert page.is_visible("#error")
        assert page.input_value("#email") == "not an address"
    finally:
        page.close()
