"""Postmark's webhook (``POST /webhooks/postmark``): hard bounces and spam complaints.

Postmark signs nothing; its documented protection is HTTP Basic credentials in the webhook
URL (``https://user:password@host/webhooks/postmark``). Both are compared in constant time;
a request without them is 401. The variables holding them are named by
``[mail.postmark] webhook_user_env`` and ``webhook_password_env`` (both or neither).

What counts (soft bounces and other transient failures are ignored):

- ``RecordType`` Bounce with ``Type`` HardBounce or BadEmailAddress -> bounced;
- ``RecordType`` SpamComplaint -> complained;
- a SubscriptionChange that suppresses sending for HardBounce or SpamComplaint -> the same.

Owns: Postmark's credentials check and payload. Does not own serving it (``web.webhooks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from newsletter.mail import webhook

if TYPE_CHECKING:
    from newsletter.config import Config

_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_SUPPRESSION = {"HardBounce": webhook.BOUNCED, "SpamComplaint": webhook.COMPLAINED}


def postmark_suppressions(event: Any) -> list[webhook.Suppression]:
    """From one Postmark webhook payload (a JSON object); ``Refused`` (400) for another shape."""
    if not isinstance(event, dict):
        raise webhook.Refused(400, "expected a JSON object")
    record, kind = event.get("RecordType"), event.get("Type")
    details = str(event.get("Description") or event.get("Details") or kind or record or "")
    if record == "Bounce" and isinstance(kind, str) and kind in _HARD:
        return webhook.suppression(
            event.get("Email"), webhook.BOUNCED, f"postmark {kind}: {details}"
        )
    if record == "SpamComplaint" or (record == "Bounce" and kind == "SpamComplaint"):
        return webhook.suppression(
            event.get("Email"), webhook.COMPLAINED, f"postmark spam complaint: {details}"
        )
    if record == "SubscriptionChange" and event.get("SuppressSending") is True:
        status = _SUPPRESSION.get(str(event.get("SuppressionReason")))
        if status is not None:
            reason = f"postmark suppression: {event.get('SuppressionReason')}"
            return webhook.suppression(event.get("Recipient"), status, reason)
    return []


@dataclass(frozen=True)
class PostmarkWebhook(webhook.Webhook):
    provider = "postmark"
    user: str = field(repr=False)  # secrets: never in a log line or a traceback's locals
    password: str = field(repr=False)

    @classmethod
    def from_config(cls, config: Config) -> Self | None:
        user = webhook.secret(config, cls.provider, "webhook_user_env")
        password = webhook.secret(config, cls.provider, "webhook_password_env")
        if user is None or password is None:
            return None
        return cls(user, password)

    def handle(
        self, request: webhook.WebhookRequest, guard: webhook.ReplayGuard
    ) -> list[webhook.Suppression]:
        webhook.check_basic_auth(request.header("authorization"), self.user, self.password)
        return postmark_suppressions(request.json())
