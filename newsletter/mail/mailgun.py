"""The Mailgun backend: one shared message and up to 1,000 recipients in one batch call.

Owns: the form of ``POST /v3/<domain>/messages`` and the reading of its answer. The digest's
bodies are converted once per digest into Mailgun recipient variables; each recipient is a
``to`` field and an entry of ``recipient-variables``. Does not own: the loop, retries
(``mail.http``), the header rules (``mail.message``).

The contract, from Mailgun's documentation:

- https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages: ``POST
  https://api.mailgun.net/v3/<domain>/messages`` (``https://api.eu.mailgun.net`` for a domain in
  the EU region) with HTTP basic auth ``api:<key>`` and form fields ``from``, ``to``,
  ``subject``, ``text``, ``html`` and ``h:<Header>`` for any header; messages up to 25 MB.
  The answer is 200 ``{"id": "<...>", "message": "Queued. Thank you."}``; 400
  ``{"message": ...}`` refuses the whole request (an address failing Mailgun's syntax checks
  gives "parameter is not a valid address", naming no recipient, so the batch fails as a
  whole); 401 is the key; 429/5xx transient.
- https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/batch-sending:
  ``to`` repeated for each recipient, at most 1,000, with ``recipient-variables``, a JSON object
  keyed by address. With it Mailgun sends each recipient their own message; without it every
  recipient would see all the others in To, so a batch never goes out without it.
  ``%recipient.<key>%`` is replaced by that recipient's value wherever it appears in the
  message; we rely on that for ``h:List-Unsubscribe`` too, as the brief for this backend and
  Mailgun's own ``%unsubscribe_url%`` in headers do.

Values are inserted as given, so HTML and text bodies use different variables: ``html_<name>``
holds the HTML-escaped value, ``<name>`` the raw one. Mailgun answers one id for the whole call;
each recipient is recorded with it. Variables are keyed by address, so a batch cannot hold one
address twice: the second recipient with it fails before sending.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, PreparedContent, failed_result, sent_result
from newsletter.mail.http import (
    HttpBackend,
    display_address,
    in_order,
    refused_results,
)
from newsletter.mail.message import list_headers
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config

REGION_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
MAX_MESSAGE_BYTES = 25 * 1000 * 1000


def html_variable(name: str) -> str:
    return f"%recipient.html_{name}%"


def text_variable(name: str) -> str:
    return f"%recipient.{name}%"


class MailgunBackend(HttpBackend):
    name = "mailgun"
    max_batch_size = 1000
    idempotent = False  # Mailgun has no idempotency key
    default_base_url = REGION_URLS["us"]

    def __init__(
        self,
        token: str,
        *,
        domain: str,
        region: str = "us",
        base_url: str | None = None,
        **options: Any,
    ) -> None:
        if region not in REGION_URLS:
            raise ValueError(f"unknown Mailgun region {region!r}")
        super().__init__(token, base_url=base_url or REGION_URLS[region], **options)
        if not domain or "/" in domain:
            raise ValueError(f"invalid Mailgun domain {domain!r}")
        self.domain = domain

    @classmethod
    def provider_options(cls, config: Config) -> dict[str, Any]:
        return {"domain": config.mail.domain or "", "region": config.mail.region}

    def describe(self) -> str:
        return f"{self.name} ({self.base_url}, domain {self.domain})"

    def client_options(self) -> dict[str, Any]:
        return {"auth": ("api", self.token)}

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        good, results = self.checked(content, batch)
        people: list[tuple[int, Recipient]] = []
        variables: dict[str, dict[str, str]] = {}
        seen: set[str] = set()
        for i, recipient in good:
            if recipient.email.lower() in seen:
                results[i] = failed_result(
                    recipient, f"{self.name}: the address is twice in this batch"
                )
                continue
            seen.add(recipient.email.lower())
            people.append((i, recipient))
            variables[recipient.email] = self._variables(content, recipient)
        if people:
            try:
                message_id = self._post(content, people, variables)
            except MailError as e:
                results.update(refused_results(e, people))
            else:
                for i, recipient in people:
                    results[i] = sent_result(recipient, message_id)
        return in_order(results, len(batch))

    def _variables(self, content: PreparedContent, recipient: Recipient) -> dict[str, str]:
        values = recipient.values
        out = {n: values.get(n, "") for n in content.text.used}
        out |= {f"html_{n}": html.escape(values.get(n, "")) for n in content.html.used}
        out["unsubscribe_url"] = values["unsubscribe_url"]  # List-Unsubscribe uses it raw
        return out

    def _shared(self, content: PreparedContent) -> list[tuple[str, str]]:
        """The form fields every recipient shares, built once per digest."""
        shared = content.content
        fields = [
            ("from", shared.from_addr),
            ("subject", shared.subject),
            ("text", content.text.convert(text_variable)),
            ("html", content.html.convert(html_variable)),
        ]
        if shared.reply_to:
            fields.append(("h:Reply-To", shared.reply_to))
        for name, value in list_headers(shared, text_variable("unsubscribe_url")):
            fields.append((f"h:{name}", value))
        return fields

    def _post(
        self,
        content: PreparedContent,
        people: list[tuple[int, Recipient]],
        variables: dict[str, dict[str, str]],
    ) -> str | None:
        fields: list[tuple[str, str]] = content.once(self.name, lambda: self._shared(content))
        form = [
            *fields,
            *(("to", display_address(recipient)) for _, recipient in people),
            ("recipient-variables", json.dumps(variables, ensure_ascii=False)),
        ]
        size = sum(len(value.encode()) for _, value in form)
        if size > MAX_MESSAGE_BYTES:
            raise MailError(
                f"refused before sending: the message is {size:,} bytes, over Mailgun's "
                f"limit of {MAX_MESSAGE_BYTES:,}",
                backend=self.name,
            )
        response = self.http.post(f"/v3/{self.domain}/messages", data=form)
        self.http.check(response)  # 400 refuses the batch; 401: fatal; 429/5xx: retryable
        try:
            return str(response.json()["id"]) or None
        except (ValueError, KeyError, TypeError):
            # 200 means queued; without the id it is still sent, just not traceable.
            return None
