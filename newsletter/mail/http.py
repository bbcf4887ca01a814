"""HTTP for the mail APIs: one ``requests.Session`` per backend, explicit timeouts, and the one
place where retries, backoff and ``Retry-After`` are decided.

Retries are urllib3's ``Retry`` mounted on the session (exponential backoff with jitter,
``Retry-After`` honoured on 429 and 503), not a loop of our own. What may be retried depends
on whether re-sending could deliver twice:

- connection errors before the request went out, 429 and 5xx: always retried; after the last
  try the batch was *not* accepted, so it is ``retryable`` (back to pending, sent later);
- a timeout or a dropped connection *after* the request went out: the provider may have
  accepted it. Retried only for a backend whose provider de-duplicates (an idempotency key);
  otherwise the batch is ``uncertain`` and stays in flight;
- 401/403: ``fatal`` (no batch can succeed with these credentials); other 4xx: the provider
  refused this batch's payload, a permanent failure for its recipients.

``trust_env`` is off because requests re-reads proxy settings from the environment on every
request (0.2-0.35 ms each, measured); the proxies for the base URL are read once instead.

``HttpBackend`` is the base of the provider backends (postmark, sendgrid, mailgun, resend): the
options they share, one ``HttpClient`` per send, and the batch template (the checks, the size
limit, the unreadable-answer error, the refused and in-order results), so that a provider
module only states its endpoint and limits, builds its payload and parses its answer.
"""

from __future__ import annotations

import abc
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from email.headerregistry import Address
from html import escape
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from newsletter import clock
from newsletter._version import USER_AGENT
from newsletter.exceptions import MailError
from newsletter.mail.base import (
    BackendSettings,
    Batch,
    MailBackend,
    PreparedContent,
    failed_result,
    sent_result,
)
from newsletter.mail.message import check_recipient
from newsletter.text import clean_line
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config, Table

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class RetryStopped(Exception):
    """A stop request (SIGTERM, Ctrl-C) ended a wait between two attempts."""


def _stoppable_retry(stop: threading.Event) -> type[Retry]:
    """urllib3's ``Retry`` whose waits (backoff, ``Retry-After``) end at once when ``stop`` is
    set: a node asked to stop gives the batch back instead of sleeping on it."""

    class StoppableRetry(Retry):
        def sleep(self, response: Any = None) -> None:
            seconds = None
            if self.respect_retry_after_header and response is not None:
                seconds = self.get_retry_after(response)
            if not seconds:
                seconds = self.get_backoff_time()
            if stop.wait(max(0.0, seconds)):
                raise RetryStopped

    return StoppableRetry


class HttpClient:
    """A session bound to one provider's base URL, with its auth headers and retry policy."""

    def __init__(
        self,
        *,
        backend: str,
        base_url: str,
        timeout: float,
        max_retries: int,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        pool_size: int = 10,
        backoff_factor: float = 0.5,
        stopping: threading.Event | None = None,
    ) -> None:
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.idempotent = idempotent
        retry_class = _stoppable_retry(stopping) if stopping is not None else Retry
        retry = retry_class(
            total=max_retries,
            connect=max_retries,
            read=max_retries if idempotent else 0,
            status=max_retries,
            other=0,
            redirect=0,
            allowed_methods=None,  # POST too: what is safe is decided by connect/read above
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_max=30,
            backoff_jitter=backoff_factor,
            respect_retry_after_header=True,
            retry_after_max=300,
            raise_on_status=False,  # hand back the last response so its error can be read
        )
        session = requests.Session()
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        if headers:
            session.headers.update(headers)
        if auth is not None:
            session.auth = auth
        self.session = session

    def close(self) -> None:
        self.session.close()

    def post(
        self,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """POST to ``base_url + path``. Transport failures become ``MailError`` (see module doc);
        the response is returned whatever its status, for the provider module to read."""
        url = self.base_url + path
        try:
            return self.session.post(
                url,
                json=json_body,
                data=data,
                files=files,
                headers=dict(headers or {}),
                timeout=self.timeout,
            )
        except RetryStopped as e:
            # The last attempt was answered (429, 5xx) or never reached the provider.
            raise self._error(f"{url}: stopping, not retried", retryable=True) from e
        except requests.ConnectTimeout as e:
            raise self._error(f"cannot connect to {url}: timed out", retryable=True) from e
        except requests.ConnectionError as e:
            if _before_sending(e):
                raise self._error(f"cannot connect to {url}: {_reason(e)}", retryable=True) from e
            raise self._after_sending(f"connection to {url} lost: {_reason(e)}") from e
        except requests.Timeout as e:
            raise self._after_sending(f"no answer from {url} within {self.timeout:g} s") from e
        except requests.RequestException as e:
            raise self._after_sending(f"request to {url} failed: {e}") from e

    def refusal(
        self, response: requests.Response, provider_message: str | None = None
    ) -> MailError:
        """The ``MailError`` for a non-2xx response, classified by its status (see module doc)."""
        status = response.status_code
        message = provider_message or error_text(response)
        if status in (401, 403):
            return MailError(
                "the provider refused the credentials",
                backend=self.backend,
                status=status,
                provider_message=message,
                fatal=True,
            )
        if status in RETRY_STATUSES:
            return MailError(
                "the provider is not accepting mail right now (retries exhausted)",
                backend=self.backend,
                status=status,
                provider_message=message,
                retryable=True,
            )
        return MailError(
            "the provider refused the batch",
            backend=self.backend,
            status=status,
            provider_message=message,
        )

    def _error(
        self, message: str, *, retryable: bool = False, uncertain: bool = False
    ) -> MailError:
        return MailError(message, backend=self.backend, retryable=retryable, uncertain=uncertain)

    def _after_sending(self, message: str) -> MailError:
        if self.idempotent:
            # Re-sending is de-duplicated by the provider: safe to try again later.
            return self._error(message, retryable=True)
        return self._error(message + "; it may or may not have been accepted", uncertain=True)


def _before_sending(error: requests.ConnectionError) -> bool:
    """Whether a connection error happened before the request was sent (nothing delivered)."""
    reason = error.args[0] if error.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


def _reason(error: requests.RequestException) -> str:
    reason = error.args[0] if error.args else error
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    return str(reason)


def error_text(response: requests.Response, limit: int = 500) -> str:
    """The provider's own explanation: a JSON ``message``/``Message``/``error``, else the body."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text[:limit].strip() or response.reason or ""
    if isinstance(body, dict):
        for key in ("Message", "message", "error", "errors"):
            if key in body:
                value = body[key]
                return (value if isinstance(value, str) else json.dumps(value))[:limit]
    return json.dumps(body)[:limit]


@dataclass(frozen=True)
class HttpProviderSettings(BackendSettings):
    """The keys of every HTTP provider's table; a provider's ``Settings`` adds its own."""

    token_env: str | None = None  # NAME of the variable holding the API token or key
    base_url: str | None = None  # None: the provider's public endpoint
    max_retries: int = 5  # for 429, 5xx and connection errors
    timeout: float = 30.0  # seconds per request
    # Whether sending needs ``token_env`` (a provider signing with other credentials: False).
    token_required: ClassVar[bool] = True

    @classmethod
    def parse_common(cls, t: Table, selected: bool) -> dict[str, Any]:
        """The shared keys, checked; refuses keys no field of ``cls`` names."""
        t.allow(*(f.name for f in fields(cls)))
        if selected and cls.token_required:
            t.require("token_env")
        return {
            "token_env": t.env_name("token_env"),
            "base_url": t.url("base_url"),
            "max_retries": t.number("max_retries", 5, minimum=0, maximum=100, integer=True),
            "timeout": float(t.number("timeout", 30.0, minimum=0.1, maximum=3600)),
        }

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        return cls(**cls.parse_common(t, selected))


class HttpBackend(MailBackend, settings=HttpProviderSettings):
    """A backend that sends through a provider's HTTP API: ``open`` creates one ``HttpClient``
    (its pool sized to ``concurrency``), ``close`` closes it.

    The batch template, like anymail's ``BasePayload``: ``send_batch`` (the checks, the loop
    over recipients, the refused and in-order results) is written once here. A provider module
    states its endpoint and limits (the class attributes below, ``client_options`` for its
    auth), builds the payload (``build_part`` per recipient, ``payload`` for the call) and
    parses the answer (``parse``; ``refusal`` and ``rejected`` for its error body).
    """

    default_base_url: ClassVar[str]
    endpoint: str  # the path under the base URL
    label: ClassVar[str]  # the provider's name in messages ("over Postmark's limit")
    # Refused before sending above this; None where the provider documents no limit (Resend).
    max_request_bytes: ClassVar[int | None] = None
    # A batch may not hold one address twice (variables keyed by address, or the provider
    # refuses the whole call for it): the second recipient with it fails before sending.
    unique_addresses: ClassVar[bool] = False

    def __init__(
        self,
        token: str,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not token:
            raise ValueError(f"{self.name} needs an API token")
        self.token = token
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.client: HttpClient | None = None

    @classmethod
    def from_config(cls, config: Config) -> Self:
        cls.check_batch_size(config)
        return cls(
            cls.secret(config, "token_env"),
            **cls.provider_options(config),
            **cls.http_options(config),
            **cls.common_options(config),
        )

    @classmethod
    def provider_options(cls, config: Config) -> dict[str, Any]:
        """The keys only this provider takes (Postmark's stream, Mailgun's domain)."""
        return {}

    @classmethod
    def http_options(cls, config: Config) -> dict[str, Any]:
        """The options every HTTP backend takes, besides ``common_options``."""
        settings: HttpProviderSettings = cls.settings(config)
        return {
            "base_url": settings.base_url,
            "timeout": settings.timeout,
            "max_retries": settings.max_retries,
        }

    def describe(self) -> str:
        return f"{self.name} ({self.base_url})"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``HttpClient`` beyond the common ones: auth, headers."""
        return {}

    def open(self) -> bool:
        self.client = HttpClient(
            backend=self.name,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            idempotent=self.idempotent,
            pool_size=self.concurrency,
            backoff_factor=self.backoff_factor,
            stopping=self.stopping,
            **self.client_options(),
        )
        return True

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    @property
    def http(self) -> HttpClient:
        if self.client is None:
            raise MailError("the backend is not open (send_batch outside send)", backend=self.name)
        return self.client

    # --- the batch template ----------------------------------------------------------------

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        """Check each recipient, build their part, post the parts, and answer one result
        per recipient in batch order. A recipient that fails a check is left out of the payload
        (FAILED with its own reason) rather than sinking the batch; a payload the provider
        refuses as a whole fails the recipients still unsettled, unless the loop must decide
        (``retryable``, ``fatal``, ``uncertain``: raised again)."""
        date = clock.now()
        results: dict[int, DeliveryResult] = {}
        entries: list[Entry] = []
        seen: set[str] = set()
        for i, recipient in enumerate(batch.recipients):
            try:
                check_recipient(content, recipient, date=date, backend=self.name)
                if self.unique_addresses:
                    self._once_per_batch(recipient, seen)
                part = self.build_part(content, recipient)
            except MailError as e:
                log.warning("not sent: %s", e)
                results[i] = failed_result(recipient, str(e))
            else:
                entries.append(Entry(i, recipient, part))
        if entries:
            try:
                self._deliver(content, batch, entries, results)
            except MailError as e:
                if e.retryable or e.fatal or e.uncertain:
                    raise
                log.error("%s", e)
                for entry in entries:
                    results.setdefault(entry.index, failed_result(entry.recipient, str(e)))
        return in_order(results, len(batch))

    def _once_per_batch(self, recipient: Recipient, seen: set[str]) -> None:
        address = recipient.email.lower()
        if address in seen:
            raise MailError("the address is twice in this batch", backend=self.name)
        seen.add(address)

    @abc.abstractmethod
    def build_part(self, content: PreparedContent, recipient: Recipient) -> Any:
        """This recipient's part of the payload (an email, a personalization, variables).
        Raises ``MailError`` to fail this recipient alone (a per-message limit)."""

    @abc.abstractmethod
    def payload(
        self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]
    ) -> bytes | list[tuple[str, str]]:
        """The request body for ``entries``: JSON bytes, or form fields."""

    @abc.abstractmethod
    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        """A result by batch index for each of ``entries``, read from an accepted (2xx) answer.
        Raises ``MailError`` (``read_answer``'s ``uncertain`` one for an answer that does not
        read)."""

    def request_headers(self, batch: Batch) -> dict[str, str]:
        """Headers of this batch's request beyond the client's (an idempotency key)."""
        return {}

    def refusal(self, response: requests.Response) -> MailError:
        """The ``MailError`` for a non-2xx answer; a provider reads its own error body here."""
        return self.http.refusal(response)

    def rejected(self, response: requests.Response, count: int) -> dict[int, str] | None:
        """For a refusal that accepted nothing but names the recipients at fault: their reason
        by position among the ``count`` posted. The template fails those and posts the rest
        once more (SendGrid refuses a whole call for one bad personalization). None: the
        refusal is about the whole payload."""
        return None

    def _deliver(
        self,
        content: PreparedContent,
        batch: Batch,
        entries: Sequence[Entry],
        results: dict[int, DeliveryResult],
    ) -> None:
        """Post the payload of ``entries`` and put a result for each into ``results``. Raises
        ``MailError`` when the payload was refused as a whole; ``results`` keeps the recipients
        a refusal named (``rejected``) and settled before that."""
        retried = False
        while entries:
            response = self.post(self.payload(content, batch, entries), self.request_headers(batch))
            if 200 <= response.status_code < 300:
                results.update(self.parse(response, entries))
                return
            rejected = None if retried else self.rejected(response, len(entries))
            if not rejected:
                raise self.refusal(response)
            for position, reason in rejected.items():
                entry = entries[position]
                results[entry.index] = failed_result(entry.recipient, f"{self.name}: {reason}")
            entries = [e for position, e in enumerate(entries) if position not in rejected]
            retried = True

    def post(
        self, data: bytes | list[tuple[str, str]], headers: Mapping[str, str] | None = None
    ) -> requests.Response:
        """POST ``data`` to the endpoint: JSON bytes or form fields, refused before sending
        when over ``max_request_bytes``."""
        if isinstance(data, bytes):
            size = len(data)
            headers = {"Content-Type": "application/json", **(headers or {})}
        else:
            size = sum(len(value.encode()) for _, value in data)
        limit = self.max_request_bytes
        if limit is not None and size > limit:
            raise self.over_limit("refused before sending: the request is", size, "call", limit)
        return self.http.post(self.endpoint, data=data, headers=headers)

    def over_limit(self, what: str, size: int, per: str, limit: int) -> MailError:
        """``<what> <size> bytes, over <Provider>'s limit of <limit> per <per>``."""
        return MailError(
            f"{what} {size:,} bytes, over {self.label}'s limit of {limit:,} per {per}",
            backend=self.name,
        )

    def read_answer(self, response: requests.Response, read: Callable[[Any], T]) -> T:
        """``read`` applied to the JSON of an accepted answer. An answer that does not read
        is ``uncertain``: the batch was accepted, but there is no telling which messages went
        out (an idempotent provider answers the same key again, readably or not)."""
        try:
            return read(response.json())
        except ANSWER_ERRORS as e:
            raise MailError(
                f"unreadable answer to an accepted batch ({e}); it may have been sent",
                backend=self.name,
                status=response.status_code,
                provider_message=response.text[:200],
                uncertain=True,
            ) from e


@dataclass(frozen=True)
class Entry:
    """One recipient's part of a batch payload: their position in the batch, the recipient,
    and what the provider module built for them."""

    index: int
    recipient: Recipient
    part: Any


# What reading a provider's JSON raises when it is not the documented shape.
ANSWER_ERRORS = (ValueError, KeyError, TypeError, AttributeError)


def read_json(response: requests.Response, read: Callable[[Any], T]) -> T | None:
    """``read`` applied to a response's JSON; None when the body does not read that way (an
    error answer without the provider's fields, an id missing from an accepted one)."""
    try:
        return read(response.json())
    except ANSWER_ERRORS:
        return None


def sent_to_all(entries: Iterable[Entry], message_id: str | None) -> dict[int, DeliveryResult]:
    """SENT for every entry, under the one id a provider answers for the whole call."""
    return {entry.index: sent_result(entry.recipient, message_id) for entry in entries}


def substitutions(
    content: PreparedContent,
    values: Mapping[str, str],
    *,
    text: Callable[[str], str],
    html: Callable[[str], str],
) -> dict[str, str]:
    """A recipient's values under the names a provider substitutes: ``text(name)`` raw for the
    text body, ``html(name)`` HTML-escaped for the HTML body (providers insert values as
    given, so the two bodies need different names)."""
    out = {text(n): values.get(n, "") for n in sorted(content.text.used)}
    out |= {html(n): escape(values.get(n, "")) for n in sorted(content.html.used)}
    return out


def display_address(recipient: Recipient) -> str:
    """``"Name" <address>`` for a provider that takes addresses as text (it encodes the name,
    but not the control characters a name from outside may hold: those are removed here)."""
    return str(Address(display_name=clean_line(recipient.name or ""), addr_spec=recipient.email))


def in_order(results: Mapping[int, DeliveryResult], size: int) -> list[DeliveryResult]:
    """Results by batch index as the list the loop expects; every index must be present."""
    missing = [i for i in range(size) if i not in results]
    if missing:
        raise AssertionError(f"no result for batch positions {missing}")
    return [results[i] for i in range(size)]
