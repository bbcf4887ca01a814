"""Each provider's webhook module on its own: a ``WebhookRequest`` in, ``Suppression``s or
``Refused`` out, with credentials and signatures made as the providers make them (a real
P-256 key pair for SendGrid, real HMACs for Mailgun). Then the generic part: which webhooks
exist follows from the backend registry, the database-backed replay guard, and a request that
fails on our side gives its token back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from newsletter.config import Config, load_config
from newsletter.exceptions import ConfigError
from newsletter.mail import BACKENDS, webhook
from newsletter.mail.mailgun_webhook import KEEP, MailgunWebhook
from newsletter.mail.postmark_webhook import PostmarkWebhook
from newsletter.mail.sendgrid_webhook import (
    SIGNATURE,
    TIMESTAMP,
    SendGridWebhook,
    sendgrid_public_key,
)
from newsletter.mail.ses_webhook import SESWebhook
from newsletter.mail.webhook import Refused, Suppression, Webhook, WebhookRequest
from newsletter.storage import SqlStorage
from newsletter.types import SubscriberStatus
from newsletter.web.webhooks import StorageReplayGuard
from tests.test_web_feeds import Running, running_site
from tests.test_web_webhooks import (
    MAILGUN_KEY,
    PM_PASSWORD,
    PM_USER,
    UNCHANGED,
    WEB,
    link_secret,
    mailgun_failed,
    mailgun_payload,
    post_mailgun,
    postmark_bounce,
    public_key_text,
    sendgrid_key,
    site,
    statuses,
)

__all__ = ["link_secret", "sendgrid_key", "site"]  # fixtures, imported to apply here too

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
# Each webhook's variables, named in its provider's table (WEB has the old [web] form).
TABLES = """
[mail.postmark]
webhook_user_env = "TEST_PM_USER"
webhook_password_env = "TEST_PM_PASSWORD"

[mail.sendgrid]
webhook_key_env = "TEST_SG_KEY"

[mail.mailgun]
webhook_signing_key_env = "TEST_MG_KEY"
"""
BOUNCED, COMPLAINED = SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED


class Tokens:
    """A ``ReplayGuard`` in memory: what one process on its own would remember."""

    def __init__(self) -> None:
        self.kept: dict[str, timedelta] = {}

    def claim(self, token: str, *, keep: timedelta) -> bool:
        if token in self.kept:
            return False
        self.kept[token] = keep
        return True


def request(body: bytes | Any, now: datetime = NOW, **headers: str) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest({k.replace("_", "-").lower(): v for k, v in headers.items()}, raw, now)


@pytest.fixture
def config(
    example_project: Path, monkeypatch: pytest.MonkeyPatch, sendgrid_key: ec.EllipticCurvePrivateKey
) -> Config:
    """The example project with every webhook configured and its variables set."""
    example_project.write_text(example_project.read_text() + TABLES)
    monkeypatch.setenv("TEST_PM_USER", PM_USER)
    monkeypatch.setenv("TEST_PM_PASSWORD", PM_PASSWORD)
    monkeypatch.setenv("TEST_SG_KEY", public_key_text(sendgrid_key))
    monkeypatch.setenv("TEST_MG_KEY", MAILGUN_KEY)
    return load_config(example_project)


def built(hook: type[Webhook], config: Config) -> Any:
    made = hook.from_config(config)
    assert isinstance(made, hook)
    return made


# --- Postmark -----------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_postmark_reads_a_hard_bounce_with_the_right_credentials(config: Config) -> None:
    hook = built(PostmarkWebhook, config)
    bounce = postmark_bounce("hard@example.com", "HardBounce")
    found = hook.handle(request(bounce, authorization=basic(PM_USER, PM_PASSWORD)), Tokens())
    assert found == [
        Suppression(
            "hard@example.com",
            BOUNCED,
            "postmark HardBounce: The server was unable to deliver your message"
            " (ex: unknown user).",
        )
    ]


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "credentials required"),
        (f"Bearer {PM_PASSWORD}", "credentials required"),
        ("Basic !!!", "malformed credentials"),
        (basic(PM_USER, "wrong"), "wrong credentials"),
        (basic("wrong", PM_PASSWORD), "wrong credentials"),
    ],
)
def test_postmark_refuses_other_credentials_before_reading_the_body(
    config: Config, authorization: str | None, message: str
) -> None:
    hook = built(PostmarkWebhook, config)
    headers = {} if authorization is None else {"authorization": authorization}
    with pytest.raises(Refused) as refused:
        hook.handle(request(b"{not json", **headers), Tokens())
    assert (refused.value.status_code, refused.value.message) == (401, message)
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic")


def test_postmark_refuses_bodies_it_cannot_read(config: Config) -> None:
    hook = built(PostmarkWebhook, config)
    auth = basic(PM_USER, PM_PASSWORD)
    for body, reason in [
        (b"[1, 2]", "expected a JSON object"),
        (b"{not json", "the body is not JSON"),
        (b'{"Email": "\\ud800"}', "the JSON holds an unpaired surrogate"),
        (b"[" * 40 + b"]" * 40, "the JSON nests more than 32 levels deep"),
    ]:
        with pytest.raises(Refused) as refused:
            hook.handle(request(body, authorization=auth), Tokens())
        assert refused.value.status_code == 400
        assert refused.value.message.startswith(reason), body


# --- SendGrid -----------------------------------------------------------------------------------


def signed(
    key: ec.EllipticCurvePrivateKey, events: Any, *, at: datetime = NOW
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    stamp = str(int(at.timestamp()))
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: stamp}


EVENTS = [
    {"email": "hard@example.com", "event": "bounce", "type": "bounce", "reason": "550 no user"},
    {"email": "soft@example.com", "event": "bounce", "type": "blocked", "reason": "450 later"},
    {"email": "spam@example.com", "event": "spamreport"},
    {"email": "gone@example.com", "event": "dropped", "reason": "Spam Reporting Address"},
    {"email": "fine@example.com", "event": "delivered"},
]


def test_sendgrid_reads_signed_events(
    config: Config, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    hook = built(SendGridWebhook, config)
    body, headers = signed(sendgrid_key, EVENTS)
    found = hook.handle(
        WebhookRequest({k.lower(): v for k, v in headers.items()}, body, NOW), Tokens()
    )
    assert [(s.email, s.status, s.reason) for s in found] == [
        ("hard@example.com", BOUNCED, "sendgrid bounce: 550 no user"),
        ("spam@example.com", COMPLAINED, "sendgrid spam report"),
        ("gone@example.com", COMPLAINED, "sendgrid dropped: Spam Reporting Address"),
    ]


def test_sendgrid_refuses_what_its_key_did_not_sign_recently(
    config: Config, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    hook = built(SendGridWebhook, config)
    body, headers = signed(sendgrid_key, EVENTS)
    impostor = signed(ec.generate_private_key(ec.SECP256R1()), EVENTS)
    cases = [
        (impostor, "bad signature"),
        ((body.replace(b"fine@", b"evil@"), headers), "bad signature"),
        ((body, {**headers, TIMESTAMP: str(int(NOW.timestamp()) + 1)}), "bad signature"),
        ((body, {**headers, SIGNATURE: "not base64!"}), "bad signature"),
        (signed(sendgrid_key, EVENTS, at=NOW - timedelta(minutes=11)), "stale timestamp"),
        ((body, {**headers, TIMESTAMP: "+" + headers[TIMESTAMP]}), "missing or malformed"),
        ((body, {TIMESTAMP: headers[TIMESTAMP]}), "missing signature"),
    ]
    for (data, sent), message in cases:
        lowered = {k.lower(): v for k, v in sent.items()}
        with pytest.raises(Refused) as refused:
            hook.handle(WebhookRequest(lowered, data, NOW), Tokens())
        assert refused.value.status_code == 403
        assert refused.value.message.startswith(message), (sent, message)


def test_sendgrid_takes_its_key_as_pem_and_parses_it_once(
    config: Config, monkeypatch: pytest.MonkeyPatch, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    monkeypatch.setenv("TEST_SG_KEY", pem.decode())
    first = built(SendGridWebhook, config)
    before = sendgrid_public_key.cache_info().hits
    again = built(SendGridWebhook, config)
    assert again.key is first.key  # the same parsed key: cached, not parsed per request
    assert sendgrid_public_key.cache_info().hits == before + 1
    body, headers = signed(sendgrid_key, EVENTS[:1])
    lowered = {k.lower(): v for k, v in headers.items()}
    assert len(again.handle(WebhookRequest(lowered, body, NOW), Tokens())) == 1


def test_sendgrid_refuses_a_value_that_is_not_its_key(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SG_KEY", "bm90IGEga2V5")  # base64, but not a key
    with pytest.raises(ConfigError, match="verification key") as error:
        SendGridWebhook.from_config(config)
    assert error.value.key == "mail.sendgrid.webhook_key_env"
    assert "bm90IGEga2V5" not in str(error.value)  # the value is never shown


# --- Mailgun ------------------------------------------------------------------------------------


def test_mailgun_reads_a_signed_event_and_claims_its_token_once(
    config: Config, fixed_clock: list[datetime]
) -> None:
    hook = built(MailgunWebhook, config)
    payload = mailgun_payload(mailgun_failed("hard@example.com", "permanent"))
    tokens = Tokens()
    found = hook.handle(request(payload, fixed_clock[0]), tokens)
    assert [(s.email, s.status, s.reason) for s in found] == [
        ("hard@example.com", BOUNCED, "mailgun bounce: No such user")
    ]
    assert tokens.kept == {payload["signature"]["token"]: KEEP}
    assert timedelta(minutes=20) == KEEP  # twice the accepted age
    with pytest.raises(Refused) as refused:
        hook.handle(request(payload, fixed_clock[0]), tokens)
    assert (refused.value.status_code, refused.value.message) == (403, "replayed token")


def test_mailgun_claims_nothing_for_a_bad_signature(
    config: Config, fixed_clock: list[datetime]
) -> None:
    hook = built(MailgunWebhook, config)
    event = mailgun_failed("hard@example.com", "permanent")
    altered = mailgun_payload(event)
    altered["signature"]["token"] = secrets.token_hex(25)
    cases = [
        (mailgun_payload(event, key="another-key"), "bad signature"),
        (altered, "bad signature"),
        (mailgun_payload(event, age=601), "stale timestamp"),
        ({"event-data": event}, "missing signature"),
        ({"signature": {"timestamp": "1", "token": ""}, "event-data": event}, "missing signature"),
    ]
    tokens = Tokens()
    for payload, message in cases:
        with pytest.raises(Refused) as refused:
            hook.handle(request(payload, fixed_clock[0]), tokens)
        assert (refused.value.status_code, refused.value.message) == (403, message)
    assert tokens.kept == {}
    with pytest.raises(Refused) as refused:  # not JSON: 400, before any signature is looked at
        hook.handle(request(b"{", fixed_clock[0]), tokens)
    assert refused.value.status_code == 400


def test_mailgun_signature_is_the_hmac_of_timestamp_and_token(config: Config) -> None:
    hook = built(MailgunWebhook, config)
    timestamp, token = str(int(NOW.timestamp())), "a" * 50
    signature = hmac.new(MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256)
    block = {"timestamp": timestamp, "token": token, "signature": signature.hexdigest().upper()}
    assert hook.check_signature(block, now=NOW) == token  # hex compared case-insensitively


# --- configuration ------------------------------------------------------------------------------


def test_unconfigured_webhooks_are_none_and_unset_variables_name_their_key(
    example_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = load_config(example_project)
    for hook_class in (PostmarkWebhook, SendGridWebhook, MailgunWebhook):
        assert hook_class.from_config(bare) is None  # not configured: not served
    example_project.write_text(example_project.read_text() + TABLES)
    for name in ("TEST_PM_USER", "TEST_PM_PASSWORD", "TEST_SG_KEY", "TEST_MG_KEY"):
        monkeypatch.delenv(name, raising=False)
    configured = load_config(example_project)
    for hook, key in [
        (PostmarkWebhook, "mail.postmark.webhook_user_env"),
        (SendGridWebhook, "mail.sendgrid.webhook_key_env"),
        (MailgunWebhook, "mail.mailgun.webhook_signing_key_env"),
    ]:
        with pytest.raises(ConfigError, match=r"environment variable \$TEST_\w+ is not set") as e:
            hook.from_config(configured)
        assert e.value.key == key


def test_the_old_web_keys_make_the_same_webhooks(config: Config, example_project: Path) -> None:
    old = example_project.parent / "old.toml"  # beside it: its relative paths resolve alike
    old.write_text(example_project.read_text().replace(TABLES, "\n[web]\n" + WEB))
    legacy = load_config(old)
    assert legacy.deprecations  # still read, with a warning saying what to write instead
    for hook in (PostmarkWebhook, SendGridWebhook, MailgunWebhook):
        made = hook.from_config(config)
        assert made is not None and hook.from_config(legacy) == made


def test_serve_reads_the_webhook_secrets_from_the_provider_tables(
    config: Config, example_project: Path, fixed_clock: list[datetime]
) -> None:
    with running_site(example_project) as running:
        with running.publisher() as publisher:
            publisher.add_subscriber("hard@example.com")
        bounce = postmark_bounce("hard@example.com", "HardBounce")
        url = running.url + "/webhooks/postmark"
        assert requests.post(url, json=bounce, timeout=10).status_code == 401
        answer = requests.post(url, json=bounce, auth=(PM_USER, PM_PASSWORD), timeout=10)
        assert answer.status_code == 200 and answer.json() == {"suppressed": 1, "ignored": 0}
        mailgun = post_mailgun(
            running, mailgun_payload({"event": "complained", "recipient": "x@y.z"})
        )
        assert mailgun.json() == {"suppressed": 0, "ignored": 1}  # signed, read; not ours
        assert statuses(running) == {"hard@example.com": BOUNCED}


# --- the registry decides which webhooks exist --------------------------------------------------


def test_the_webhooks_are_those_the_registered_backends_name() -> None:
    assert webhook.registered_webhooks() == {
        "postmark": PostmarkWebhook,
        "sendgrid": SendGridWebhook,
        "mailgun": MailgunWebhook,
        "ses": SESWebhook,
    }
    assert [webhook.webhook_class(name) for name in ("postmark", "sendgrid", "mailgun", "ses")] == [
        PostmarkWebhook,
        SendGridWebhook,
        MailgunWebhook,
        SESWebhook,
    ]
    for name in set(BACKENDS) - set(webhook.registered_webhooks()):
        assert webhook.webhook_class(name) is None, name  # resend, smtp, outbox: no webhook
    for name in ("nope", "webhook", "__init__", "postmark_webhook"):
        assert webhook.webhook_class(name) is None, name  # only registry names, never a module path


def test_only_registered_webhooks_are_served(site: Running) -> None:
    # Every webhook is configured here: still, a backend without one has no route.
    for name in [*sorted(set(BACKENDS) - set(webhook.registered_webhooks())), "nope", "webhook"]:
        answer = requests.post(f"{site.url}/webhooks/{name}", json={}, timeout=10)
        assert answer.status_code == 404, name
    for name in webhook.registered_webhooks():
        answer = requests.post(f"{site.url}/webhooks/{name}", json={}, timeout=10)
        # Served: it refuses what it cannot authenticate (to SES, {} is no SNS message: 400).
        assert answer.status_code in (400, 401, 403), name
    assert statuses(site) == UNCHANGED


# --- the replay guard over the database ---------------------------------------------------------


def test_storage_guard_claims_once_per_provider_and_releases(tmp_path: Path) -> None:
    storage = SqlStorage(f"sqlite:///{tmp_path / 'guard.db'}")
    try:
        incoming = request(b"{}")
        first = StorageReplayGuard(storage, "mailgun", incoming)
        assert first.claim("tok", keep=KEEP)
        replay = StorageReplayGuard(storage, "mailgun", incoming)
        assert not replay.claim("tok", keep=KEEP)
        assert replay.claimed == []  # nothing of its own to give back
        assert StorageReplayGuard(storage, "other", incoming).claim("tok", keep=KEEP)
        replay.release()
        assert not StorageReplayGuard(storage, "mailgun", incoming).claim("tok", keep=KEEP)
        first.release()
        assert first.claimed == []
        assert StorageReplayGuard(storage, "mailgun", incoming).claim("tok", keep=KEEP)
        later = request(b"{}", NOW + KEEP + timedelta(seconds=1))
        assert StorageReplayGuard(storage, "other", later).claim("tok", keep=KEEP)  # expired
    finally:
        storage.close()


def test_a_request_that_fails_on_our_side_gives_its_token_back(site: Running) -> None:
    payload = mailgun_payload(mailgun_failed("hard@example.com", "permanent"))
    with site.publisher() as publisher:
        assert isinstance(publisher.storage, SqlStorage)
        engine = publisher.storage.engine
        with engine.begin() as conn:  # the database refuses the suppression, after the claim
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON subscribers "
                    "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        failed = post_mailgun(site, payload)
        assert failed.status_code == 503 and failed.json() == {"error": "temporarily unavailable"}
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse"))
    retried = post_mailgun(site, payload)  # the provider's retry of the same request
    assert retried.status_code == 200 and retried.json() == {"suppressed": 1, "ignored": 0}
    assert post_mailgun(site, payload).status_code == 403  # accepted once, then a replay
    assert statuses(site) == {**UNCHANGED, "hard@example.com": BOUNCED}
