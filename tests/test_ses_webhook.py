"""The SES webhook on its own: SNS messages signed here as SNS signs them, checked by
``SESWebhook`` against a certificate served by a real loopback HTTP server.

The key pair and the self-signed X.509 certificate are made with ``cryptography``; the signer
builds the string to sign from the field lists in AWS's "Verifying the signatures of Amazon
SNS messages", written out here rather than taken from the module under test. The SES events
are the documentation's examples ("Amazon SNS notification examples for Amazon SES").
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.config import load_config
from newsletter.mail.ses_webhook import MAX_AGE_SECONDS, SESWebhook
from newsletter.mail.webhook import Refused, Suppression, WebhookRequest
from newsletter.types import SubscriberStatus
from tests._http import LoopbackServer, Reply
from tests.test_web_feeds import Running, link_secret, running_site

__all__ = ["link_secret"]  # its autouse fixture: the site's signing secret

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:us-east-1:123456789012:newsletter-ses-events"
OTHER_TOPIC = "arn:aws:sns:us-east-1:210987654321:someone-elses-topic"
LOOPBACK = r"^http://127\.0\.0\.1:\d+/"
SNS_CERT = (
    r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/SimpleNotificationService-[0-9a-f]+\.pem$"
)

# "Bounce notification with a DSN", headers left out as when they are not included.
DOC_BOUNCE: dict[str, Any] = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "reportingMTA": "dns; email.example.com",
        "bouncedRecipients": [
            {
                "emailAddress": "jane@example.com",
                "status": "5.1.1",
                "action": "failed",
                "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User",
            }
        ],
        "bounceSubType": "General",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
        "remoteMtaIp": "127.0.2.0",
    },
    "mail": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "source": "john@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
        "sourceIp": "127.0.3.0",
        "sendingAccountId": "123456789012",
        "callerIdentity": "IAM_user_or_role_name",
        "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
    },
}

# "Complaint notification with a feedback report".
DOC_COMPLAINT: dict[str, Any] = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "richard@example.com"}],
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    },
    "mail": {
        **DOC_BOUNCE["mail"],
        "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
    },
}

# "Bounce notification without a DSN": a transient one, which changes nothing.
DOC_TRANSIENT: dict[str, Any] = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Transient",
        "bounceSubType": "General",
        "bouncedRecipients": [{"emailAddress": "jane@example.com"}],
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000137860315fd-869464a4-8680-4114-98d3-716fe35851f9-000000",
        "remoteMtaIp": "127.0.2.0",
    },
    "mail": {"messageId": "00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000"},
}

DOC_DELIVERY: dict[str, Any] = {
    "notificationType": "Delivery",
    "mail": {"messageId": "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000"},
    "delivery": {
        "timestamp": "2014-05-28T22:41:01.184Z",
        "processingTimeMillis": 546,
        "recipients": ["success@simulator.amazonses.com"],
        "smtpResponse": "250 ok:  Message 64111812 accepted",
        "reportingMTA": "a8-70.smtp-out.amazonses.com",
        "remoteMtaIp": "127.0.2.0",
    },
}


@dataclass
class Guard:
    """The ``ReplayGuard`` contract in memory: each token is claimed once."""

    claimed: dict[str, timedelta] = field(default_factory=dict)

    def claim(self, token: str, *, keep: timedelta) -> bool:
        if token in self.claimed:
            return False
        self.claimed[token] = keep
        return True


@dataclass(frozen=True)
class Signer:
    key: rsa.RSAPrivateKey
    cert_pem: bytes


def self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM X.509 certificate for ``key``'s public half, signed by ``key`` itself."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def make_signer() -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Signer(key, self_signed(key))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


class AWS(LoopbackServer):
    """Stands in for sns.<region>.amazonaws.com: the certificate and ConfirmSubscription.

    Its certificate's name is new for each server: certificates are kept per URL for the
    process, and a later test's server may be given an earlier one's port."""

    def __init__(self) -> None:
        super().__init__()
        self.cert_path = f"/SimpleNotificationService-{secrets.token_hex(16)}.pem"


@pytest.fixture
def aws() -> Iterator[AWS]:
    server = AWS()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def hook(aws: AWS, signer: Signer) -> SESWebhook:
    aws.route(
        aws.cert_path, Reply(200, signer.cert_pem, {"Content-Type": "application/x-pem-file"})
    )
    aws.route("/", Reply(200, b"<ConfirmSubscriptionResponse/>", {"Content-Type": "text/xml"}))
    return SESWebhook([TOPIC], LOOPBACK + r"SimpleNotificationService-[0-9a-f]+\.pem$", LOOPBACK)


def string_to_sign(m: dict[str, Any]) -> str:
    if m["Type"] == "Notification":
        # "Subject (if present)": a null one is absent too, as the AWS SDKs read it (isset).
        subject = f"Subject\n{m['Subject']}\n" if m.get("Subject") is not None else ""
        return (
            f"Message\n{m['Message']}\nMessageId\n{m['MessageId']}\n{subject}"
            f"Timestamp\n{m['Timestamp']}\nTopicArn\n{m['TopicArn']}\nType\n{m['Type']}\n"
        )
    return (
        f"Message\n{m['Message']}\nMessageId\n{m['MessageId']}\n"
        f"SubscribeURL\n{m['SubscribeURL']}\nTimestamp\n{m['Timestamp']}\n"
        f"Token\n{m['Token']}\nTopicArn\n{m['TopicArn']}\nType\n{m['Type']}\n"
    )


def sign(signer: Signer, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    raw = signer.key.sign(string_to_sign(message).encode(), padding.PKCS1v15(), algorithm)
    return {**message, "SignatureVersion": version, "Signature": base64.b64encode(raw).decode()}


_ids = iter(range(1, 1_000_000))


def envelope(
    aws: AWS, kind: str = "Notification", *, message: Any = None, **fields: Any
) -> dict[str, Any]:
    """An SNS message as the HTTP/S JSON format describes it (unsigned)."""
    m: dict[str, Any] = {
        "Type": kind,
        "MessageId": f"165545c9-2a5c-472c-8df2-{next(_ids):012d}",
        "TopicArn": TOPIC,
        "Timestamp": (NOW - timedelta(seconds=2)).isoformat(timespec="milliseconds")[:-6] + "Z",
        "SigningCertURL": aws.url(aws.cert_path),
    }
    if kind == "Notification":
        m["Message"] = json.dumps(DOC_BOUNCE if message is None else message)
        m["UnsubscribeURL"] = aws.url("/?Action=Unsubscribe&SubscriptionArn=" + TOPIC + ":c9135db0")
    else:
        token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3"
        m["Token"] = token
        m["Message"] = f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm ..."
        m["SubscribeURL"] = aws.url(f"/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}")
    return {**m, **fields}


def request(
    message: dict[str, Any], *, now: datetime = NOW, body: bytes | None = None, **headers: str
) -> WebhookRequest:
    sent = {
        "content-type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": str(message.get("Type")),
        "x-amz-sns-message-id": str(message.get("MessageId")),
        "x-amz-sns-topic-arn": str(message.get("TopicArn")),
        "user-agent": "Amazon Simple Notification Service Agent",
    }
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    data = json.dumps(message, indent=2).encode() if body is None else body
    return WebhookRequest({k: v for k, v in sent.items() if v != "-"}, data, now)


def refused(hook: SESWebhook, req: WebhookRequest, guard: Guard | None = None) -> Refused:
    with pytest.raises(Refused) as caught:
        hook.handle(req, guard or Guard())
    return caught.value


# --- what suppresses --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_permanent_bounce_suppresses_each_bounced_recipient(
    hook: SESWebhook, aws: AWS, signer: Signer, version: str
) -> None:
    guard = Guard()
    message = sign(signer, envelope(aws), version)
    found = hook.handle(request(message), guard)
    assert found == [
        Suppression(
            "jane@example.com",
            SubscriberStatus.BOUNCED,
            "ses permanent bounce (General): smtp; 550 5.1.1 <jane@example.com>... User",
        )
    ]
    assert guard.claimed == {message["MessageId"]: timedelta(seconds=MAX_AGE_SECONDS + 600)}


def test_a_complaint_suppresses_each_complained_recipient(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    message = sign(signer, envelope(aws, message=DOC_COMPLAINT, Subject="Amazon SES Complaint"))
    assert hook.handle(request(message), Guard()) == [
        Suppression("richard@example.com", SubscriberStatus.COMPLAINED, "ses complaint: abuse")
    ]


def test_event_publishing_uses_event_type_and_several_recipients(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    bounce = {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "OnAccountSuppressionList",
            "bouncedRecipients": [
                {"emailAddress": "a@example.com", "status": "5.1.1"},
                {"emailAddress": "b@example.com"},
                {"emailAddress": ""},
                "not an object",
            ],
        },
        "mail": {"messageId": "0102017b-1111"},
    }
    complaint = {
        "eventType": "Complaint",
        "complaint": {"complainedRecipients": [{"emailAddress": "c@example.com"}]},
    }
    found = hook.handle(request(sign(signer, envelope(aws, message=bounce))), Guard())
    found += hook.handle(request(sign(signer, envelope(aws, message=complaint))), Guard())
    assert [(s.email, s.status) for s in found] == [
        ("a@example.com", SubscriberStatus.BOUNCED),
        ("b@example.com", SubscriberStatus.BOUNCED),
        ("c@example.com", SubscriberStatus.COMPLAINED),
    ]
    assert found[0].reason == "ses permanent bounce (OnAccountSuppressionList): 5.1.1"
    assert found[2].reason == "ses complaint: reported as spam"


@pytest.mark.parametrize(
    "event",
    [
        DOC_TRANSIENT,
        {**DOC_TRANSIENT, "bounce": {**DOC_TRANSIENT["bounce"], "bounceType": "Undetermined"}},
        DOC_DELIVERY,
        {"eventType": "DeliveryDelay", "deliveryDelay": {"delayedRecipients": []}},
        {"eventType": "Send", "mail": {}},
    ],
    ids=["transient", "undetermined", "delivery", "delay", "send"],
)
def test_other_events_are_accepted_and_change_nothing(
    hook: SESWebhook, aws: AWS, signer: Signer, event: dict[str, Any]
) -> None:
    assert hook.handle(request(sign(signer, envelope(aws, message=event))), Guard()) == []


def test_a_signed_message_that_is_no_ses_event_is_ignored(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    message = sign(signer, envelope(aws, Message="Hello world!", Subject="My First Message"))
    assert hook.handle(request(message), Guard()) == []


def test_the_certificate_is_fetched_once_per_url(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    for _ in range(3):
        hook.handle(request(sign(signer, envelope(aws))), Guard())
    assert len(aws.seen(aws.cert_path)) == 1


# --- subscriptions ------------------------------------------------------------------------------


def test_a_subscription_is_confirmed_by_one_get_of_the_subscribe_url(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    message = sign(signer, envelope(aws, "SubscriptionConfirmation"), "1")
    assert hook.handle(request(message), Guard()) == []
    [seen] = aws.seen("/")
    assert seen.method == "GET"
    assert aws.url(seen.path) == message["SubscribeURL"]


def test_a_subscribe_url_outside_the_pattern_is_refused_without_a_request(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    elsewhere = "https://attacker.example/?Action=ConfirmSubscription"
    message = sign(signer, envelope(aws, "SubscriptionConfirmation", SubscribeURL=elsewhere))
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (403, "SubscribeURL is not an allowed SNS URL")
    assert aws.seen() == []


def test_a_failed_confirmation_is_503_so_sns_retries(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    aws.route("/", Reply(500, b"<Error/>"))
    message = sign(signer, envelope(aws, "SubscriptionConfirmation"))
    assert refused(hook, request(message)).status_code == 503
    assert len(aws.seen("/")) == 1


def test_an_unsubscribe_confirmation_is_logged_and_nothing_is_requested(
    hook: SESWebhook, aws: AWS, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    message = sign(signer, envelope(aws, "UnsubscribeConfirmation"))
    assert hook.handle(request(message), Guard()) == []
    assert aws.seen("/") == []
    assert "unsubscribed from " + TOPIC in caplog.text


# --- what is refused ----------------------------------------------------------------------------


def test_a_tampered_message_is_refused(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = sign(signer, envelope(aws))
    forged = json.loads(message["Message"])
    forged["bounce"]["bouncedRecipients"][0]["emailAddress"] = "victim@example.com"
    error = refused(hook, request({**message, "Message": json.dumps(forged)}))
    assert (error.status_code, error.message) == (403, "bad signature")


def test_an_added_subject_is_refused(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = sign(signer, envelope(aws))
    assert refused(hook, request({**message, "Subject": "x"})).message == "bad signature"


@pytest.mark.parametrize(
    ("change", "expected", "fetched"),
    [
        ({"Signature": base64.b64encode(b"\x00" * 256).decode()}, "bad signature", 1),
        # What cannot be a signature costs no request for the certificate.
        ({"Signature": "not base64!"}, "bad signature", 0),
        ({"Signature": None}, "missing signature", 0),
        ({"SignatureVersion": "3"}, "unsupported SignatureVersion", 0),
        ({"SignatureVersion": 2}, "unsupported SignatureVersion", 0),
    ],
)
def test_a_bad_signature_is_refused(
    hook: SESWebhook,
    aws: AWS,
    signer: Signer,
    change: dict[str, Any],
    expected: str,
    fetched: int,
) -> None:
    message = {**sign(signer, envelope(aws)), **change}
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (403, expected)
    assert len(aws.seen(aws.cert_path)) == fetched


def test_the_signature_version_decides_the_hash(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = sign(signer, envelope(aws), "1")
    assert refused(hook, request({**message, "SignatureVersion": "2"})).status_code == 403


def test_a_signature_by_another_key_is_refused(hook: SESWebhook, aws: AWS) -> None:
    message = sign(make_signer(), envelope(aws))
    assert refused(hook, request(message)).message == "bad signature"


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com.attacker.example/SimpleNotificationService-ab.pem",
        "http://127.0.0.1:1/elsewhere.pem",
        "http://127.0.0.1:1/SimpleNotificationService-ab.pem\n",
        None,
    ],
)
def test_a_certificate_url_outside_the_pattern_is_refused_without_a_request(
    hook: SESWebhook, aws: AWS, signer: Signer, url: str | None
) -> None:
    message = sign(signer, envelope(aws, SigningCertURL=url))
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (403, "SigningCertURL is not an allowed SNS URL")
    assert aws.seen() == []


def test_the_default_certificate_pattern_takes_amazon_hosts_only() -> None:
    hook = SESWebhook([TOPIC], SNS_CERT, r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/")
    ok = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233f.pem"
    assert hook.certificate_url.match(ok)
    assert hook.certificate_url.match(ok.replace(".com/", ".com.cn/"))
    for bad in (
        ok.replace("https", "http"),
        ok.replace("sns.us-west-2", "sns.us-west-2.attacker.example/x"),
        ok.replace(".com/", ".com.attacker.example/"),
        ok.replace(".com/", ".com@attacker.example/"),
    ):
        assert not hook.certificate_url.match(bad), bad


def test_a_topic_not_configured_is_refused(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = sign(signer, envelope(aws, TopicArn=OTHER_TOPIC))
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (403, "messages from this topic are not accepted")


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(seconds=MAX_AGE_SECONDS + 1), "stale timestamp"),
        (timedelta(days=-1), "timestamp in the future"),
    ],
)
def test_a_timestamp_outside_the_window_is_refused(
    hook: SESWebhook, aws: AWS, signer: Signer, age: timedelta, expected: str
) -> None:
    when = (NOW - age).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    error = refused(hook, request(sign(signer, envelope(aws, Timestamp=when))))
    assert (error.status_code, error.message) == (403, expected)


def test_a_retry_an_hour_later_is_accepted(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = sign(signer, envelope(aws))
    later = NOW + timedelta(seconds=3600)
    assert len(hook.handle(request(message, now=later), Guard())) == 1


@pytest.mark.parametrize("when", ["yesterday", "2026-11-29T12:00:00", "9" * 50])
def test_a_malformed_timestamp_is_refused(
    hook: SESWebhook, aws: AWS, signer: Signer, when: str
) -> None:
    error = refused(hook, request(sign(signer, envelope(aws, Timestamp=when))))
    assert (error.status_code, error.message) == (403, "missing or malformed timestamp")


def test_a_replayed_message_id_is_refused(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    guard = Guard()
    message = sign(signer, envelope(aws))
    assert len(hook.handle(request(message), guard)) == 1
    error = refused(hook, request(message), guard)
    assert (error.status_code, error.message) == (403, "replayed message")


def test_a_message_id_is_claimed_only_once_verified(
    hook: SESWebhook, aws: AWS, signer: Signer
) -> None:
    guard = Guard()
    message = sign(signer, envelope(aws))
    refused(hook, request({**message, "Signature": message["Signature"][::-1]}), guard)
    assert guard.claimed == {}
    assert len(hook.handle(request(message), guard)) == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "the body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the JSON nests more than 32 levels deep"),
        (b'["Type", "Notification"]', "expected a JSON object (an SNS message)"),
        (b'{"Type": "Notification", "n": NaN}', "NaN is not a JSON number"),
        (b'{"Type": "Nonsense"}', "not an SNS message (Type)"),
        (b"\xff\xfe", "the body is not UTF-8"),
    ],
)
def test_a_body_that_is_no_sns_message_is_400(
    hook: SESWebhook, aws: AWS, body: bytes, expected: str
) -> None:
    req = request(envelope(aws), body=body, x_amz_sns_message_type="Notification")
    error = refused(hook, req)
    assert (error.status_code, error.message) == (400, expected)
    assert aws.seen() == []


def test_a_field_of_the_wrong_type_is_400(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    message = {**sign(signer, envelope(aws)), "Message": {"notificationType": "Bounce"}}
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (400, "not an SNS message (Message)")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x_amz_sns_message_type": "-"}, "missing x-amz-sns-message-type header"),
        ({"x_amz_sns_topic_arn": "-"}, "missing x-amz-sns-topic-arn header"),
        ({"x_amz_sns_message_id": "-"}, "missing x-amz-sns-message-id header"),
        (
            {"x_amz_sns_message_type": "SubscriptionConfirmation"},
            "x-amz-sns-message-type does not match the message's Type",
        ),
        (
            {"x_amz_sns_topic_arn": OTHER_TOPIC},
            "x-amz-sns-topic-arn does not match the message's TopicArn",
        ),
    ],
)
def test_headers_missing_or_disagreeing_with_the_body_are_400(
    hook: SESWebhook,
    aws: AWS,
    signer: Signer,
    headers: dict[str, str],
    expected: str,
) -> None:
    req = request(sign(signer, envelope(aws)))
    changed = {k.replace("_", "-"): v for k, v in headers.items()}
    sent = {k: v for k, v in {**req.headers, **changed}.items() if v != "-"}
    error = refused(hook, WebhookRequest(sent, req.body, req.now))
    assert (error.status_code, error.message) == (400, expected)


@pytest.mark.parametrize("content_type", ["-", "application/x-www-form-urlencoded", "text/html"])
def test_a_body_that_is_not_text_plain_is_415(
    hook: SESWebhook, aws: AWS, signer: Signer, content_type: str
) -> None:
    error = refused(hook, request(sign(signer, envelope(aws)), content_type=content_type))
    assert error.status_code == 415


def test_application_json_is_accepted_too(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    # A delivery policy's headerContentType may set it.
    message = sign(signer, envelope(aws))
    assert len(hook.handle(request(message, content_type="application/json"), Guard())) == 1


# --- the certificate ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["404", "redirect", "too-large"])
def test_a_certificate_that_cannot_be_fetched_is_503(
    hook: SESWebhook, aws: AWS, signer: Signer, fault: str
) -> None:
    # The redirect leads to the right certificate, but where no pattern was checked.
    moved = aws.route("/moved.pem", Reply(200, signer.cert_pem))
    aws.route(
        aws.cert_path,
        {
            "404": Reply(404, b"not found"),
            "redirect": Reply(301, headers={"Location": moved}),
            "too-large": Reply(200, b"A" * 70_000, chunked=True),
        }[fault],
    )
    message = sign(signer, envelope(aws))
    error = refused(hook, request(message))
    assert (error.status_code, error.message) == (503, "signing certificate unavailable")
    assert [urlsplit(seen.path).path for seen in aws.seen()] == [aws.cert_path]


def test_a_certificate_server_that_is_down_is_503(signer: Signer) -> None:
    gone = AWS()
    gone.close()
    message = sign(signer, envelope(gone))
    hook = SESWebhook([TOPIC], LOOPBACK, LOOPBACK, timeout=2)
    assert refused(hook, request(message)).status_code == 503


@pytest.mark.parametrize("kind", ["not pem", "ec key"])
def test_a_certificate_that_is_no_rsa_x509_pem_is_refused(
    hook: SESWebhook, aws: AWS, signer: Signer, kind: str
) -> None:
    if kind == "not pem":
        body = signer.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        body = self_signed(ec.generate_private_key(ec.SECP256R1()))
    aws.route(aws.cert_path, Reply(200, body))
    error = refused(hook, request(sign(signer, envelope(aws))))
    assert (error.status_code, error.message) == (403, "unusable signing certificate")


def test_concurrent_messages_are_all_verified(hook: SESWebhook, aws: AWS, signer: Signer) -> None:
    guard, found = Guard(), []
    lock = threading.Lock()
    messages = [sign(signer, envelope(aws)) for _ in range(8)]

    def handle(message: dict[str, Any]) -> None:
        result = hook.handle(request(message), guard)
        with lock:
            found.extend(result)

    threads = [threading.Thread(target=handle, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(found) == 8


def test_a_lone_surrogate_is_400(hook: SESWebhook, aws: AWS) -> None:
    error = refused(hook, request(envelope(aws, Message="\ud800")))
    assert error.status_code == 400
    assert error.message.startswith("the JSON holds an unpaired surrogate")
    assert aws.seen() == []


SNS_FIELDS = st.sampled_from(
    [
        "Type",
        "MessageId",
        "TopicArn",
        "Timestamp",
        "Message",
        "Subject",
        "SubscribeURL",
        "Token",
        "Signature",
        "SignatureVersion",
        "SigningCertURL",
    ]
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"]),
    changes=st.dictionaries(SNS_FIELDS, ANY_JSON | SNS_FIELDS, max_size=3),
    removed=st.sets(SNS_FIELDS, max_size=2),
)
def test_any_altered_message_is_refused_never_an_error(
    hook: SESWebhook,
    aws: AWS,
    signer: Signer,
    kind: str,
    changes: dict[str, Any],
    removed: set[str],
) -> None:
    signed = sign(signer, envelope(aws, kind))
    message = {k: v for k, v in {**signed, **changes}.items() if k not in removed}
    try:
        found = hook.handle(request(message), Guard())
    except Refused as e:
        assert e.status_code in (400, 403), e.message
    else:
        # What gets through carries SNS's signature over its own string to sign.
        algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
        signer.key.public_key().verify(
            base64.b64decode(message["Signature"]),
            string_to_sign(message).encode(),
            padding.PKCS1v15(),
            algorithm,
        )
        assert all(isinstance(item, Suppression) for item in found)
    # Never a request anywhere but the certificate's and, when confirming, SubscribeURL's.
    assert {urlsplit(seen.path).path for seen in aws.seen()} <= {aws.cert_path, "/"}


# --- through newsletter serve ---------------------------------------------------------------------


def post_sns(site: Running, message: dict[str, Any]) -> requests.Response:
    """POST ``message`` as SNS does: JSON as text/plain, with its x-amz-sns-* headers."""
    headers = {
        k: v for k, v in request(message).headers.items() if k.startswith(("x-amz", "content"))
    }
    return requests.post(
        site.url + "/webhooks/ses", data=json.dumps(message), headers=headers, timeout=10
    )


def test_through_serve_bounces_and_complaints_suppress_once(
    example_project: Path, fixed_clock: list[datetime], aws: AWS, signer: Signer
) -> None:
    fixed_clock[0] = NOW
    aws.route(aws.cert_path, Reply(200, signer.cert_pem))
    aws.route("/", Reply(500, b"<Error/>"))
    example_project.write_text(
        example_project.read_text()
        + f'\n[mail.ses]\nsns_topic_arns = ["{TOPIC}"]\n'
        + f"sns_certificate_url_pattern = '{LOOPBACK}'\nsns_subscribe_url_pattern = '{LOOPBACK}'\n"
    )
    with running_site(example_project) as site:
        with site.publisher() as publisher:
            for address in ("jane@example.com", "mary@example.com", "richard@example.com"):
                publisher.add_subscriber(address)
        confirmation = sign(signer, envelope(aws, "SubscriptionConfirmation"))
        bounce = sign(signer, envelope(aws))
        complaint = sign(signer, envelope(aws, message=DOC_COMPLAINT), "1")

        # Confirming fails on AWS's side: 503, and the MessageId's claim is given back...
        assert post_sns(site, confirmation).status_code == 503
        aws.route("/", Reply(200, b"<ConfirmSubscriptionResponse/>"))
        # ... so SNS's retry of the same message counts; once.
        assert post_sns(site, confirmation).json() == {"suppressed": 0, "ignored": 0}
        assert post_sns(site, confirmation).status_code == 403
        assert len(aws.seen("/")) == 2
        assert post_sns(site, bounce).json() == {"suppressed": 1, "ignored": 0}
        assert post_sns(site, complaint).json() == {"suppressed": 1, "ignored": 0}
        replayed = post_sns(site, complaint)
        assert (replayed.status_code, replayed.json()) == (403, {"error": "replayed message"})
        wrong_topic = post_sns(site, sign(signer, envelope(aws, TopicArn=OTHER_TOPIC)))
        assert wrong_topic.status_code == 403

        with site.publisher() as publisher:
            found = {s.email: s.status for s in publisher.subscribers()}
    assert found == {
        "jane@example.com": SubscriberStatus.BOUNCED,
        "mary@example.com": SubscriberStatus.ACTIVE,
        "richard@example.com": SubscriberStatus.COMPLAINED,
    }
    assert len(aws.seen("/")) == 2
    assert len(aws.seen(aws.cert_path)) == 1


def test_from_config_is_none_without_topics(example_project: Path) -> None:
    assert SESWebhook.from_config(load_config(example_project)) is None
    example_project.write_text(
        example_project.read_text() + f'\n[mail.ses]\nsns_topic_arns = ["{TOPIC}"]\n'
    )
    hook = SESWebhook.from_config(load_config(example_project))
    assert hook is not None and hook.topic_arns == {TOPIC}
    assert hook.certificate_url.match(
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
    )
    assert not hook.certificate_url.match("http://127.0.0.1:80/SimpleNotificationService-0.pem")
