"""The list id is kept in the database at first use (issue 9, item 5): renaming the title
invalidates no unsubscribe link already sent, and the List-Id header stays the same."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests.test_web_feeds import running_site

SECRET = "list-id-test-secret"
RENAMED = 'title = "The Renamed Weekly"'


@pytest.fixture(autouse=True)
def link_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)


def rename(config: Path) -> None:
    text = config.read_text()
    assert 'title = "The Example Weekly"' in text
    config.write_text(text.replace('title = "The Example Weekly"', RENAMED))
    assert load_config(config).newsletter.list_id.startswith("the-renamed-weekly.")


def sent_message(config: Path) -> EmailMessage:
    (path,) = (config.parent / "outbox").rglob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_a_token_signed_before_a_rename_verifies_after_it(example_project: Path) -> None:
    config = example_project
    with make_publisher(load_config(config)) as publisher:
        subscriber, _ = publisher.add_subscriber("reader@example.com")
        token = publisher.tokens.make(subscriber.id, subscriber.email)
        confirm = publisher.confirmation_url(subscriber).rsplit("/", 1)[1]
        first_id = publisher.list_id
    assert first_id.startswith("the-example-weekly.")
    rename(config)
    with make_publisher(load_config(config)) as publisher:
        assert publisher.list_id == first_id
        assert publisher.subscriber_for_unsubscribe(token).email == "reader@example.com"
        assert publisher.confirm_tokens.verify(confirm)[0] == subscriber.id
        # Mail made after the rename carries the same List-Id as before it.
        publisher.gather()
        assert publisher.send_digest().sent == 1
    assert sent_message(config)["List-Id"] == f"<{first_id}>"


def test_the_unsubscribe_link_of_a_sent_digest_works_after_a_rename(
    example_project: Path,
) -> None:
    config = example_project
    with make_publisher(load_config(config)) as publisher:
        publisher.gather()
        publisher.add_subscriber("reader@example.com")
        assert publisher.send_digest().sent == 1
    message = sent_message(config)
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    link = next(w for w in body.get_content().split() if "/unsubscribe/" in w)
    token = link.rsplit("/", 1)[1].strip(">")
    rename(config)
    with running_site(config) as site:
        page = requests.get(f"{site.url}/unsubscribe/{token}", timeout=10)
        assert page.status_code == 200, page.text
        assert "reader@example.com" in page.text
        done = requests.post(f"{site.url}/unsubscribe/{token}", timeout=10)
        assert done.status_code == 200, done.text
        with site.publisher() as publisher:
            found = publisher.storage.get_subscriber("reader@example.com")
    assert found is not None and found.status == "unsubscribed"
