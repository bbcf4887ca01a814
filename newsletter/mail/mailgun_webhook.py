"""Mailgun's webhook (``POST /webhooks/mailgun``, JSON): hard bounces and complaints.

``signature.signature`` is the hex HMAC-SHA256 of ``timestamp`` + ``token`` under the webhook
signing key (held by the variable ``[mail.mailgun] webhook_signing_key_env`` names). A
timestamp more than ``MAX_AGE_SECONDS`` away from now, or not 1 to 12 ASCII digits, is refused
(403). A token is accepted once: it is claimed through the ``ReplayGuard`` for twice the
accepted window (past its signed timestamp's window the age check refuses it anyway, and the
margin covers processes whose clocks disagree a little), so a replay is refused by every
``serve`` process on the database, and after a restart.

What counts: ``failed`` with ``severity: permanent`` and reason ``bounce`` or
``suppress-bounce`` -> bounced; ``complained`` or a ``suppress-complaint`` failure ->
complained.

Owns: Mailgun's signature check and payload. Does not own how claimed tokens are kept
(``web.webhooks`` over ``Storage.remember_webhook_token``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

from newsletter.mail import webhook

if TYPE_CHECKING:
    from newsletter.config import Config

KEEP = timedelta(seconds=2 * webhook.MAX_AGE_SECONDS)  # how long an accepted token is remembered
_FAILED = {
    "bounce": webhook.BOUNCED,
    "suppress-bounce": webhook.BOUNCED,
    "suppress-complaint": webhook.COMPLAINED,
}


def mailgun_suppressions(payload: Any) -> list[webhook.Suppression]:
    """From one Mailgun webhook payload (``{"signature": ..., "event-data": ...}``);
    ``Refused`` (400) without an ``event-data`` object."""
    data = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise webhook.Refused(400, "expected a JSON object with event-data")
    name, email = data.get("event"), data.get("recipient")
    if name == "complained":
        return webhook.suppression(email, webhook.COMPLAINED, "mailgun complaint")
    if name == "failed" and data.get("severity") == "permanent":
        status = _FAILED.get(str(data.get("reason")))
        if status is not None:
            delivery = data.get("delivery-status")
            text = ""
            if isinstance(delivery, dict):
                text = str(delivery.get("description") or delivery.get("message") or "")
            return webhook.suppression(email, status, f"mailgun {data.get('reason')}: {text}")
    return []


@dataclass(frozen=True)
class MailgunWebhook(webhook.Webhook):
    provider = "mailgun"
    signing_key: str = field(repr=False)  # a secret: never in a log line

    @classmethod
    def from_config(cls, config: Config) -> Self | None:
        key = webhook.secret(config, cls.provider, "webhook_signing_key_env")
        return None if key is None else cls(key)

    def handle(
        self, request: webhook.WebhookRequest, guard: webhook.ReplayGuard
    ) -> list[webhook.Suppression]:
        payload = request.json()
        token = self.check_signature(
            payload.get("signature") if isinstance(payload, dict) else None, now=request.now
        )
        # Claimed only once the signature is good: a forger cannot use up a token. Of two
        # requests with one token, on any process, one claims it.
        if not guard.claim(token, keep=KEEP):
            raise webhook.Refused(403, "replayed token")
        return mailgun_suppressions(payload)

    def check_signature(self, block: Any, *, now: datetime) -> str:
        """The token of a good, recent ``signature`` block; ``Refused`` (403) otherwise."""
        if not isinstance(block, dict):
            raise webhook.Refused(403, "missing signature")
        token, timestamp, signature = (
            str(block.get(k, "")) for k in ("token", "timestamp", "signature")
        )
        if not token or not signature:
            raise webhook.Refused(403, "missing signature")
        webhook.check_age(timestamp, now)
        # surrogatepass: parse_json refuses lone surrogates, but this must not depend on it.
        message = (timestamp + token).encode("utf-8", "surrogatepass")
        expected = hmac.new(self.signing_key.encode(), message, hashlib.sha256)
        given = signature.strip().lower().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected.hexdigest().encode(), given):
            raise webhook.Refused(403, "bad signature")
        return token
