"""Provider webhooks over real HTTP: good credentials and signatures suppress hard bounces and
complaints for good; bad ones are refused and change nothing.

The SendGrid key pair is made here with ``cryptography``, as SendGrid makes its own: the test
signs like SendGrid and hands the server only the public half, base64 DER as SendGrid's
console shows it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from newsletter import clock
from newsletter.config import load_config
from newsletter.exceptions import ConfigError
from newsletter.mail.mailgun_webhook import mailgun_suppressions
from newsletter.mail.postmark_webhook import postmark_suppressions
from newsletter.mail.sendgrid_webhook import sendgrid_suppressions
from newsletter.storage import SqlStorage, schema
from newsletter.types import SubscriberStatus
from newsletter.web.webhooks import check_webhook_secrets
from tests.test_web_feeds import Running, link_secret, running_site
from tests.test_web_subscribe import another_process

__all__ = ["link_secret"]

PM_USER, PM_PASSWORD = "postmark-hook", "s3cret:with:colons"
MAILGUN_KEY = "mailgun-signing-key-for-tests"
ADDRESSES = ("hard@example.com", "soft@example.com", "spam@example.com", "fine@example.com")

SES_TABLE = """
[mail.ses]
sns_topic_arns = ["arn:aws:sns:us-east-1:123456789012:newsletter-ses-events"]
"""
WEB = """
postmark_webhook_user_env = "TEST_PM_USER"
postmark_webhook_password_env = "TEST_PM_PASSWORD"
sendgrid_webhook_key_env = "TEST_SG_KEY"
mailgun_signing_key_env = "TEST_MG_KEY"
"""


def public_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def site(
    example_project: Path,
    monkeypatch: pytest.MonkeyPatch,
    sendgrid_key: ec.EllipticCurvePrivateKey,
    fixed_clock: list[datetime],
) -> Iterator[Running]:
    monkeypatch.setenv("TEST_PM_USER", PM_USER)
    monkeypatch.setenv("TEST_PM_PASSWORD", PM_PASSWORD)
    monkeypatch.setenv("TEST_SG_KEY", public_key_text(sendgrid_key))
    monkeypatch.setenv("TEST_MG_KEY", MAILGUN_KEY)
    # SES's webhook is on too (tests/test_ses_webhook.py signs for it): every one is served.
    example_project.write_text(example_project.read_text() + SES_TABLE)
    with running_site(example_project, web=WEB) as running:
        with running.publisher() as publisher:
            for address in ADDRESSES:
                publisher.add_subscriber(address)
        yield running


def statuses(site: Running) -> dict[str, SubscriberStatus]:
    with site.publisher() as publisher:
        return {s.email: s.status for s in publisher.subscribers()}


UNCHANGED = dict.fromkeys(ADDRESSES, SubscriberStatus.ACTIVE)


# --- Postmark: HTTP Basic credentials -----------------------------------------------------------


def postmark_bounce(email: str, kind: str) -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": kind,
        "TypeCode": 1 if kind == "HardBounce" else 4096,
        "Name": kind,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "MessageStream": "broadcast",
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "weekly@news.example.org",
        "BouncedAt": "2026-11-22T08:00:00Z",
        "Inactive": kind == "HardBounce",
        "CanActivate": True,
        "Subject": "The Example Weekly",
    }


def post_postmark(site: Running, payload: dict[str, Any], auth: Any) -> requests.Response:
    return requests.post(site.url + "/webhooks/postmark", json=payload, auth=auth, timeout=10)


def test_postmark_hard_bounce_and_complaint_suppress(site: Running) -> None:
    good = (PM_USER, PM_PASSWORD)
    response = post_postmark(site, postmark_bounce("hard@example.com", "HardBounce"), good)
    assert response.status_code == 200 and response.json() == {"suppressed": 1, "ignored": 0}
    assert post_postmark(site, postmark_bounce("soft@example.com", "SoftBounce"), good).json() == {
        "suppressed": 0,
        "ignored": 0,
    }
    complaint = {
        "RecordType": "SpamComplaint",
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Email": "spam@example.com",
        "MessageStream": "broadcast",
    }
    assert post_postmark(site, complaint, good).json()["suppressed"] == 1
    # The same event again changes nothing more.
    assert post_postmark(site, complaint, good).json() == {"suppressed": 0, "ignored": 1}
    assert statuses(site) == {
        **UNCHANGED,
        "hard@example.com": SubscriberStatus.BOUNCED,
        "spam@example.com": SubscriberStatus.COMPLAINED,
    }


def test_postmark_without_the_right_credentials_changes_nothing(site: Running) -> None:
    payload = postmark_bounce("hard@example.com", "HardBounce")
    for auth in (None, (PM_USER, "wrong"), ("wrong", PM_PASSWORD), (PM_USER, "")):
        response = post_postmark(site, payload, auth)
        assert response.status_code == 401, auth
        assert response.headers["www-authenticate"].startswith("Basic")
    bearer = requests.post(
        site.url + "/webhooks/postmark",
        json=payload,
        headers={"Authorization": f"Bearer {PM_PASSWORD}"},
        timeout=10,
    )
    assert bearer.status_code == 401
    assert statuses(site) == UNCHANGED


# --- SendGrid: ECDSA signature ------------------------------------------------------------------


def sendgrid_request(
    key: ec.EllipticCurvePrivateKey, events: list[dict[str, Any]], *, age: float = 0
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    timestamp = str(int(clock.now().timestamp() - age))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


SENDGRID_EVENTS = [
    {
        "email": "hard@example.com",
        "timestamp": 1779436800,
        "event": "bounce",
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist",
        "sg_event_id": "Ym91bmNlLTAtMTIzNDU2Nzg5",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    },
    {
        "email": "soft@example.com",
        "timestamp": 1779436800,
        "event": "bounce",
        "type": "blocked",  # a block is temporary
        "reason": "450 mailbox temporarily unavailable",
        "sg_event_id": "Ym91bmNlLTEtMTIzNDU2Nzg5",
    },
    {"email": "spam@example.com", "timestamp": 1779436800, "event": "spamreport"},
    {"email": "fine@example.com", "timestamp": 1779436800, "event": "delivered"},
    {"email": "stranger@example.com", "timestamp": 1779436800, "event": "spamreport"},
]


def test_sendgrid_signed_events_suppress(
    site: Running, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    body, headers = sendgrid_request(sendgrid_key, SENDGRID_EVENTS)
    response = requests.post(
        site.url + "/webhooks/sendgrid", data=body, headers=headers, timeout=10
    )
    assert response.status_code == 200
    assert response.json() == {"suppressed": 2, "ignored": 1}  # the stranger is not ours
    assert statuses(site) == {
        **UNCHANGED,
        "hard@example.com": SubscriberStatus.BOUNCED,
        "spam@example.com": SubscriberStatus.COMPLAINED,
    }


def test_sendgrid_bad_signatures_change_nothing(
    site: Running, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    url = site.url + "/webhooks/sendgrid"
    body, headers = sendgrid_request(sendgrid_key, SENDGRID_EVENTS)
    impostor = ec.generate_private_key(ec.SECP256R1())
    forged_body, forged = sendgrid_request(impostor, SENDGRID_EVENTS)
    stale_body, stale = sendgrid_request(sendgrid_key, SENDGRID_EVENTS, age=3600)
    tampered = body.replace(b"fine@example.com", b"evil@example.com")
    cases = [
        (forged_body, forged),  # signed by another key
        (tampered, headers),  # the body changed after signing
        (
            body,
            {
                **headers,
                "X-Twilio-Email-Event-Webhook-Timestamp": str(int(clock.now().timestamp()) + 1),
            },
        ),
        (stale_body, stale),  # a genuine request from an hour ago (replayed)
        (body, {"Content-Type": "application/json"}),  # unsigned
        (body, {**headers, "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}),
    ]
    for data, sent_headers in cases:
        response = requests.post(url, data=data, headers=sent_headers, timeout=10)
        assert response.status_code == 403, sent_headers
    assert statuses(site) == UNCHANGED


# --- Mailgun: HMAC of timestamp + token ---------------------------------------------------------


def mailgun_payload(
    event: dict[str, Any], *, key: str = MAILGUN_KEY, age: float = 0, token: str | None = None
) -> dict[str, Any]:
    timestamp = str(int(clock.now().timestamp() - age))
    token = token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event,
    }


def mailgun_failed(email: str, severity: str, reason: str = "bounce") -> dict[str, Any]:
    return {
        "event": "failed",
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1779436800.0,
        "log-level": "error" if severity == "permanent" else "warn",
        "severity": severity,
        "reason": reason,
        "recipient": email,
        "recipient-domain": "example.com",
        "delivery-status": {
            "code": 550 if severity == "permanent" else 452,
            "message": "No such user" if severity == "permanent" else "Mailbox full",
            "description": "",
            "attempt-no": 1,
        },
        "message": {"headers": {"message-id": "20261122080000.1.ABC@news.example.org"}},
    }


def post_mailgun(site: Running, payload: dict[str, Any]) -> requests.Response:
    return requests.post(site.url + "/webhooks/mailgun", json=payload, timeout=10)


def test_mailgun_permanent_failures_and_complaints_suppress(site: Running) -> None:
    hard = post_mailgun(site, mailgun_payload(mailgun_failed("hard@example.com", "permanent")))
    assert hard.status_code == 200 and hard.json() == {"suppressed": 1, "ignored": 0}
    soft = post_mailgun(site, mailgun_payload(mailgun_failed("soft@example.com", "temporary")))
    assert soft.json() == {"suppressed": 0, "ignored": 0}
    old = mailgun_payload(mailgun_failed("fine@example.com", "permanent", reason="old"))
    assert post_mailgun(site, old).json()["suppressed"] == 0  # retries ran out: not a bounce
    complaint = mailgun_payload({"event": "complained", "recipient": "spam@example.com"})
    assert post_mailgun(site, complaint).json()["suppressed"] == 1
    assert statuses(site) == {
        **UNCHANGED,
        "hard@example.com": SubscriberStatus.BOUNCED,
        "spam@example.com": SubscriberStatus.COMPLAINED,
    }


def test_mailgun_bad_stale_or_replayed_signatures_are_refused(site: Running) -> None:
    event = mailgun_failed("hard@example.com", "permanent")
    wrong_key = mailgun_payload(event, key="another-key")
    stale = mailgun_payload(event, age=3600)
    future = mailgun_payload(event, age=-3600)
    altered = mailgun_payload(event)
    altered["signature"]["token"] = secrets.token_hex(25)
    unsigned = {"event-data": event}
    for payload in (wrong_key, stale, future, altered, unsigned):
        assert post_mailgun(site, payload).status_code == 403
    assert statuses(site) == UNCHANGED

    genuine = mailgun_payload(mailgun_failed("soft@example.com", "temporary"))
    assert post_mailgun(site, genuine).status_code == 200
    replayed = dict(genuine, **{"event-data": event})  # same signature, another event
    assert post_mailgun(site, replayed).status_code == 403
    assert post_mailgun(site, genuine).status_code == 403  # the same request again
    assert statuses(site) == UNCHANGED


def test_a_mailgun_token_is_accepted_once_by_every_process(site: Running) -> None:
    # Two `serve` processes behind one load balancer: a replay to the other one is refused.
    with another_process(site) as other:
        payloads = [mailgun_payload(mailgun_failed(address, "permanent")) for address in ADDRESSES]

        def post(job: tuple[Running, dict[str, Any]]) -> int:
            return post_mailgun(*job).status_code

        # Each request sent to both at once, twice over: one answer in four is 200.
        jobs = [(s, payload) for payload in payloads for s in (site, other, other, site)]
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(post, jobs))
        for i in range(len(payloads)):
            assert sorted(codes[4 * i : 4 * i + 4]) == [200, 403, 403, 403]
        assert set(statuses(site).values()) == {SubscriberStatus.BOUNCED}
        with site.publisher() as publisher:
            assert isinstance(publisher.storage, SqlStorage)
            with publisher.storage.engine.connect() as conn:
                keys = list(conn.execute(select(schema.webhook_tokens.c.key)).scalars())
        tokens = [p["signature"]["token"] for p in payloads]
        assert len(keys) == len(tokens) and not set(keys) & set(tokens)  # hashes only


# --- suppression is for good ---------------------------------------------------------------------


def test_suppressed_addresses_never_come_back(site: Running, tmp_path: Path) -> None:
    good = (PM_USER, PM_PASSWORD)
    assert post_postmark(site, postmark_bounce("hard@example.com", "HardBounce"), good).ok
    subscribed = requests.post(
        site.url + "/subscribe", data={"email": "hard@example.com"}, timeout=10
    )
    assert subscribed.status_code == 200
    csv_file = tmp_path / "again.csv"
    csv_file.write_text("email\nhard@example.com\n")
    with site.publisher() as publisher:
        report = publisher.import_subscribers(csv_file)
        assert (report.added, report.already_present) == (0, 1)
        _, created = publisher.add_subscriber("hard@example.com")  # `subscribers add`
        assert not created
        assert publisher.storage.count_subscribers(SubscriberStatus.BOUNCED) == 1
    requests.post(site.url + "/subscribe", data={"email": "marker@example.com"}, timeout=10)
    site.wait_for_mail("marker@example.com")
    assert "hard@example.com" not in site.mails()
    assert statuses(site)["hard@example.com"] == SubscriberStatus.BOUNCED


def test_unconfigured_webhooks_are_not_served(example_project: Path) -> None:
    with running_site(example_project) as site:
        for provider in ("postmark", "sendgrid", "mailgun", "ses"):
            response = requests.post(f"{site.url}/webhooks/{provider}", json={}, timeout=10)
            assert response.status_code == 404, provider


def test_serve_checks_the_secrets_at_start(
    example_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example_project.write_text(example_project.read_text() + "\n[web]\n" + WEB)
    for name in ("TEST_PM_USER", "TEST_PM_PASSWORD", "TEST_MG_KEY"):
        monkeypatch.setenv(name, "x")
    monkeypatch.delenv("TEST_SG_KEY", raising=False)
    config = load_config(example_project)
    with pytest.raises(ConfigError, match=r"\$TEST_SG_KEY is not set"):
        check_webhook_secrets(config)
    monkeypatch.setenv("TEST_SG_KEY", "bm90IGEga2V5")  # base64, but not a key
    with pytest.raises(ConfigError, match="verification key"):
        check_webhook_secrets(config)
    monkeypatch.setenv("TEST_SG_KEY", public_key_text(ec.generate_private_key(ec.SECP256R1())))
    check_webhook_secrets(config)


# --- the payload readers -------------------------------------------------------------------------


def test_payload_readers_keep_hard_bounces_and_complaints_only() -> None:
    assert [
        s.email for s in postmark_suppressions(postmark_bounce("a@x.org", "BadEmailAddress"))
    ] == ["a@x.org"]
    for kind in ("SoftBounce", "Transient", "DnsError", "AutoResponder", "Blocked"):
        assert postmark_suppressions(postmark_bounce("a@x.org", kind)) == []
    change = {
        "RecordType": "SubscriptionChange",
        "Recipient": "c@x.org",
        "SuppressSending": True,
        "SuppressionReason": "HardBounce",
    }
    assert [s.status for s in postmark_suppressions(change)] == [SubscriberStatus.BOUNCED]
    assert postmark_suppressions({**change, "SuppressSending": False}) == []
    dropped = [
        {"event": "dropped", "email": "d@x.org", "reason": "Bounced Address"},
        {"event": "dropped", "email": "e@x.org", "reason": "Unsubscribed Address"},
        {"event": "deferred", "email": "f@x.org"},
        "not an event",
    ]
    assert [(s.email, s.status) for s in sendgrid_suppressions(dropped)] == [
        ("d@x.org", SubscriberStatus.BOUNCED)
    ]
    suppressed = {
        "event-data": {
            "event": "failed",
            "severity": "permanent",
            "reason": "suppress-complaint",
            "recipient": "g@x.org",
        }
    }
    assert [s.status for s in mailgun_suppressions(suppressed)] == [SubscriberStatus.COMPLAINED]


def test_readers_refuse_payloads_of_the_wrong_shape(site: Running) -> None:
    good = (PM_USER, PM_PASSWORD)
    assert (
        requests.post(
            site.url + "/webhooks/postmark", data=b"[1, 2]", auth=good, timeout=10
        ).status_code
        == 400
    )
    assert (
        requests.post(
            site.url + "/webhooks/postmark", data=b"{not json", auth=good, timeout=10
        ).status_code
        == 400
    )
    assert statuses(site) == UNCHANGED


def test_clock_seam_is_what_the_signatures_are_checked_against(
    site: Running, fixed_clock: list[datetime]
) -> None:
    # The server and this test read the same clock: a request signed "now" passes even though
    # the fixed clock is far from the wall clock, and one signed before a jump does not.
    payload = mailgun_payload(mailgun_failed("hard@example.com", "permanent"))
    fixed_clock[0] += timedelta(minutes=11)
    assert post_mailgun(site, payload).status_code == 403
    fixed_clock[0] -= timedelta(minutes=11)
    assert post_mailgun(site, payload).status_code == 200
