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
from typing import TYPE_CHECKING, Any

from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, PreparedContent, failed_result, sent_result
from newsletter.mail.http import (
    HttpBackend,
    display_address,
    in_order,
    refused_results,
)
from newsletter.mail.message import list_headers, message_id
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    import requests

    from newsletter.config import Config

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 50 * 1000 * 1000  # per batch call
MAX_MESSAGE_BYTES = 10 * 1000 * 1000  # per message (the Email API limit)
# Error codes that refuse the account or sender, not the recipient (see the module docstring).
ACCOUNT_ERRORS = frozenset({10, 400, 401, 405, 412, 413})


class PostmarkBackend(HttpBackend):
    name = "postmark"
    max_batch_size = 500
    idempotent = False  # Postmark has no idempotency key: a lost answer leaves a batch uncertain
    default_base_url = "https://api.postmarkapp.com"

    def __init__(self, token: str, *, message_stream: str = "broadcast", **options: Any) -> None:
        super().__init__(token, **options)
        self.message_stream = message_stream

    @classmethod
    def provider_options(cls, config: Config) -> dict[str, Any]:
        return {"message_stream": config.mail.message_stream}

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

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        good, results = self.checked(content, batch)
        parts: list[tuple[int, Recipient, bytes]] = []
        for i, recipient in good:
            encoded = json.dumps(self._message(content, recipient), ensure_ascii=False).encode()
            if len(encoded) > MAX_MESSAGE_BYTES:
                results[i] = failed_result(
                    recipient,
                    f"{self.name}: the message is {len(encoded):,} bytes, over Postmark's "
                    f"limit of {MAX_MESSAGE_BYTES:,} per message",
                )
            else:
                parts.append((i, recipient, encoded))
        if parts:
            try:
                results.update(self._post(parts))
            except MailError as e:
                results.update(refused_results(e, ((i, r) for i, r, _ in parts)))
        return in_order(results, len(batch))

    def _message(self, content: PreparedContent, recipient: Recipient) -> dict[str, Any]:
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
        return message

    def _post(self, parts: list[tuple[int, Recipient, bytes]]) -> dict[int, DeliveryResult]:
        body = b"[" + b",".join(encoded for _, _, encoded in parts) + b"]"
        if len(body) > MAX_REQUEST_BYTES:
            raise MailError(
                f"refused before sending: the batch is {len(body):,} bytes, over Postmark's "
                f"limit of {MAX_REQUEST_BYTES:,} per call",
                backend=self.name,
            )
        response = self.http.post(
            "/email/batch", data=body, headers={"Content-Type": "application/json"}
        )
        if not 200 <= response.status_code < 300:
            refusal = _answer(response)
            if response.status_code == 422 and refusal and refusal[0] in ACCOUNT_ERRORS:
                raise self._account_error(refusal, response.status_code)
            # 401: fatal; 429/5xx (after retries): retryable; anything else refuses the batch.
            raise self.http.refusal(response, _reason(refusal) if refusal else None)
        try:
            answers = response.json()
            if not isinstance(answers, list) or len(answers) != len(parts):
                raise ValueError(f"expected a list of {len(parts)} results")
            read = [
                (int(a["ErrorCode"]), str(a.get("Message", "")), a.get("MessageID"))
                for a in answers
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Accepted, but there is no telling which messages went out.
            raise MailError(
                f"unreadable answer to an accepted batch ({e}); it may have been sent",
                backend=self.name,
                status=response.status_code,
                provider_message=response.text[:200],
                uncertain=True,
            ) from e
        if all(code in ACCOUNT_ERRORS for code, _, _ in read):
            # Nothing went out, and nothing will until the account or sender is fixed.
            raise self._account_error(read[0][:2], response.status_code)
        results: dict[int, DeliveryResult] = {}
        for (i, recipient, _), (code, message, msg_id) in zip(parts, read, strict=True):
            if code == 0:
                results[i] = sent_result(recipient, str(msg_id) if msg_id else None)
            else:
                results[i] = failed_result(recipient, f"{self.name}: {_reason((code, message))}")
        return results

    def _account_error(self, refusal: tuple[int, str], status: int) -> MailError:
        return MailError(
            "the account or sender cannot send",
            backend=self.name,
            status=status,
            provider_message=_reason(refusal),
            fatal=True,
        )


def _answer(response: requests.Response) -> tuple[int, str] | None:
    """Postmark's ``(ErrorCode, Message)`` from an error answer, if it has them."""
    try:
        body = response.json()
        return int(body["ErrorCode"]), str(body.get("Message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _reason(refusal: tuple[int, str]) -> str:
    code, message = refusal
    return f"{message} (ErrorCode {code})"


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode())
