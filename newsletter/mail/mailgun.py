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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from newsletter.mail.base import Batch, PreparedContent
from newsletter.mail.http import (
    Entry,
    HttpBackend,
    HttpProviderSettings,
    display_address,
    read_json,
    sent_to_all,
    substitutions,
)
from newsletter.mail.message import list_headers
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    import requests

    from newsletter.config import Config, Table

REGION_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
# ``%recipient.<key>%`` is replaced by the recipient's ``<key>`` (see the module docstring).
TEXT_KEY = "{}".format
HTML_KEY = "html_{}".format


def _variable(key: str) -> str:
    return f"%recipient.{key}%"


@dataclass(frozen=True)
class MailgunSettings(HttpProviderSettings):
    """``[mail.mailgun]``."""

    domain: str | None = None  # the sending domain
    region: str = "us"  # "us" or "eu": which of Mailgun's API hosts holds the domain
    webhook_signing_key_env: str | None = None  # NAME of the variable with the signing key

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        common = cls.parse_common(t, selected)
        if selected:
            t.require("domain")
        domain = t.text("domain", None)
        if domain is not None and "/" in domain:
            raise t.error("domain", f"expected a domain name, got {domain!r}")
        region = t.text("region", "us")
        if region not in REGION_URLS:
            raise t.error("region", f'expected "us" or "eu", got {region!r}')
        return cls(
            **common,
            domain=domain,
            region=region,
            webhook_signing_key_env=t.env_name("webhook_signing_key_env"),
        )


class MailgunBackend(
    HttpBackend, settings=MailgunSettings, webhook="newsletter.mail.mailgun_webhook:MailgunWebhook"
):
    name = "mailgun"
    label = "Mailgun"
    max_batch_size = 1000
    idempotent = False  # Mailgun has no idempotency key
    default_base_url = REGION_URLS["us"]
    max_request_bytes = 25 * 1000 * 1000  # the message, all recipients' variables included
    unique_addresses = True  # recipient-variables are keyed by address

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
        self.endpoint = f"/v3/{domain}/messages"

    @classmethod
    def provider_options(cls, config: Config) -> dict[str, Any]:
        settings: MailgunSettings = cls.settings(config)
        return {"domain": settings.domain or "", "region": settings.region}

    def describe(self) -> str:
        return f"{self.name} ({self.base_url}, domain {self.domain})"

    def client_options(self) -> dict[str, Any]:
        return {"auth": ("api", self.token)}

    def build_part(self, content: PreparedContent, recipient: Recipient) -> dict[str, str]:
        """The recipient's entry of ``recipient-variables``."""
        values = recipient.values
        out = substitutions(content, values, text=TEXT_KEY, html=HTML_KEY)
        out["unsubscribe_url"] = values["unsubscribe_url"]  # List-Unsubscribe uses it raw
        return out

    def payload(
        self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]
    ) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = content.once(self.name, lambda: self._shared(content))
        variables = {entry.recipient.email: entry.part for entry in entries}
        return [
            *fields,
            *(("to", display_address(entry.recipient)) for entry in entries),
            ("recipient-variables", json.dumps(variables, ensure_ascii=False)),
        ]

    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        # One id for the whole call; 200 means queued, so without the id it is still sent,
        # just not traceable.
        message_id = read_json(response, lambda body: str(body["id"]) or None)
        return sent_to_all(entries, message_id)

    def _shared(self, content: PreparedContent) -> list[tuple[str, str]]:
        """The form fields every recipient shares, built once per digest."""
        shared = content.content
        fields = [
            ("from", shared.from_addr),
            ("subject", shared.subject),
            ("text", content.text.convert(lambda n: _variable(TEXT_KEY(n)))),
            ("html", content.html.convert(lambda n: _variable(HTML_KEY(n)))),
        ]
        if shared.reply_to:
            fields.append(("h:Reply-To", shared.reply_to))
        for name, value in list_headers(shared, _variable("unsubscribe_url")):
            fields.append((f"h:{name}", value))
        return fields
