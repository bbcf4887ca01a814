"""The Resend backend: up to 100 personalized emails per call, made safe to re-send by an
idempotency key.

Owns: the payload of ``POST /emails/batch``, its ``Idempotency-Key`` and the reading of its
answer. Each email is personalized here (the batch endpoint takes whole emails) with the list
headers from ``mail.message``. Does not own: the loop, retries (``mail.http``), the header
rules (``mail.message``).

The contract, from Resend's documentation:

- https://resend.com/docs/api-reference/emails/send-batch-emails: ``POST
  https://api.resend.com/emails/batch`` with ``Authorization: Bearer <key>`` and a JSON array
  of up to 100 emails, each with ``from``, ``to``, ``subject``, ``html``, ``text``,
  ``reply_to`` and ``headers`` (an object); ``attachments`` and ``scheduled_at`` are not
  supported there. The answer is ``{"data": [{"id": ...}, ...]}`` in the order of the request.
- https://resend.com/docs/dashboard/emails/idempotency-keys: an ``Idempotency-Key`` header of
  1-256 characters, kept 24 hours. The same key with the same payload answers the first
  response again without sending; with a different payload it is 409
  ``invalid_idempotent_request``; while the first request is still running, 409
  ``concurrent_idempotent_requests`` ("safe to retry later").
- https://resend.com/docs/dashboard/emails/batch-validation-modes: with ``x-batch-validation:
  permissive`` an invalid email does not sink the batch: the answer adds ``errors``, each with
  the ``index`` of the email in the request and a ``message``; ``data`` lists the created ones.
- https://resend.com/docs/api-reference/errors: ``{"statusCode", "name", "message"}``; 400/422
  validation errors, 401 missing key, 403 invalid key or unverified domain, 429
  ``rate_limit_exceeded`` (and daily or monthly quota), 5xx.

Idempotency: the key is the batch's key, which the ledger keeps for every re-send of that
batch, and the payload is built deterministically from the digest and the recipients, so a
re-send after a timeout, a dropped connection or a crash is answered, not delivered again. That
is why this backend is ``idempotent`` and why ``HttpClient`` retries a lost answer here. A key
longer than 256 characters (or not printable ASCII) is replaced by its SHA-256, still stable.

A 409 ``invalid_idempotent_request`` means Resend already processed this batch's key with a
different payload (the recipients or the digest's settings changed between the two sends), so
its recipients were probably sent the first one. Sending again under a new key could deliver
twice, and leaving the batch in flight would have it re-sent on every run until the key expires
and then delivered twice. So the batch is refused: its recipients are FAILED with a reason that
says they were probably already sent. At most once first, exact status second. A 409
``concurrent_idempotent_requests`` is ``retryable``: the batch goes back to pending with its
key, and the next run is answered with the first request's outcome.

The key lives 24 hours: a batch left in flight (a crash) must be re-sent within a day, or a
re-send is a new request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, PreparedContent, failed_result, sent_result
from newsletter.mail.http import Entry, HttpBackend, display_address, read_json
from newsletter.mail.message import list_headers
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    import requests


MAX_KEY_LENGTH = 256


def idempotency_key(batch_key: str) -> str:
    """The ``Idempotency-Key`` for a batch: its key, or a stable digest of a key Resend refuses."""
    if 1 <= len(batch_key) <= MAX_KEY_LENGTH and batch_key.isascii() and batch_key.isprintable():
        return batch_key
    return "sha256-" + hashlib.sha256(batch_key.encode()).hexdigest()


class ResendBackend(HttpBackend):
    name = "resend"
    label = "Resend"
    max_batch_size = 100
    idempotent = True  # see the module docstring
    # Resend keeps an idempotency key for 24 hours; a batch left in flight longer than that
    # would be delivered again, so it is reported as uncertain instead (an hour's margin).
    idempotency_window = timedelta(hours=23)
    default_base_url = "https://api.resend.com"
    endpoint = "/emails/batch"

    def client_options(self) -> dict[str, Any]:
        return {
            "headers": {
                "Authorization": f"Bearer {self.token}",
                # One invalid email fails alone (its index comes back in "errors").
                "x-batch-validation": "permissive",
            }
        }

    def build_part(self, content: PreparedContent, recipient: Recipient) -> dict[str, Any]:
        """The recipient's whole email, personalized here (the batch endpoint takes emails)."""
        shared = content.content
        headers = list_headers(shared, recipient.values["unsubscribe_url"])
        email: dict[str, Any] = {
            "from": shared.from_addr,
            "to": [display_address(recipient)],
            "subject": shared.subject,
            "html": content.html.fill(recipient.values),
            "text": content.text.fill(recipient.values),
            "headers": dict(headers),
        }
        if shared.reply_to:
            email["reply_to"] = shared.reply_to
        return email

    def payload(self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]) -> bytes:
        return json.dumps([entry.part for entry in entries], ensure_ascii=False).encode()

    def request_headers(self, batch: Batch) -> dict[str, str]:
        return {"Idempotency-Key": idempotency_key(batch.key)}

    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        # An answer that does not read leaves the batch in flight; a re-send under the same
        # key gets this answer again or a readable one.
        ids, errors = self.read_answer(response, lambda body: _answer(body, len(entries)))
        results: dict[int, DeliveryResult] = {}
        created = iter(ids)  # "data" lists the created emails in request order
        for position, entry in enumerate(entries):
            if position in errors:
                reason = f"{self.name}: {errors[position]}"
                results[entry.index] = failed_result(entry.recipient, reason)
            else:
                results[entry.index] = sent_result(entry.recipient, next(created))
        return results

    def refusal(self, response: requests.Response) -> MailError:
        error = read_json(
            response, lambda body: (str(body.get("name", "")), str(body.get("message", "")))
        )
        if error is None:
            return self.http.refusal(response)
        name, message = error
        reason = f"{message} ({name})" if name else message
        if response.status_code == 409 and name == "concurrent_idempotent_requests":
            return MailError(
                "an earlier request for this batch is still running; it is re-sent later",
                backend=self.name,
                status=409,
                provider_message=reason,
                retryable=True,
            )
        if response.status_code == 409 and name == "invalid_idempotent_request":
            return MailError(
                "this batch's idempotency key was already used for a different payload, so its "
                "recipients were probably sent that one; not sent again",
                backend=self.name,
                status=409,
                provider_message=reason,
            )
        return self.http.refusal(response, reason)


def _answer(body: Any, count: int) -> tuple[list[str], dict[int, str]]:
    """The ids of the created emails, and the error message by request position."""
    ids = [str(item["id"]) for item in body["data"]]
    errors = {int(e["index"]): str(e.get("message", "")) for e in body.get("errors") or []}
    if len(ids) + len(errors) != count or not all(0 <= i < count for i in errors):
        raise ValueError(f"{len(ids)} ids and {len(errors)} errors for {count} emails")
    return ids, errors


def _error(body: Any) -> tuple[str, str]:
    """Resend's ``(name, message)`` from an error answer."""
    return str(body.get("name", "")), str(body.get("message", ""))
