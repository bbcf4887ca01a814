"""One contract for every mail backend, run through the real send loop and read off the wire.

Each backend runs against what it delivers to: the outbox against its folder, SMTP against an
aiosmtpd server (``tests/_smtp.py``), each provider against its loopback emulator
(``tests/emulators.py``, which also checks the requests against the provider's documentation).
A new backend adds one entry to ``HARNESSES``: how to make it, how to configure it, and how to
read back what it delivered.
"""

from __future__ import annotations

import email
import email.policy
import html
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.credentials import Credentials

from newsletter.exceptions import ConfigError
from newsletter.mail import make_backend
from newsletter.mail.base import MailBackend, SendCounts
from newsletter.mail.http import HttpBackend
from newsletter.mail.mailgun import MailgunBackend
from newsletter.mail.outbox import OutboxBackend
from newsletter.mail.postmark import PostmarkBackend
from newsletter.mail.resend import ResendBackend
from newsletter.mail.sendgrid import SendGridBackend
from newsletter.mail.ses import SESBackend
from newsletter.mail.smtp import SMTPBackend
from newsletter.types import DeliveryStatus, MessageContent, Recipient
from tests._factories import ListLedger, make_config, make_recipient
from tests._smtp import smtp_server
from tests.emulators import (
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    AWS_VARIABLES,
    TOKEN,
    Delivery,
    Emulator,
    MailgunEmulator,
    PostmarkEmulator,
    ResendEmulator,
    SendGridEmulator,
    SESEmulator,
    aws_environment,
)

TOKEN_ENV = "NL_TEST_MAIL_TOKEN"
SUBJECT = "The Test Weekly: Grüße aus Köln 😀"
FROM = "The Test Weekly <weekly@news.example.org>"


recipient = make_recipient


RECIPIENTS = [
    recipient(1, "ada@example.com", "Ada Lovelace"),
    recipient(2, "grace@example.org", None),
    recipient(3, "zoe@example.net", "Zoë <b>&amp; Ünïcode"),
]
BAD_RECIPIENTS = [
    recipient(7, "eve@example.com", "Eve\r\nBcc: victim@example.com"),
    replace(recipient(8, "mallory@example.com", "Mallory"), values={}),
    recipient(9, "not-an-address", "Trent"),
]


def content(**changes: Any) -> MessageContent:
    values: dict[str, Any] = {
        "digest_id": 7,
        "digest_uid": "a1b2c3d4e5f60718",
        "subject": SUBJECT,
        "from_addr": FROM,
        "html": (
            "<html><body><p>Hi nlvar:first_name,</p><p>For nlvar:name (nlvar:email)</p>"
            '<p><a href="nlvar:unsubscribe_url">Unsubscribe</a></p></body></html>'
        ),
        "text": "Hi nlvar:first_name,\nFor nlvar:name (nlvar:email)\n\nUnsubscribe: "
        "nlvar:unsubscribe_url\n",
        "reply_to": "editor@news.example.org",
        "list_id": "the-test-weekly.news.example.org",
        "message_id_domain": "news.example.org",
        "unsubscribe_mailto": "mailto:weekly@news.example.org?subject=unsubscribe",
    }
    values.update(changes)
    return MessageContent(**values)


# --- harnesses: one per backend ----------------------------------------------------------------


@dataclass
class Harness:
    name: str
    backend_class: type[MailBackend]
    make: Callable[..., MailBackend]  # make(**options): the backend, pointed at the receiver
    mail_config: str  # a [mail] table configuring the same backend
    received: Callable[[], list[Delivery]]  # every message delivered so far
    emulator: Emulator | None = None


def _from_mime(raw: bytes, to: str, request: int) -> Delivery:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    bodies = {}
    for part in msg.iter_parts():
        assert isinstance(part, EmailMessage)
        bodies[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
    return Delivery(
        to=to,
        message_id=str(msg["Message-ID"]),
        request=request,
        key=None,
        from_=str(msg["From"]),
        subject=str(msg["Subject"]),
        html=bodies["text/html"],
        text=bodies["text/plain"],
        headers={name: str(value) for name, value in msg.items()},
    )


@contextmanager
def outbox_harness(tmp_path: Path) -> Iterator[Harness]:
    folder = tmp_path / "outbox"

    def received() -> list[Delivery]:
        out = []
        for path in sorted(folder.rglob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            out.append(_from_mime(path.read_bytes(), msg["To"].addresses[0].addr_spec, 0))
        return out

    yield Harness(
        "outbox",
        OutboxBackend,
        lambda **options: OutboxBackend(folder, **options),
        f'[mail]\nbackend = "outbox"\n\n[mail.outbox]\noutbox_dir = "{folder}"\n',
        received,
    )


@contextmanager
def smtp_harness(tmp_path: Path) -> Iterator[Harness]:
    with smtp_server() as server:

        def make(**options: Any) -> MailBackend:
            return SMTPBackend("127.0.0.1", port=server.port, security="none", **options)

        def received() -> list[Delivery]:
            return [_from_mime(r.raw, r.rcpt_tos[0], i) for i, r in enumerate(server.received)]

        yield Harness("smtp", SMTPBackend, make, server.mail_config(), received)


def _provider_harness(
    emulator_class: type[Emulator], backend_class: type[HttpBackend], **extra: Any
) -> Callable[[Path], Any]:
    @contextmanager
    def harness(tmp_path: Path) -> Iterator[Harness]:
        with emulator_class() as emulator:

            def make(**options: Any) -> MailBackend:
                options = {"max_retries": 2, "backoff_factor": 0.01, "timeout": 5, **options}
                return backend_class(TOKEN, base_url=emulator.base_url, **extra, **options)

            table = "".join(f'{key} = "{value}"\n' for key, value in extra.items())
            yield Harness(
                backend_class.name,
                backend_class,
                make,
                f'[mail]\nbackend = "{backend_class.name}"\n\n[mail.{backend_class.name}]\n'
                f'token_env = "{TOKEN_ENV}"\nbase_url = "{emulator.base_url}"\n{table}',
                lambda: list(emulator.deliveries),
                emulator,
            )
            # Every request of every contract test kept to the provider's documented contract.
            assert emulator.problems == []

    return harness


@contextmanager
def ses_harness(tmp_path: Path) -> Iterator[Harness]:
    """SES signs with AWS credentials from the environment (made hermetic here) instead of a
    token, so it has a harness of its own."""
    with SESEmulator() as emulator, mock.patch.dict(os.environ, aws_environment(tmp_path)):
        for name in AWS_VARIABLES:
            os.environ.pop(name, None)

        def make(**options: Any) -> MailBackend:
            options = {"max_retries": 2, "backoff_factor": 0.01, "timeout": 5, **options}
            keys = Credentials(AWS_ACCESS_KEY, AWS_SECRET_KEY)
            return SESBackend(
                credentials=keys, region="us-east-1", base_url=emulator.base_url, **options
            )

        yield Harness(
            "ses",
            SESBackend,
            make,
            f'[mail]\nbackend = "ses"\n\n[mail.ses]\nregion = "us-east-1"\n'
            f'base_url = "{emulator.base_url}"\n',
            lambda: list(emulator.deliveries),
            emulator,
        )
        assert emulator.problems == []


# A new backend: one entry here.
HARNESSES: dict[str, Callable[[Path], Any]] = {
    "outbox": outbox_harness,
    "smtp": smtp_harness,
    "postmark": _provider_harness(PostmarkEmulator, PostmarkBackend),
    "sendgrid": _provider_harness(SendGridEmulator, SendGridBackend),
    "mailgun": _provider_harness(MailgunEmulator, MailgunBackend, domain="mg.news.example.org"),
    "resend": _provider_harness(ResendEmulator, ResendBackend),
    "ses": ses_harness,
}


@pytest.fixture(params=list(HARNESSES))
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with HARNESSES[request.param](tmp_path) as h:
        yield h


# --- the contract ------------------------------------------------------------------------------


def check_personalized(message: Delivery, rcpt: Recipient) -> None:
    """``message`` is ``rcpt``'s own: their name, address and unsubscribe URL, in both bodies."""
    values = rcpt.values
    url = values["unsubscribe_url"]
    assert f"Hi {values['first_name']},\n" in message.text
    assert f"For {values['name']} ({rcpt.email})" in message.text
    assert f"Unsubscribe: {url}\n" in message.text
    assert f"<p>Hi {html.escape(values['first_name'])},</p>" in message.html
    assert f"<p>For {html.escape(values['name'])} ({rcpt.email})</p>" in message.html
    assert f'<a href="{html.escape(url)}">' in message.html
    assert "nlvar:" not in message.html + message.text
    unsubscribe = message.headers["List-Unsubscribe"]
    assert unsubscribe == f"<{url}>, <mailto:weekly@news.example.org?subject=unsubscribe>"
    assert message.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_everyone_receives_exactly_one_personalized_message(harness: Harness) -> None:
    ledger = ListLedger(RECIPIENTS)
    counts = harness.make().send(content(), ledger)
    assert counts == SendCounts(sent=3)
    assert [(r.subscriber_id, r.status) for r in ledger.results] == [
        (1, DeliveryStatus.SENT),
        (2, DeliveryStatus.SENT),
        (3, DeliveryStatus.SENT),
    ]
    assert all(r.message_id for r in ledger.results)
    received = harness.received()
    assert sorted(m.to for m in received) == sorted(r.email for r in RECIPIENTS)
    for rcpt in RECIPIENTS:
        [message] = [m for m in received if m.to == rcpt.email]
        assert message.subject == SUBJECT
        assert parseaddr(message.from_) == parseaddr(FROM)
        assert parseaddr(message.headers["Reply-To"])[1] == "editor@news.example.org"
        check_personalized(message, rcpt)


def test_batches_respect_the_batch_size(harness: Harness) -> None:
    five = [*RECIPIENTS, recipient(4, "d@example.com", "D"), recipient(5, "e@example.com", None)]
    ledger = ListLedger(five)
    assert harness.make(batch_size=2).send(content(), ledger) == SendCounts(sent=5)
    assert ledger.claims == [2, 2, 1]
    assert sorted(m.to for m in harness.received()) == sorted(r.email for r in five)
    if harness.emulator is not None:  # one provider call per batch, never more than asked
        per_call = Counter(d.request for d in harness.emulator.deliveries)
        assert sorted(per_call.values()) == [1, 2, 2]
        assert len(harness.emulator.requests) == 3


def test_the_batch_size_is_capped_at_the_provider_limit(harness: Harness, tmp_path: Path) -> None:
    limit = harness.backend_class.max_batch_size
    assert harness.make().batch_size <= limit
    with pytest.raises(ValueError, match=str(limit)):
        harness.make(batch_size=limit + 1)
    with pytest.raises(ConfigError) as info:
        table = harness.mail_config.replace("[mail]\n", f"[mail]\nbatch_size = {limit + 1}\n")
        make_backend(make_config(tmp_path, table))
    assert info.value.key == "mail.batch_size"


def test_a_recipient_failing_validation_fails_alone(harness: Harness) -> None:
    mixed = [RECIPIENTS[0], *BAD_RECIPIENTS, RECIPIENTS[1], RECIPIENTS[2]]
    ledger = ListLedger(mixed)
    assert harness.make().send(content(), ledger) == SendCounts(sent=3, failed=3)
    by_id = {r.subscriber_id: r for r in ledger.results}
    for rcpt, fragment in zip(BAD_RECIPIENTS, ["To", "unsubscribe_url", "To"], strict=True):
        result = by_id[rcpt.subscriber_id]
        assert result.status == DeliveryStatus.FAILED
        assert result.error is not None and fragment in result.error
        assert result.error.startswith(f"{harness.name}: ")
    assert [by_id[r.subscriber_id].status for r in RECIPIENTS] == [DeliveryStatus.SENT] * 3
    assert sorted(m.to for m in harness.received()) == sorted(r.email for r in RECIPIENTS)


def test_the_configured_backend_sends_the_same_way(harness: Harness, tmp_path: Path) -> None:
    backend = make_backend(make_config(tmp_path, harness.mail_config))
    assert type(backend) is harness.backend_class
    assert TOKEN not in backend.describe()
    ledger = ListLedger(RECIPIENTS[:2])
    assert backend.send(content(), ledger) == SendCounts(sent=2)
    for rcpt in RECIPIENTS[:2]:
        [message] = [m for m in harness.received() if m.to == rcpt.email]
        check_personalized(message, rcpt)


def test_send_one_delivers_one_message_outside_any_ledger(harness: Harness) -> None:
    result = harness.make().send_one(content(digest_uid="test0a1b2c"), RECIPIENTS[2])
    assert result.status == DeliveryStatus.SENT
    [message] = harness.received()
    check_personalized(message, RECIPIENTS[2])


def test_list_unsubscribe_does_not_depend_on_the_bodies(harness: Harness) -> None:
    plain = content(html="<p>Hi nlvar:first_name</p>", text="Hi nlvar:first_name\n")
    assert harness.make().send(plain, ListLedger(RECIPIENTS)) == SendCounts(sent=3)
    for rcpt in RECIPIENTS:
        [message] = [m for m in harness.received() if m.to == rcpt.email]
        url = rcpt.values["unsubscribe_url"]
        assert message.headers["List-Unsubscribe"].startswith(f"<{url}>, <mailto:")
        assert url not in message.html + message.text
