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
options they share, one ``HttpClient`` per send, and the split of a batch into recipients whose
message passes ``mail.message``'s checks and FAILED results for the others.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from email.headerregistry import Address
from typing import TYPE_CHECKING, Any, ClassVar, Self

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from newsletter import clock
from newsletter._version import USER_AGENT
from newsletter.exceptions import MailError
from newsletter.mail.base import Batch, MailBackend, PreparedContent, failed_result
from newsletter.mail.message import check_recipient
from newsletter.text import clean_line
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config

log = logging.getLogger(__name__)

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

    def check(self, response: requests.Response, provider_message: str | None = None) -> None:
        """Raise ``MailError`` for a response that rejects the whole batch; return on 2xx."""
        if not 200 <= response.status_code < 300:
            raise self.refusal(response, provider_message)

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


class HttpBackend(MailBackend):
    """A backend that sends through a provider's HTTP API: ``open`` creates one ``HttpClient``
    (its pool sized to ``concurrency``), ``close`` closes it. Subclasses set ``default_base_url``
    and ``client_options`` (their auth header) and implement ``send_batch``."""

    default_base_url: ClassVar[str]

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
        """The ``[mail]`` keys only this provider takes (Postmark's stream, Mailgun's domain)."""
        return {}

    @staticmethod
    def http_options(config: Config) -> dict[str, Any]:
        """The ``[mail]`` options every HTTP backend takes, besides ``common_options``."""
        return {
            "base_url": config.mail.base_url,
            "timeout": config.mail.timeout,
            "max_retries": config.mail.max_retries,
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

    def checked(
        self, content: PreparedContent, batch: Batch
    ) -> tuple[list[tuple[int, Recipient]], dict[int, DeliveryResult]]:
        """The recipients of ``batch`` whose message passes ``check_recipient``, with their
        index in the batch, and a FAILED result by index for each one that does not: a bad
        recipient is left out of the payload rather than sinking the batch."""
        date = clock.now()
        good: list[tuple[int, Recipient]] = []
        failed: dict[int, DeliveryResult] = {}
        for i, recipient in enumerate(batch.recipients):
            try:
                check_recipient(content, recipient, date=date, backend=self.name)
            except MailError as e:
                log.warning("not sent: %s", e)
                failed[i] = failed_result(recipient, str(e))
            else:
                good.append((i, recipient))
        return good, failed


def refused_results(
    error: MailError, people: Iterable[tuple[int, Recipient]]
) -> dict[int, DeliveryResult]:
    """A payload the provider refused as a whole, as a FAILED result for each of ``people``.

    Raised again when the loop must decide (``retryable``, ``fatal``, ``uncertain``). Returning
    results rather than raising keeps the own reason of recipients that failed validation.
    """
    if error.retryable or error.fatal or error.uncertain:
        raise error
    log.error("%s", error)
    return {i: failed_result(recipient, str(error)) for i, recipient in people}


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
