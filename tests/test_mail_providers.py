"""Provider-specific behaviour of the HTTP backends, against their loopback emulators.

The request each provider documents (auth, path, content type, substitution syntax,
idempotency key), partial failures inside a batch, and what the send loop makes of refusals,
rate limits, outages, lost answers and slow answers. Timing-sensitive tests use a tiny
``backoff_factor`` and short timeouts; the whole module runs in a few seconds.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from newsletter.mail import make_backend
from newsletter.mail.base import PreparedContent, SendCounts
from newsletter.mail.http import HttpBackend
from newsletter.mail.mailgun import MailgunBackend
from newsletter.mail.message import message_id
from newsletter.mail.postmark import MAX_REQUEST_BYTES, PostmarkBackend
from newsletter.mail.resend import ResendBackend, idempotency_key
from newsletter.mail.sendgrid import SendGridBackend
from newsletter.types import DeliveryStatus
from tests._factories import ListLedger, make_config
from tests.emulators import (
    TOKEN,
    Emulator,
    MailgunEmulator,
    PostmarkEmulator,
    ResendEmulator,
    SendGridEmulator,
)
from tests.test_mail_contract import BAD_RECIPIENTS, RECIPIENTS, content, recipient

DOMAIN = "mg.news.example.org"
PROVIDERS: dict[str, tuple[type[Emulator], type[HttpBackend], dict[str, Any]]] = {
    "postmark": (PostmarkEmulator, PostmarkBackend, {}),
    "sendgrid": (SendGridEmulator, SendGridBackend, {}),
    "mailgun": (MailgunEmulator, MailgunBackend, {"domain": DOMAIN}),
    "resend": (ResendEmulator, ResendBackend, {}),
}
NOT_IDEMPOTENT = ["postmark", "sendgrid", "mailgun"]
REFUSAL_STATUS = {"postmark": 422, "sendgrid": 400, "mailgun": 400, "resend": 422}


@dataclass
class Provider:
    name: str
    emulator: Any  # the provider's Emulator subclass
    make: Callable[..., HttpBackend]  # make(**options), pointed at the emulator


def _provider(name: str) -> Iterator[Provider]:
    emulator_class, backend_class, extra = PROVIDERS[name]
    with emulator_class() as emulator:

        def make(token: str = TOKEN, **options: Any) -> HttpBackend:
            options = {"max_retries": 2, "backoff_factor": 0.01, "timeout": 5, **options}
            return backend_class(token, base_url=emulator.base_url, **extra, **options)

        yield Provider(name, emulator, make)
        assert emulator.problems == []  # our requests kept to the documented contract


@pytest.fixture(params=list(PROVIDERS))
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield from _provider(request.param)


@pytest.fixture(params=NOT_IDEMPOTENT)
def non_idempotent(request: pytest.FixtureRequest) -> Iterator[Provider]:
    yield from _provider(request.param)


@pytest.fixture
def postmark() -> Iterator[Provider]:
    yield from _provider("postmark")


@pytest.fixture
def sendgrid() -> Iterator[Provider]:
    yield from _provider("sendgrid")


@pytest.fixture
def mailgun() -> Iterator[Provider]:
    yield from _provider("mailgun")


@pytest.fixture
def resend() -> Iterator[Provider]:
    yield from _provider("resend")


def statuses(ledger: ListLedger) -> dict[int, DeliveryStatus]:
    return {r.subscriber_id: r.status for r in ledger.results}


def error_of(ledger: ListLedger, subscriber_id: int) -> str:
    [result] = [r for r in ledger.results if r.subscriber_id == subscriber_id]
    assert result.error is not None
    return result.error


# --- the request each provider documents ------------------------------------------------------


def test_postmark_request(postmark: Provider) -> None:
    postmark.emulator.stream = "outbound"
    ledger = ListLedger(RECIPIENTS)
    backend = postmark.make(message_stream="outbound")
    assert backend.send(content(), ledger) == SendCounts(sent=3)
    [request] = postmark.emulator.requests
    assert (request.method, request.path) == ("POST", "/email/batch")
    assert request.headers["x-postmark-server-token"] == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    messages = request.json()
    assert [m["MessageStream"] for m in messages] == ["outbound"] * 3
    assert messages[0]["To"] == "Ada Lovelace <ada@example.com>"
    assert messages[1]["To"] == "grace@example.org"
    assert messages[0]["ReplyTo"] == "editor@news.example.org"
    for m, rcpt in zip(messages, RECIPIENTS, strict=True):
        headers = {h["Name"]: h["Value"] for h in m["Headers"]}
        assert headers["Message-ID"] == message_id(content(), rcpt)  # deterministic
        assert headers["List-Id"] == "<the-test-weekly.news.example.org>"
    # Postmark's MessageID for each message is what the ledger records.
    assert [r.message_id for r in ledger.results] == [
        d.message_id for d in postmark.emulator.deliveries
    ]


def test_sendgrid_request(sendgrid: Provider, caplog: pytest.LogCaptureFixture) -> None:
    ledger = ListLedger(RECIPIENTS)
    with caplog.at_level(logging.WARNING, logger="newsletter.mail.sendgrid"):
        assert sendgrid.make().send(content(), ledger) == SendCounts(sent=3)
    [request] = sendgrid.emulator.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    mail = request.json()
    assert mail["from"] == {"email": "weekly@news.example.org", "name": "The Test Weekly"}
    assert mail["reply_to"] == {"email": "editor@news.example.org"}
    text, body = (c["value"] for c in mail["content"])
    # The shared body once, in SendGrid tags; HTML and text have their own tags.
    assert "Hi -nlvar.text.first_name-,\n" in text
    assert '<a href="-nlvar.html.unsubscribe_url-">' in body
    ada, grace, zoe = mail["personalizations"]
    assert ada["to"] == [{"email": "ada@example.com", "name": "Ada Lovelace"}]
    assert grace["to"] == [{"email": "grace@example.org"}]
    zoe_name = RECIPIENTS[2].values["name"]
    assert zoe["substitutions"]["-nlvar.text.name-"] == zoe_name
    assert zoe["substitutions"]["-nlvar.html.name-"] == html.escape(zoe_name)
    assert zoe["headers"]["List-Unsubscribe"].startswith(
        f"<{RECIPIENTS[2].values['unsubscribe_url']}>"
    )
    # SendGrid cannot carry a name holding ';' (Zoë's holds "&amp;"): sent without it, said so.
    assert zoe["to"] == [{"email": "zoe@example.net"}]
    assert "without the name" in caplog.text
    # No per-recipient ids: the call's X-Message-Id for each.
    call_id = sendgrid.emulator.deliveries[0].message_id
    assert [r.message_id for r in ledger.results] == [call_id] * 3


def test_mailgun_request(mailgun: Provider) -> None:
    ledger = ListLedger(RECIPIENTS)
    assert mailgun.make().send(content(), ledger) == SendCounts(sent=3)
    [request] = mailgun.emulator.requests
    assert (request.method, request.path) == ("POST", f"/v3/{DOMAIN}/messages")
    basic = base64.b64encode(f"api:{TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {basic}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = request.form()
    fields = dict(form)
    assert [v for k, v in form if k == "to"] == [
        "Ada Lovelace <ada@example.com>",
        "grace@example.org",
        '"Zoë <b>&amp; Ünïcode" <zoe@example.net>',
    ]
    assert "<p>Hi %recipient.html_first_name%,</p>" in fields["html"]
    assert "Unsubscribe: %recipient.unsubscribe_url%\n" in fields["text"]
    assert fields["h:List-Unsubscribe"].startswith("<%recipient.unsubscribe_url%>, <mailto:")
    assert fields["h:Reply-To"] == "editor@news.example.org"
    # Each recipient's own header once Mailgun has substituted.
    for delivery, rcpt in zip(mailgun.emulator.deliveries, RECIPIENTS, strict=True):
        url = rcpt.values["unsubscribe_url"]
        assert delivery.headers["List-Unsubscribe"].startswith(f"<{url}>")
    # One id for the call, recorded for each recipient.
    assert {r.message_id for r in ledger.results} == {mailgun.emulator.deliveries[0].message_id}


def test_resend_request_and_a_stable_idempotency_key(resend: Provider) -> None:
    first = ListLedger(RECIPIENTS)
    assert resend.make().send(content(), first) == SendCounts(sent=3)
    [request] = resend.emulator.requests
    assert (request.method, request.path) == ("POST", "/emails/batch")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["idempotency-key"] == "batch-1"  # the batch's key
    assert request.headers["x-batch-validation"] == "permissive"
    emails = request.json()
    assert emails[0]["to"] == ["Ada Lovelace <ada@example.com>"]
    assert emails[0]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The same batch again (a re-send after a crash): same key, same payload, answered again.
    again = ListLedger(RECIPIENTS)
    assert resend.make().send(content(), again) == SendCounts(sent=3)
    second = resend.emulator.requests[1]
    assert second.headers["idempotency-key"] == "batch-1"
    assert second.body == request.body
    assert len(resend.emulator.deliveries) == 3  # nobody received it twice
    assert [r.message_id for r in again.results] == [r.message_id for r in first.results]


def test_resend_keeps_keys_within_its_limit() -> None:
    assert idempotency_key("nl-a1b2-17") == "nl-a1b2-17"
    long_key = "k" * 300
    hashed = idempotency_key(long_key)
    assert hashed == idempotency_key(long_key) and len(hashed) <= 256
    assert hashed != idempotency_key("k" * 301)


def test_mailgun_region_and_domain_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_KEY", "key-123")
    table = '[mail]\nbackend = "mailgun"\n'
    table += f'[mail.mailgun]\ntoken_env = "MG_KEY"\ndomain = "{DOMAIN}"\n'
    eu = make_backend(make_config(tmp_path, table + 'region = "eu"\n'))
    us = make_backend(make_config(tmp_path, table))
    assert isinstance(eu, MailgunBackend) and isinstance(us, MailgunBackend)
    assert eu.base_url == "https://api.eu.mailgun.net"
    assert us.base_url == "https://api.mailgun.net"
    assert eu.describe() == f"mailgun (https://api.eu.mailgun.net, domain {DOMAIN})"


# --- partial failure inside a batch -----------------------------------------------------------

# Who of (Ada, Grace, Zoë) is sent when the provider refuses Grace's address.
SENT_DESPITE_ONE_REJECTED = {
    "postmark": {1, 3},  # a per-message ErrorCode
    "resend": {1, 3},  # permissive validation: an "errors" entry
    "sendgrid": {1, 3},  # a 400 naming her personalization; the others posted again
    "mailgun": set(),  # a 400 naming nobody: the batch fails as a whole
}


def test_a_recipient_refused_by_the_provider(provider: Provider) -> None:
    provider.emulator.reject("grace@example.org")
    ledger = ListLedger(RECIPIENTS)
    sent = SENT_DESPITE_ONE_REJECTED[provider.name]
    counts = provider.make().send(content(), ledger)
    assert counts == SendCounts(sent=len(sent), failed=3 - len(sent))
    assert {i for i, s in statuses(ledger).items() if s == DeliveryStatus.SENT} == sent
    reason = error_of(ledger, 2)
    assert reason.startswith(f"{provider.name}: ") and provider.emulator.rejection in reason
    delivered = {r.email for r in RECIPIENTS if r.subscriber_id in sent}
    assert set(provider.emulator.delivered_to()) == delivered
    assert len(provider.emulator.delivered_to()) == len(delivered)


@pytest.mark.parametrize("name", ["sendgrid", "mailgun"])
def test_an_address_twice_in_one_batch_fails_the_second(name: str) -> None:
    twin = recipient(4, "ADA@example.com", "Ada Again")
    for provider in _provider(name):
        ledger = ListLedger([RECIPIENTS[0], twin])
        assert provider.make().send(content(), ledger) == SendCounts(sent=1, failed=1)
        assert "twice in this batch" in error_of(ledger, 4)
        assert provider.emulator.delivered_to() == ["ada@example.com"]


def test_sendgrid_fails_a_recipient_whose_values_pass_its_limit(sendgrid: Provider) -> None:
    huge = recipient(4, "huge@example.com", "N" * 30_000)  # in both bodies: 60 KB of values
    ledger = ListLedger([RECIPIENTS[0], huge])
    assert sendgrid.make().send(content(), ledger) == SendCounts(sent=1, failed=1)
    assert "50,000" in error_of(ledger, 4)


# --- refusals, credentials, rate limits and outages -------------------------------------------


def test_bad_credentials_stop_the_send_and_release_the_batch(provider: Provider) -> None:
    ledger = ListLedger(RECIPIENTS)
    counts = provider.make(token="wrong-token", batch_size=2).send(content(), ledger)
    assert counts.sent == counts.failed == counts.uncertain == 0
    assert counts.stopped is not None and counts.stopped.fatal
    assert counts.stopped.status in (401, 403)  # Resend: 403 for a key it does not know
    assert [len(b) for b in ledger.released] == [2]
    assert ledger.results == []
    assert len(ledger.pending) == 3  # a later run sends them all
    assert len(provider.emulator.requests) == 1  # no further batch was started


def test_a_refused_batch_fails_its_recipients_with_the_reason(provider: Provider) -> None:
    status = REFUSAL_STATUS[provider.name]
    provider.emulator.fail(status, message="Something about this batch is wrong")
    bad = BAD_RECIPIENTS[0]  # fails validation, so it never reaches the provider
    ledger = ListLedger([RECIPIENTS[0], bad, RECIPIENTS[1], RECIPIENTS[2]])
    counts = provider.make(batch_size=3).send(content(), ledger)
    assert counts == SendCounts(sent=1, failed=3)  # the next batch still goes out
    assert statuses(ledger) == {
        1: DeliveryStatus.FAILED,
        bad.subscriber_id: DeliveryStatus.FAILED,
        2: DeliveryStatus.FAILED,
        3: DeliveryStatus.SENT,
    }
    for refused in (1, 2):
        reason = error_of(ledger, refused)
        assert "Something about this batch is wrong" in reason and f"HTTP {status}" in reason
    assert "line break" in error_of(ledger, bad.subscriber_id)  # its own reason, kept
    assert provider.emulator.delivered_to() == ["zoe@example.net"]


def test_postmark_account_errors_stop_the_send(postmark: Provider) -> None:
    postmark.emulator.fail(422, code=401, message="Sender signature not confirmed.")
    ledger = ListLedger(RECIPIENTS)
    counts = postmark.make().send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.fatal
    assert "Sender signature not confirmed. (ErrorCode 401)" in str(counts.stopped)
    assert len(ledger.released) == 1 and ledger.results == []


def test_postmark_account_errors_on_every_message_stop_the_send(postmark: Provider) -> None:
    postmark.emulator.confirmed_sender = False  # a 200 whose every message is refused
    ledger = ListLedger(RECIPIENTS)
    counts = postmark.make().send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.fatal
    assert "(ErrorCode 401)" in str(counts.stopped)
    assert len(ledger.released) == 1 and ledger.results == []


def test_429_with_retry_after_is_waited_out_and_retried(provider: Provider) -> None:
    provider.emulator.fail(429, retry_after=1)
    ledger = ListLedger(RECIPIENTS)
    started = time.monotonic()
    assert provider.make().send(content(), ledger) == SendCounts(sent=3)
    assert time.monotonic() - started >= 0.95  # Retry-After honoured, not the tiny backoff
    assert len(provider.emulator.requests) == 2
    assert sorted(provider.emulator.delivered_to()) == sorted(r.email for r in RECIPIENTS)


def test_server_errors_are_retried(provider: Provider) -> None:
    provider.emulator.fail(500, times=2)
    ledger = ListLedger(RECIPIENTS)
    assert provider.make(max_retries=3).send(content(), ledger) == SendCounts(sent=3)
    assert len(provider.emulator.requests) == 3
    assert len(provider.emulator.deliveries) == 3


def test_an_outage_past_the_retries_stops_the_send(provider: Provider) -> None:
    provider.emulator.fail(503, times=3)
    ledger = ListLedger(RECIPIENTS)
    counts = provider.make(max_retries=2).send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.retryable
    assert counts.stopped.status == 503
    assert len(ledger.released) == 1 and ledger.results == []
    assert len(provider.emulator.requests) == 3  # the first try and two retries


def test_a_dropped_connection_leaves_the_batch_uncertain(non_idempotent: Provider) -> None:
    non_idempotent.emulator.drop()  # taken, then no answer
    ledger = ListLedger(RECIPIENTS)
    counts = non_idempotent.make().send(content(), ledger)
    assert counts == SendCounts(uncertain=3)
    assert ledger.results == [] and ledger.released == []  # left in flight, not re-sent
    assert len(non_idempotent.emulator.requests) == 1
    # Why it must not be re-sent: the provider did take it.
    assert len(non_idempotent.emulator.deliveries) == 3


def test_a_slow_answer_past_the_timeout_is_uncertain(non_idempotent: Provider) -> None:
    non_idempotent.emulator.slow(2.0)
    ledger = ListLedger(RECIPIENTS)
    started = time.monotonic()
    counts = non_idempotent.make(timeout=0.3).send(content(), ledger)
    assert time.monotonic() - started < 1.5
    assert counts == SendCounts(uncertain=3)
    assert ledger.results == [] and ledger.released == []
    assert len(non_idempotent.emulator.requests) == 1


@pytest.mark.parametrize("fault", ["drop", "slow"])
def test_resend_retries_a_lost_answer_and_delivers_once(resend: Provider, fault: str) -> None:
    if fault == "drop":
        resend.emulator.drop()
    else:
        resend.emulator.slow(2.0)
    ledger = ListLedger(RECIPIENTS)
    assert resend.make(timeout=0.3).send(content(), ledger) == SendCounts(sent=3)
    first, retry = resend.emulator.requests
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"] == "batch-1"
    assert sorted(resend.emulator.delivered_to()) == sorted(r.email for r in RECIPIENTS)
    ids = [d.message_id for d in resend.emulator.deliveries]
    assert [r.message_id for r in ledger.results] == ids  # the replayed answer's ids


def test_resend_key_reused_for_another_payload_is_not_sent_again(resend: Provider) -> None:
    resend.make().send(content(), ListLedger(RECIPIENTS))
    ledger = ListLedger(RECIPIENTS)  # the same batch key, but the digest changed meanwhile
    counts = resend.make().send(content(subject="Another subject"), ledger)
    assert counts == SendCounts(failed=3)
    assert "probably sent" in error_of(ledger, 1)
    assert "invalid_idempotent_request" in error_of(ledger, 1)
    assert len(resend.emulator.deliveries) == 3


def test_resend_key_still_in_progress_is_retried_later(resend: Provider) -> None:
    resend.emulator.begin("batch-1")
    ledger = ListLedger(RECIPIENTS)
    counts = resend.make().send(content(), ledger)
    assert counts.stopped is not None and counts.stopped.retryable
    assert counts.stopped.status == 409
    assert [b.key for b in ledger.released] == ["batch-1"]  # back to pending, key kept


def test_an_unreadable_accepted_answer_is_uncertain(postmark: Provider) -> None:
    postmark.emulator.fail(200, message="not the batch answer")  # a 200 that is no result list
    ledger = ListLedger(RECIPIENTS)
    assert postmark.make().send(content(), ledger) == SendCounts(uncertain=3)
    assert ledger.results == []


# --- size limits ------------------------------------------------------------------------------


def test_postmark_claims_fewer_recipients_for_a_large_digest() -> None:
    backend = PostmarkBackend(TOKEN)
    assert backend.batch_size_for(PreparedContent(content())) == 500
    big = content(html="<p>" + "x" * 200_000 + "nlvar:first_name</p>")
    size = backend.batch_size_for(PreparedContent(big))
    assert 100 < size < 500
    assert size * 200_000 < MAX_REQUEST_BYTES  # the claimed batch fits one call


def test_postmark_batches_a_large_digest_within_50_mb_per_call(postmark: Provider) -> None:
    big = content(html="<p>nlvar:first_name " + "x" * 9_000_000 + "</p>")  # 9 MB each
    six = [recipient(n, f"r{n}@example.com", None) for n in range(1, 7)]
    ledger = ListLedger(six)
    assert postmark.make().send(big, ledger) == SendCounts(sent=6)
    assert ledger.claims == [5, 1]
    assert all(len(r.body) < MAX_REQUEST_BYTES for r in postmark.emulator.requests)


def test_postmark_fails_a_message_over_10_mb(postmark: Provider) -> None:
    huge = content(html="<p>nlvar:first_name " + "x" * 10_500_000 + "</p>")
    ledger = ListLedger(RECIPIENTS[:1])
    assert postmark.make().send(huge, ledger) == SendCounts(failed=1)
    assert "over Postmark's limit of 10,000,000 per message" in error_of(ledger, 1)
    assert postmark.emulator.requests == []
