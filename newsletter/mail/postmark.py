"""The Postmark backend: one personalized message per recipient, up to 500 in one batch call.

Owns: the payload of ``POST /email/batch`` and the reading of its answer. Each message is
personalized here (Postmark has no per-recipient substitution for raw bodies) and carries the
list headers and the deterministic Message-ID from ``mail.message``. Does not own: the loop,
retries (``mail.http``), the message rules (``mail.message``).

The contract, from Postmark's documentation:

- https://postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails and
  https://postmarkapp.com/developer/api/email-api: ``POST https://api.postmarkapp.com/email/batch``
  with ``X-Postmark-Server-Token``, ``Accept`` and ``Content-Type: application/json``; the body is
  a JSON array of up to 500 messages with ``From``, ``To``, ``Subject``, ``HtmlBody``,
  ``TextBody``, ``ReplyTo``, ``Headers`` (a list of ``{"Name", "Value"}``) and
  ``MessageStream`` (a broadcast stream for newsletters); at most 50 MB per call.
- The answer is HTTP 200 even when single messages fail: an array in the order of the request,
  each ``{"ErrorCode", "Message", "MessageID", "To", "SubmittedAt"}``, ``ErrorCode`` 0 meaning
  accepted (postmark-php wiki, "Sending Batches", says the same).
- https://postmarkapp.com/developer/api/overview: 401 for a missing or wrong token; 422 with
  ``{"ErrorCode", "Message"}`` when the request as a whole is refused; 413 above 10 MB per
  message (Email API) or 50 MB per batch call; 429 and 500 are transient.
- Error codes (same page): 400 sender signature not found, 401 not confirmed, 405 not allowed
  to send, 412 account pending, 413 account may not send. These hold for every message of every
  batch, so they stop the send (``fatal``) rather than fail the recipients one by one; 406
  (inactive recipient) and the rest are the recipient's own failure.

Size: a batch whose payload would pass 50 MB is never formed. ``batch_size_for`` estimates one
message of this digest and claims fewer than 500 when needed (307 for 150 KB of HTML and text).
A payload still over the limit (an estimate beaten by unusual values) is refused before sending,
with its size in the error; a single message over 10 MB fails its recipient.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, PreparedContent, failed_result, sent_result
from newsletter.mail.http import (
    Entry,
    HttpBackend,
    HttpProviderSettings,
    display_address,
    read_json,
)
from newsletter.mail.message import list_headers, message_id
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    import requests

    from newsletter.config import Config, Table

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 50 * 1000 * 1000  # per batch call
MAX_MESSAGE_BYTES = 10 * 1000 * 1000  # per message (the Email API limit)
# Error codes that refuse the account or sender, not the recipient (see the module docstring).
ACCOUNT_ERRORS = frozenset({10, 400, 401, 405, 412, 413})


@dataclass(frozen=True)
class PostmarkSettings(HttpProviderSettings):
    """``[mail.postmark]``."""

    message_stream: str = "broadcast"  # a broadcast stream: Postmark's rule for newsletters
    # The webhook's HTTP Basic credentials (see ``postmark_webhook``): NAMES of variables.
    webhook_user_env: str | None = None
    webhook_password_env: str | None = None

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        common = cls.parse_common(t, selected)
        user, password = t.env_name("webhook_user_env"), t.env_name("webhook_password_env")
        if (user is None) != (password is None):
            missing = "webhook_password_env" if password is None else "webhook_user_env"
            raise t.error(missing, "the Postmark webhook needs both a user and a password variable")
        return cls(
            **common,
            message_stream=t.text("message_stream", "broadcast"),
            webhook_user_env=user,
            webhook_password_env=password,
        )


class PostmarkBackend(
    HttpBackend,
    settings=PostmarkSettings,
    webhook="newsletter.mail.postmark_webhook:PostmarkWebhook",
):
    name = "postmark"
    label = "Postmark"
    max_batch_size = 500
    idempotent = False  # Postmark has no idempotency key: a lost answer leaves a batch uncertain
    default_base_url = "https://api.postmarkapp.com"
    endpoint = "/email/batch"
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, token: str, *, message_stream: str = "broadcast", **options: Any) -> None:
        super().__init__(token, **options)
        self.message_stream = message_stream

    @classmethod
    def provider_options(cls, config: Config) -> dict[str, Any]:
        settings: PostmarkSettings = cls.settings(config)
        return {"message_stream": settings.message_stream}

    def client_options(self) -> dict[str, Any]:
        return {"headers": {"X-Postmark-Server-Token": self.token}}

    def batch_size_for(self, content: PreparedContent) -> int:
        shared = content.content
        # One message as JSON, placeholders unfilled, plus room for what filling adds (a URL or
        # a name per placeholder) and for the addresses and headers.
        per_message = (
            _json_size(shared.html)
            + _json_size(shared.text)
            + 512 * (len(content.html.names) + len(content.text.names))
            + 4096
        )
        fits = max(1, int(MAX_REQUEST_BYTES * 0.95) // per_message)
        if fits < self.batch_size:
            log.info(
                "%s: batches of %d, not %d: %d bytes per message, %d MB per call at most",
                self.name,
                fits,
                self.batch_size,
                per_message,
                MAX_REQUEST_BYTES // 1_000_000,
            )
        return min(self.batch_size, fits)

    def build_part(self, content: PreparedContent, recipient: Recipient) -> bytes:
        """The recipient's message, personalized here, as JSON (checked against the limit)."""
        shared = content.content
        headers = [("Message-ID", message_id(shared, recipient))]
        headers += list_headers(shared, recipient.values["unsubscribe_url"])
        message: dict[str, Any] = {
            "From": shared.from_addr,
            "To": display_address(recipient),
            "Subject": shared.subject,
            "HtmlBody": content.html.fill(recipient.values),
            "TextBody": content.text.fill(recipient.values),
            "MessageStream": self.message_stream,
            "Headers": [{"Name": name, "Value": value} for name, value in headers],
        }
        if shared.reply_to:
            message["ReplyTo"] = shared.reply_to
        encoded = json.dumps(message, ensure_ascii=False).encode()
        if len(encoded) > MAX_MESSAGE_BYTES:
            raise self.over_limit("the message is", len(encoded), "message", MAX_MESSAGE_BYTES)
        return encoded

    def payload(self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]) -> bytes:
        return b"[" + b",".join(entry.part for entry in entries) + b"]"

    def refusal(self, response: requests.Response) -> MailError:
        refusal = read_json(response, _error)
        if response.status_code == 422 and refusal and refusal[0] in ACCOUNT_ERRORS:
            return self._account_error(refusal, response.status_code)
        # 401: fatal; 429/5xx (after retries): retryable; anything else refuses the batch.
        return self.http.refusal(response, _reason(refusal) if refusal else None)

    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        read = self.read_answer(response, lambda answers: _answers(answers, len(entries)))
        if all(code in ACCOUNT_ERRORS for code, _, _ in read):
            # Nothing went out, and nothing will until the account or sender is fixed.
            raise self._account_error(read[0][:2], response.status_code)
        results: dict[int, DeliveryResult] = {}
        for entry, (code, message, msg_id) in zip(entries, read, strict=True):
            if code == 0:
                results[entry.index] = sent_result(entry.recipient, str(msg_id) if msg_id else None)
            else:
                reason = f"{self.name}: {_reason((code, message))}"
                results[entry.index] = failed_result(entry.recipient, reason)
        return results

    def _account_error(self, refusal: tuple[int, str], status: int) -> MailError:
        return MailError(
            "the account or sender cannot send",
            backend=self.name,
            status=status,
            provider_message=_reason(refusal),
            fatal=True,
        )


def _answers(answers: Any, count: int) -> list[tuple[int, str, Any]]:
    """``(ErrorCode, Message, MessageID)`` per message, in request order."""
    if not isinstance(answers, list) or len(answers) != count:
        raise ValueError(f"expected a list of {count} results")
    return [(int(a["ErrorCode"]), str(a.get("Message", "")), a.get("MessageID")) for a in answers]


def _error(body: Any) -> tuple[int, str]:
    """Postmark's ``(ErrorCode, Message)`` from an error answer."""
    return int(body["ErrorCode"]), str(body.get("Message", ""))


def _reason(refusal: tuple[int, str]) -> str:
    code, message = refusal
    return f"{message} (ErrorCode {code})"


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode())
