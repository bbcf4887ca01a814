"""The SendGrid backend: one shared body and up to 1,000 personalizations in one call.

Owns: the payload of ``POST /v3/mail/send`` and the reading of its answer. The digest's bodies
are converted once per digest into SendGrid substitution tags; each recipient is a
personalization with their address, their substitution values and their own list headers
(List-Unsubscribe differs per recipient, and substitutions are documented for the subject and
bodies only, so the headers are written out, not substituted). Does not own: the loop, retries
(``mail.http``), the header rules (``mail.message``).

The contract, from SendGrid's documentation:

- https://www.twilio.com/docs/sendgrid/api-reference/mail-send: ``POST
  https://api.sendgrid.com/v3/mail/send`` with ``Authorization: Bearer <key>`` and a JSON body:
  ``personalizations`` (each with ``to``, ``substitutions``, ``headers``), ``from``,
  ``reply_to``, ``subject``, ``content`` (``text/plain`` first, then ``text/html``). 202 means
  accepted, with no per-recipient ids: the ``X-Message-Id`` response header identifies the call
  (https://www.twilio.com/docs/sendgrid/glossary/x-message-id), so each recipient gets it.
- https://sendgrid.com/docs/for-developers/sending-email/substitution-tags/: a tag is any string
  replaced in the subject and bodies; "Substitutions are limited to 50,000 bytes per
  personalization block". Values are inserted as given, so HTML and text bodies use different
  tags: the HTML tags get HTML-escaped values (``-nlvar.html.first_name-``), the text tags raw
  ones (``-nlvar.text.first_name-``). The ``nlvar.`` prefix keeps article text such as
  "first-name-" from being mistaken for a tag.
- https://docs.sendgrid.com/api-reference/mail-send/limitations: under 30 MB per request, at
  most 1,000 recipients, and ``to.name`` "cannot include either the ; or , characters".
- https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors: every parameter error
  is a 400 with ``{"errors": [{"message", "field", "help"}]}``, ``field`` naming the path (e.g.
  ``personalizations.3.to.0.email``); "each unique email address in the personalizations array
  should only be included once". 401/403: the key; 413: too large; 429/5xx: transient.

SendGrid refuses the whole request for one bad personalization. When every error of a 400
names a personalization, those recipients are FAILED with SendGrid's message and the rest are
posted again, once: a 400 accepted nothing, so that is safe. A name holding ``;`` or ``,`` is
sent without the name (a warning is logged): SendGrid cannot carry it, and the message matters
more than the display name. A repeated address fails its second recipient before sending.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, Self

from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, PreparedContent
from newsletter.mail.http import (
    Entry,
    HttpBackend,
    HttpProviderSettings,
    read_json,
    sent_to_all,
    substitutions,
)
from newsletter.mail.message import list_headers
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    import requests

    from newsletter.config import Table


log = logging.getLogger(__name__)

MAX_SUBSTITUTION_BYTES = 50_000  # per personalization
_PERSONALIZATION_FIELD = re.compile(r"personalizations\.(\d+)\b")
# Substitution tags (see the module docstring): raw values in the text body, escaped in HTML.
TEXT_TAG = "-nlvar.text.{}-".format
HTML_TAG = "-nlvar.html.{}-".format


@dataclass(frozen=True)
class SendGridSettings(HttpProviderSettings):
    """``[mail.sendgrid]``."""

    # NAME of the variable holding the Signed Event Webhook's verification key.
    webhook_key_env: str | None = None

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        return cls(**cls.parse_common(t, selected), webhook_key_env=t.env_name("webhook_key_env"))


class SendGridBackend(
    HttpBackend,
    settings=SendGridSettings,
    webhook="newsletter.mail.sendgrid_webhook:SendGridWebhook",
):
    name = "sendgrid"
    label = "SendGrid"
    max_batch_size = 1000
    idempotent = False  # SendGrid has no idempotency key
    default_base_url = "https://api.sendgrid.com"
    endpoint = "/v3/mail/send"
    max_request_bytes = 30 * 1000 * 1000
    unique_addresses = True  # "each unique email address ... should only be included once"

    def client_options(self) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Bearer {self.token}"}}

    def build_part(self, content: PreparedContent, recipient: Recipient) -> dict[str, Any]:
        """The recipient's personalization: address, substitution values, list headers."""
        values = recipient.values
        to: dict[str, str] = {"email": recipient.email}
        if recipient.name and not any(c in recipient.name for c in ";,"):
            to["name"] = recipient.name
        elif recipient.name:
            log.warning(
                "%s: sending to %s without the name %r (SendGrid refuses ';' and ',' in names)",
                self.name,
                recipient.email,
                recipient.name,
            )
        subs = substitutions(content, values, text=TEXT_TAG, html=HTML_TAG)
        size = len(json.dumps(subs, ensure_ascii=False).encode())
        if size > MAX_SUBSTITUTION_BYTES:
            raise self.over_limit(
                "the recipient's values are", size, "personalization", MAX_SUBSTITUTION_BYTES
            )
        return {
            "to": [to],
            "substitutions": subs,
            "headers": dict(list_headers(content.content, values["unsubscribe_url"])),
        }

    def payload(self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]) -> bytes:
        head, tail = content.once(self.name, lambda: self._shared(content))
        people = [entry.part for entry in entries]
        body: bytes = head + json.dumps(people, ensure_ascii=False).encode() + tail
        return body

    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        # 202 has no body and no per-recipient ids: X-Message-Id names the call.
        return sent_to_all(entries, response.headers.get("X-Message-Id") or None)

    def refusal(self, response: requests.Response) -> MailError:
        errors = read_json(response, _errors) or []
        return self.http.refusal(response, "; ".join(message for _, message in errors) or None)

    def rejected(self, response: requests.Response, count: int) -> dict[int, str] | None:
        # Safe to post the others again: a 400 accepted nothing (see the module docstring).
        errors = read_json(response, _errors) or []
        rejected = _rejected(errors, response.status_code, count)
        if rejected is None:
            return None
        return {position: f"{reason} (HTTP 400)" for position, reason in rejected.items()}

    def _shared(self, content: PreparedContent) -> tuple[bytes, bytes]:
        """The request body around the personalizations, encoded once per digest."""
        shared = content.content
        from_name, from_email = parseaddr(shared.from_addr)
        payload: dict[str, Any] = {
            "personalizations": None,
            "from": {"email": from_email, **({"name": from_name} if from_name else {})},
            "subject": shared.subject,
            "content": [
                {"type": "text/plain", "value": content.text.convert(TEXT_TAG)},
                {"type": "text/html", "value": content.html.convert(HTML_TAG)},
            ],
        }
        if shared.reply_to:
            reply_name, reply_email = parseaddr(shared.reply_to)
            payload["reply_to"] = {
                "email": reply_email,
                **({"name": reply_name} if reply_name else {}),
            }
        encoded = json.dumps(payload, ensure_ascii=False).encode()
        head, _, tail = encoded.partition(b"null")  # "personalizations" is the first key
        return head, tail


def _errors(body: Any) -> list[tuple[str, str]]:
    """SendGrid's ``(field, message)`` pairs from an error answer."""
    return [(str(e.get("field") or ""), str(e.get("message") or "")) for e in body["errors"]]


def _rejected(errors: list[tuple[str, str]], status: int, count: int) -> dict[int, str] | None:
    """Personalization position -> SendGrid's reason, when every error of a 400 names one."""
    if status != 400 or not errors:
        return None
    rejected: dict[int, str] = {}
    for field, message in errors:
        match = _PERSONALIZATION_FIELD.match(field)
        if match is None or int(match[1]) >= count:
            return None
        position = int(match[1])
        rejected[position] = f"{rejected[position]}; {message}" if position in rejected else message
    return rejected
