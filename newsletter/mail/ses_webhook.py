"""Amazon SES bounces and complaints, delivered by Amazon SNS to ``POST /webhooks/ses``.

SES publishes its bounce and complaint notifications (or a configuration set's event
publishing) to an SNS topic; the topic has an HTTPS subscription to this endpoint. SNS posts
one JSON document per request with ``Content-Type: text/plain; charset=UTF-8`` and the headers
``x-amz-sns-message-type``, ``x-amz-sns-message-id`` and ``x-amz-sns-topic-arn``, which must
agree with the body (400 otherwise; ``application/json``, which a delivery policy may
set, is taken too, any other type is 415). Three ``Type``s arrive, each signed by SNS:

- ``SubscriptionConfirmation``: confirmed by a GET of its ``SubscribeURL``; no suppression.
- ``UnsubscribeConfirmation``: logged (bounces will stop arriving), nothing else.
- ``Notification``: its ``Message`` is the SES event as a JSON string. A ``Bounce`` whose
  ``bounceType`` is ``Permanent`` suppresses each ``bouncedRecipients[].emailAddress`` as
  bounced; a ``Complaint`` suppresses each ``complainedRecipients[].emailAddress`` as
  complained. The type is ``notificationType`` (identity notifications) or ``eventType``
  (configuration-set event publishing). Transient and Undetermined bounces, deliveries and
  every other event are accepted and ignored.

Authentication, per "Verifying the signatures of Amazon SNS messages" (SNS Developer Guide),
all before anything in the message is acted on:

- ``TopicArn`` must be one of the configured topics (403): anyone can create a topic and
  subscribe our URL to it, and SNS would sign those messages just the same.
- ``SigningCertURL`` must match the certificate URL pattern (by default only
  ``https://sns.<region>.amazonaws.com[.cn]/SimpleNotificationService-<hex>.pem``), else 403;
  a ``SubscribeURL`` must match the subscribe URL pattern, else 403, before any request is made.
- The signature (base64 in ``Signature``) is RSA PKCS#1 v1.5 over the canonical string: the
  signed fields, in the order the guide lists them per type, each as ``name\\nvalue\\n``;
  SHA1 for ``SignatureVersion`` 1, SHA256 for 2 (403 if it does not verify). The X.509 PEM
  certificate is fetched over HTTPS (where the host's TLS certificate is what makes it
  Amazon's), without redirects, within ``timeout`` seconds and ``MAX_CERTIFICATE_BYTES``, and
  kept per URL in this process: SNS names a new URL when it changes its key.
- ``Timestamp`` more than ``MAX_AGE_SECONDS`` old, or more than ``MAX_SKEW_SECONDS`` ahead,
  is 403. SNS keeps the original timestamp (and signature) on every retry, and the total retry
  time of an HTTP/S delivery policy is at most 3,600 seconds (a hard limit, "Amazon SNS
  message delivery retries"), so an hour plus a margin for clocks and queueing accepts every
  genuine retry while a captured message expires.
- ``MessageId`` is claimed through the ``ReplayGuard`` for as long as its timestamp would be
  accepted: a replay within that window is 403. The web layer releases the claim when it
  answers 5xx, so SNS's retry of a message we failed to apply counts.

Failures on our side that SNS should retry are 503: the certificate or the ``SubscribeURL``
could not be fetched. SNS retries only 5xx answers and timeouts; any 4xx ends the delivery.

Owns: reading and authenticating SNS messages and the SES events inside. Does not own: the
settings (``SESSettings`` in ``newsletter.mail.ses``), the route, the replay store and what a
suppression does (``newsletter.web.webhooks``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import requests

from newsletter._version import USER_AGENT
from newsletter.jsonsafe import BadBody, parse_json
from newsletter.mail.webhook import (
    BOUNCED,
    COMPLAINED,
    Refused,
    ReplayGuard,
    Suppression,
    Webhook,
    WebhookRequest,
    suppression,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from newsletter.config import Config

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 3600 + 600  # SNS's longest retry window, plus clocks and queueing
MAX_SKEW_SECONDS = 600  # how far ahead of our clock a timestamp may be
REPLAY_KEEP = timedelta(seconds=MAX_AGE_SECONDS + MAX_SKEW_SECONDS)
FETCH_TIMEOUT = 5.0  # seconds: SNS gives up on an answer after about 15
MAX_CERTIFICATE_BYTES = 64 * 1024  # SNS's certificates are about 2 KB
MAX_ANSWER_BYTES = 64 * 1024  # of the ConfirmSubscription answer, read and dropped
MAX_CACHED_CERTIFICATES = 16

ACCEPTED_CONTENT_TYPES = frozenset({"text/plain", "application/json"})

# The fields each type's signature covers, in the guide's order; Subject only when present.
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
SIGNED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f\\]")  # no pattern should have to think about these

_certificates: OrderedDict[str, RSAPublicKey] = OrderedDict()
_certificates_lock = threading.Lock()


class SESWebhook(Webhook):
    """SES events through SNS, for the topics in ``topic_arns``.

    ``certificate_url_pattern`` and ``subscribe_url_pattern`` are regular expressions matched
    at the start of the URL (``re.match``); the defaults, in ``SESSettings``, allow Amazon's
    SNS hosts only. ``timeout`` bounds each fetch (certificate, subscription confirmation).
    """

    provider = "ses"

    def __init__(
        self,
        topic_arns: Iterable[str],
        certificate_url_pattern: str,
        subscribe_url_pattern: str,
        *,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.topic_arns = frozenset(topic_arns)
        self.certificate_url = re.compile(certificate_url_pattern)
        self.subscribe_url = re.compile(subscribe_url_pattern)
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: Config) -> Self | None:
        settings = config.mail.provider("ses")  # None when [mail.ses] is absent
        if settings is None or not settings.sns_topic_arns:
            return None
        return cls(
            settings.sns_topic_arns,
            settings.sns_certificate_url_pattern,
            settings.sns_subscribe_url_pattern,
        )

    def handle(self, request: WebhookRequest, guard: ReplayGuard) -> list[Suppression]:
        message = read_envelope(request)
        signed = canonical_string(message)  # after it, every signed field is a string
        kind, topic = message["Type"], message["TopicArn"]
        if topic not in self.topic_arns:
            raise Refused(403, "messages from this topic are not accepted")
        check_timestamp(message["Timestamp"], request.now)
        cert_url = self._allowed(
            self.certificate_url, message.get("SigningCertURL"), "SigningCertURL"
        )
        if kind == "SubscriptionConfirmation":
            self._allowed(self.subscribe_url, message.get("SubscribeURL"), "SubscribeURL")
        # The signature is read before the certificate is fetched: junk costs no request.
        signature = read_signature(message.get("Signature"), message.get("SignatureVersion"))
        signature.verify(signed, self._public_key(cert_url))
        if not guard.claim(message["MessageId"], keep=REPLAY_KEEP):
            raise Refused(403, "replayed message")
        if kind == "SubscriptionConfirmation":
            self._confirm(message["SubscribeURL"], topic)
            return []
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "ses webhook: SNS confirms this endpoint was unsubscribed from %s; "
                "bounces and complaints from it will no longer arrive",
                topic,
            )
            return []
        return ses_suppressions(message["Message"])

    def _allowed(self, pattern: re.Pattern[str], url: Any, field: str) -> str:
        if not isinstance(url, str) or _UNSAFE_URL.search(url) or not pattern.match(url):
            raise Refused(403, f"{field} is not an allowed SNS URL")
        return url

    def _public_key(self, url: str) -> RSAPublicKey:
        with _certificates_lock:
            key = _certificates.get(url)
            if key is not None:
                _certificates.move_to_end(url)
                return key
        key = load_certificate_key(self._get(url, MAX_CERTIFICATE_BYTES, "signing certificate"))
        with _certificates_lock:
            _certificates[url] = key
            while len(_certificates) > MAX_CACHED_CERTIFICATES:
                _certificates.popitem(last=False)
        return key

    def _confirm(self, url: str, topic: str) -> None:
        self._get(url, MAX_ANSWER_BYTES, "subscription confirmation")
        log.info("ses webhook: confirmed the SNS subscription to %s", topic)

    def _get(self, url: str, max_bytes: int, what: str) -> bytes:
        """GET ``url``'s body (2xx, no redirects, at most ``max_bytes``, within ``timeout``
        seconds in all); ``Refused`` (503) otherwise, so that SNS retries the message."""
        started = time.monotonic()
        # A session per fetch: fetches are rare (a certificate once per URL, a confirmation
        # once per subscription), and the web layer builds the webhook per request.
        try:
            with (
                requests.Session() as session,
                session.get(
                    url,
                    headers={"User-Agent": USER_AGENT},
                    timeout=self.timeout,
                    stream=True,
                    allow_redirects=False,
                ) as response,
            ):
                if not 200 <= response.status_code < 300:
                    raise _unavailable(what, url, f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_content(16 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise _unavailable(what, url, f"more than {max_bytes} bytes")
                    if time.monotonic() - started > self.timeout:
                        raise _unavailable(what, url, f"slower than {self.timeout:g} s")
                return bytes(body)
        except requests.RequestException as e:
            raise _unavailable(what, url, type(e).__name__) from e


def _unavailable(what: str, url: str, reason: str) -> Refused:
    # Without the query: a SubscribeURL's token confirms the subscription for whoever has it.
    where = urlsplit(url)._replace(query="", fragment="").geturl()
    log.error("ses webhook: could not fetch the %s at %s: %s", what, where, reason)
    return Refused(503, f"{what} unavailable")


# --- the SNS message --------------------------------------------------------------------------


def read_envelope(request: WebhookRequest) -> dict[str, Any]:
    """The SNS message in ``request``, its headers checked against it. ``Refused``: 415 for
    another content type, 400 for a body or headers that are not an SNS message's."""
    content_type = (request.header("content-type") or "").partition(";")[0].strip().lower()
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise Refused(415, "expected text/plain (an SNS message)")
    message = request.json()
    if not isinstance(message, dict):
        raise Refused(400, "expected a JSON object (an SNS message)")
    kind = message.get("Type")
    if not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        raise Refused(400, "not an SNS message (Type)")
    for header, field in (
        ("x-amz-sns-message-type", "Type"),
        ("x-amz-sns-topic-arn", "TopicArn"),
        ("x-amz-sns-message-id", "MessageId"),
    ):
        value = request.header(header)
        if value is None:
            raise Refused(400, f"missing {header} header")
        if value != message.get(field):
            raise Refused(400, f"{header} does not match the message's {field}")
    return message


def canonical_string(message: Mapping[str, Any]) -> bytes:
    """What SNS signed: each signed field of the message's type as ``name\\nvalue\\n``."""
    parts: list[str] = []
    for name in SIGNED_FIELDS[message["Type"]]:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise Refused(400, f"not an SNS message ({name})")
        parts += (name, "\n", value, "\n")
    return "".join(parts).encode("utf-8")  # no lone surrogate: parse_json refuses them


def check_timestamp(text: str, now: datetime) -> datetime:
    """``Timestamp`` as an aware datetime; ``Refused`` (403) when malformed, older than
    ``MAX_AGE_SECONDS`` or more than ``MAX_SKEW_SECONDS`` ahead of ``now``."""
    try:
        when = datetime.fromisoformat(text) if len(text) <= 40 else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None:
        raise Refused(403, "missing or malformed timestamp")
    age = (now - when).total_seconds()
    if age > MAX_AGE_SECONDS:
        raise Refused(403, "stale timestamp")
    if age < -MAX_SKEW_SECONDS:
        raise Refused(403, "timestamp in the future")
    return when


def load_certificate_key(pem: bytes) -> RSAPublicKey:
    """The RSA key of an X.509 PEM certificate; ``Refused`` (403) for anything else."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError as e:
        log.warning("ses webhook: the signing certificate is not an X.509 PEM certificate")
        raise Refused(403, "unusable signing certificate") from e
    if not isinstance(key, RSAPublicKey):
        raise Refused(403, "unusable signing certificate")
    return key


@dataclass(frozen=True)
class Signature:
    """A message's signature, decoded, and the hash its ``SignatureVersion`` names."""

    raw: bytes
    version: str

    def verify(self, signed: bytes, key: RSAPublicKey) -> None:
        """``Refused`` (403) unless this signs ``signed`` with ``key``: SHA1withRSA for
        ``SignatureVersion`` "1", SHA256withRSA for "2"."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        # SignatureVersion 1 is SHA1withRSA, SNS's own choice.
        sha1 = self.version == "1"
        algorithm = hashes.SHA1() if sha1 else hashes.SHA256()  # noqa: S303
        try:
            key.verify(self.raw, signed, padding.PKCS1v15(), algorithm)
        except InvalidSignature as e:
            raise Refused(403, "bad signature") from e


def read_signature(signature: Any, version: Any) -> Signature:
    """``Signature`` (base64) and ``SignatureVersion`` ("1" or "2"); ``Refused`` (403) else."""
    if version not in ("1", "2"):
        raise Refused(403, "unsupported SignatureVersion")
    if not isinstance(signature, str):
        raise Refused(403, "missing signature")
    try:
        return Signature(base64.b64decode(signature, validate=True), version)
    except binascii.Error as e:
        raise Refused(403, "bad signature") from e


# --- the SES event ----------------------------------------------------------------------------


def ses_suppressions(message: str) -> list[Suppression]:
    """From one SES event (an SNS notification's ``Message``): see the module docstring.

    The message is SNS-signed already, so one that is not an SES event was published to the
    topic by someone with the right to: it is logged and ignored, not refused (a 4xx would
    not be retried anyway).
    """
    try:
        event = parse_json(message.encode("utf-8"))
    except BadBody:
        event = None
    if not isinstance(event, dict):
        log.warning("ses webhook: a notification that is not an SES event was ignored")
        return []
    kind = event.get("notificationType") or event.get("eventType")
    found: list[Suppression] = []
    if kind == "Bounce":
        bounce = _mapping(event.get("bounce"))
        if bounce.get("bounceType") != "Permanent":
            return []
        sub_type = bounce.get("bounceSubType") or "General"
        for recipient in _mappings(bounce.get("bouncedRecipients")):
            detail = recipient.get("diagnosticCode") or recipient.get("status") or ""
            reason = f"ses permanent bounce ({sub_type}): {detail}"
            found += suppression(recipient.get("emailAddress"), BOUNCED, reason)
    elif kind == "Complaint":
        complaint = _mapping(event.get("complaint"))
        feedback = complaint.get("complaintFeedbackType") or complaint.get("complaintSubType")
        reason = f"ses complaint: {feedback or 'reported as spam'}"
        for recipient in _mappings(complaint.get("complainedRecipients")):
            found += suppression(recipient.get("emailAddress"), COMPLAINED, reason)
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
