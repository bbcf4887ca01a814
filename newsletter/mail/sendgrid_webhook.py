"""SendGrid's Signed Event Webhook (``POST /webhooks/sendgrid``): hard bounces and complaints.

An ECDSA (P-256, SHA-256) signature of the ``X-Twilio-Email-Event-Webhook-Timestamp`` header
followed by the raw body, base64 DER in ``X-Twilio-Email-Event-Webhook-Signature``, checked
with the public key the SendGrid console shows (base64 DER, or PEM), held by the variable
``[mail.sendgrid] webhook_key_env`` names. Needs the ``cryptography`` package. A timestamp more
than ``MAX_AGE_SECONDS`` away from now, or not 1 to 12 ASCII digits, is refused (403), so a
captured request cannot be replayed later.

What counts: ``bounce`` events except ``type: blocked`` (temporary) -> bounced;
``spamreport`` -> complained; ``dropped`` because of an earlier bounce or complaint -> the
same.

Owns: SendGrid's signature check, its key loader (cached: the key is parsed once, not per
request) and its payload. Does not own serving it (``web.webhooks``).
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from newsletter.exceptions import ConfigError
from newsletter.mail import webhook

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    from newsletter.config import Config

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
_KEY = "mail.sendgrid.webhook_key_env"
_DROPPED = {"bounced address": webhook.BOUNCED, "spam reporting address": webhook.COMPLAINED}


def sendgrid_suppressions(events: Any) -> list[webhook.Suppression]:
    """From one SendGrid Event Webhook payload (a JSON array of events); ``Refused`` (400) for
    another shape. Items that are not objects are skipped."""
    if not isinstance(events, list):
        raise webhook.Refused(400, "expected a JSON array of events")
    found: list[webhook.Suppression] = []
    for event in events:
        if not isinstance(event, dict):
            continue
        name, email = event.get("event"), event.get("email")
        reason = str(event.get("reason") or "")
        if name == "bounce" and event.get("type", "bounce") == "bounce":
            found += webhook.suppression(email, webhook.BOUNCED, f"sendgrid bounce: {reason}")
        elif name == "spamreport":
            found += webhook.suppression(email, webhook.COMPLAINED, "sendgrid spam report")
        elif name == "dropped" and reason.lower() in _DROPPED:
            found += webhook.suppression(
                email, _DROPPED[reason.lower()], f"sendgrid dropped: {reason}"
            )
    return found


@functools.lru_cache(maxsize=4)
def sendgrid_public_key(text: str) -> EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER) or as PEM.

    Raises ``ValueError`` when it is not an elliptic-curve public key, ``ImportError`` without
    the ``cryptography`` package.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as e:
            raise ValueError("not base64") from e
        key = serialization.load_der_public_key(der)
    if not isinstance(key, EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


@dataclass(frozen=True)
class SendGridWebhook(webhook.Webhook):
    provider = "sendgrid"
    key: EllipticCurvePublicKey

    @classmethod
    def from_config(cls, config: Config) -> Self | None:
        text = webhook.secret(config, cls.provider, "webhook_key_env")
        if text is None:
            return None
        env = config.mail.provider(cls.provider).webhook_key_env
        try:
            return cls(sendgrid_public_key(text))
        except ImportError as e:
            raise ConfigError(
                "the SendGrid webhook needs the `cryptography` package (pip install cryptography)",
                file=config.file,
                key=_KEY,
            ) from e
        except ValueError as e:
            raise ConfigError(
                f"${env} does not hold SendGrid's verification key (base64 or PEM): {e}",
                file=config.file,
                key=_KEY,
            ) from e

    def handle(
        self, request: webhook.WebhookRequest, guard: webhook.ReplayGuard
    ) -> list[webhook.Suppression]:
        self.check_signature(request)
        return sendgrid_suppressions(request.json())

    def check_signature(self, request: webhook.WebhookRequest) -> None:
        """Raise ``Refused`` (403) unless the signature header signs the timestamp header and
        the body, and the timestamp is recent."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature, timestamp = request.header(SIGNATURE), request.header(TIMESTAMP)
        if not signature:
            raise webhook.Refused(403, "missing signature")
        webhook.check_age(timestamp, request.now)
        try:
            der = base64.b64decode(signature.strip(), validate=True)
            signed = str(timestamp).strip().encode() + request.body
            self.key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, InvalidSignature, ValueError) as e:
            raise webhook.Refused(403, "bad signature") from e
