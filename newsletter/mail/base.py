"""The mail backend seam: the base class owns the loop, a backend only sends one batch.

Modelled on django-anymail's ``BaseEmailBackend`` and Django's mail backends: ``send`` opens
the backend once, claims batches from a ``Ledger``, keeps up to ``concurrency`` batches in
flight on a thread pool, paces them to ``rate_limit`` messages per second, records a
``DeliveryResult`` per recipient and closes only what it opened. A backend implements
``send_batch`` (one batch: send it, a result per recipient); for the HTTP providers it is
written once in ``mail.http.HttpBackend``, and a provider module builds the payload and parses
the answer. ``sent_result`` and ``failed_result`` are the one way every backend makes results.

How the loop treats a batch whose ``send_batch`` raised ``MailError``:

- ``uncertain``: the provider may have accepted it (a timeout after the request went out).
  An idempotent backend gives it back (re-sent under the same key, de-duplicated by the
  provider); any other marks it uncertain, re-sent only with ``send --resend-uncertain``.
- ``retryable`` (429/5xx after retries, outage) or ``fatal`` (bad credentials, bad config):
  the batch goes back to pending, no further batch is started, and ``send`` reports the error
  in ``SendCounts.stopped``; a later run resumes. Recipients the error lists as ``delivered``
  (a backend that sends one by one got that far) are recorded; only the rest go back.
- anything else (the provider refused this batch's payload): every recipient of the batch is
  recorded as failed with the provider's reason.

A recipient the provider refuses inside an accepted batch is a FAILED result, never an error.

Stopping (``stopping`` set by a signal): no batch is claimed after it; a batch waiting for
the rate limit or for a retry is given back; batches on the wire get ``stop_timeout``
seconds to answer, and those that do not are left leased (their node's leases run out when
it exits, and another node takes them back).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from newsletter.exceptions import ConfigError, MailError
from newsletter.personalize import Template
from newsletter.types import DeliveryResult, DeliveryStatus, MessageContent, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config, Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """Recipients sent in one provider call. ``key`` is the same every time this batch is
    (re-)sent, so a provider that honours idempotency keys can de-duplicate it."""

    key: str
    recipients: tuple[Recipient, ...]

    def __len__(self) -> int:
        return len(self.recipients)


class Ledger(Protocol):
    """Where the send loop gets work and reports outcomes (the core binds it to Storage and
    this node's leases)."""

    def claim(self, size: int) -> Batch | None:
        """The next batch, leased to this node; None when no batch is left to claim.

        ``size`` is the most recipients the backend takes per call of this content. A ledger
        whose batches were cut already (a stored digest's, at its creation, to this same size)
        hands them out whole; the loop refuses one that is larger."""

    def record(self, batch: Batch, results: Sequence[DeliveryResult]) -> bool:
        """Store the outcome of each recipient of a batch and close it. False when this node
        lost the batch's lease meanwhile: nothing was stored."""

    def release(self, batch: Batch, delivered: Sequence[DeliveryResult] = ()) -> None:
        """Give back a batch that was certainly not accepted, keeping its key; the recipients
        in ``delivered`` were, and are recorded as such first (never sent again)."""

    def uncertain(self, batch: Batch) -> None:
        """The batch went out and its answer was lost: it may have been accepted."""


@dataclass(frozen=True)
class SendCounts:
    sent: int = 0
    failed: int = 0
    uncertain: int = 0  # the answer was lost: may or may not have been accepted
    lost: int = 0  # answered, but the lease had passed to another node: not recorded here
    stopped: MailError | None = None  # why the send stopped early (pending ones remain)
    interrupted: bool = False  # ``stopping`` was set: this node stopped claiming
    abandoned: int = 0  # batches still on the wire when ``stop_timeout`` ran out


class PreparedContent:
    """A digest's shared content, prepared once per send: bodies split at the placeholders,
    and a cache for whatever a provider derives from it once (e.g. bodies in its own
    substitution syntax), safe to fill from several threads."""

    def __init__(self, content: MessageContent) -> None:
        self.content = content
        self.html = Template(content.html, is_html=True)
        self.text = Template(content.text, is_html=False)
        self._cache: dict[str, Any] = {}
        # Reentrant: a factory may itself use ``once`` (a checked message built once reads
        # the header values every message shares, cached here too).
        self._lock = threading.RLock()

    def once(self, key: str, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = factory()
            return self._cache[key]


class RateLimiter:
    """Paces messages to ``rate`` per second (a token bucket holding one second's worth)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.last = clock()

    def acquire(self, n: int, stop: threading.Event | None = None) -> bool:
        """Wait until ``n`` messages may go. False when ``stop`` was set meanwhile."""
        while True:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= min(n, self.rate):
                self.tokens -= n  # may go negative for a batch larger than one second's worth
                return True
            delay = (min(n, self.rate) - self.tokens) / self.rate
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return False


def sent_result(recipient: Recipient, message_id: str | None) -> DeliveryResult:
    return DeliveryResult(
        recipient.subscriber_id, recipient.email, DeliveryStatus.SENT, message_id=message_id
    )


def failed_result(recipient: Recipient, error: str) -> DeliveryResult:
    return DeliveryResult(
        recipient.subscriber_id, recipient.email, DeliveryStatus.FAILED, error=error
    )


@dataclass(frozen=True)
class BackendSettings:
    """A backend's own keys, from its table ``[mail.<name>]``. Subclasses are frozen
    dataclasses whose field names are the keys, with ``parse`` validating them."""

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        """Read and check the table. ``selected``: ``[mail] backend`` names this backend, so
        what it needs to send is required (other backends' tables are read for their webhook
        keys). Errors go through ``t.error``, which names file, line and key."""
        t.allow(*(f.name for f in fields(cls)))
        return cls()


class MailBackend(abc.ABC):
    """One way of delivering mail. Subclasses set the class attributes and ``send_batch``.

    What a backend is plugged into is said in its class header, the provider's facts (limits,
    endpoint) in its body: ``class MailgunBackend(HttpBackend, settings=MailgunSettings,
    webhook="newsletter.mail.mailgun_webhook:MailgunWebhook")``. ``settings`` is the class
    that reads ``[mail.<name>]`` (``Settings``), ``webhook`` the import path of the provider's
    webhook; a subclass that names neither keeps its base's.
    """

    name: ClassVar[str] = "base"
    Settings: ClassVar[type[BackendSettings]] = BackendSettings  # parses [mail.<name>]
    max_batch_size: ClassVar[int] = 1000  # the provider's documented limit per call
    idempotent: ClassVar[bool] = False  # re-sending an in-flight batch is de-duplicated
    # How long the provider remembers an idempotency key; None: forever (the outbox).
    idempotency_window: ClassVar[timedelta | None] = None
    # "module:Class" of the provider's ``mail.webhook.Webhook``, imported only when served.
    webhook: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        settings: type[BackendSettings] | None = None,
        webhook: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if settings is not None:
            cls.Settings = settings
        if webhook is not None:
            cls.webhook = webhook

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        concurrency: int = 1,
        rate_limit: float | None = None,
    ) -> None:
        size = batch_size or self.max_batch_size
        if size > self.max_batch_size:
            raise ValueError(f"{self.name} accepts at most {self.max_batch_size} per batch")
        self.batch_size = size
        self.concurrency = max(1, concurrency)
        self.rate_limit = rate_limit
        # Set by ``send``: a stop request also cuts retry waits short (``mail.http``).
        self.stopping = threading.Event()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> Self:
        """The backend configured by ``[mail]``. Raises ``ConfigError`` naming the key."""

    @staticmethod
    def common_options(config: Config) -> dict[str, Any]:
        """The options every backend takes, from ``[mail]``."""
        return {
            "batch_size": config.mail.batch_size,
            "concurrency": config.mail.concurrency,
            "rate_limit": config.mail.rate_limit,
        }

    @classmethod
    def check_batch_size(cls, config: Config) -> None:
        size = config.mail.batch_size
        if size is not None and size > cls.max_batch_size:
            raise ConfigError(
                f"{cls.name} accepts at most {cls.max_batch_size} messages per call, got {size}",
                file=config.file,
                key="mail.batch_size",
            )

    @classmethod
    def settings(cls, config: Config) -> Any:
        """This backend's parsed ``[mail.<name>]`` (an instance of its ``Settings``)."""
        found = config.mail.provider(cls.name)
        if found is None:  # parse_config always parses the chosen backend's table
            raise ConfigError(f"[mail.{cls.name}] was not read", file=config.file, key="mail")
        return found

    @classmethod
    def secret(cls, config: Config, key: str) -> str:
        """The secret held by the environment variable that ``[mail.<name>] <key>`` names."""
        env = getattr(cls.settings(config), key)
        if not env:
            raise ConfigError("is required", file=config.file, key=f"mail.{cls.name}.{key}")
        value = config.secret(env)
        if value is None:
            raise ConfigError(
                f"the environment variable ${env} is not set (it should hold the secret)",
                file=config.file,
                key=f"mail.{cls.name}.{key}",
            )
        return value

    def describe(self) -> str:
        """Where messages go, for people: the backend and its endpoint (never a secret)."""
        return self.name

    def batch_size_for(self, content: PreparedContent) -> int:
        """How many recipients to claim per batch of ``content``: ``batch_size``, or fewer for a
        provider whose per-call size limit that many copies of this digest would exceed."""
        return self.batch_size

    def open(self) -> bool:
        """Acquire connections or sessions. Returns True when it opened something."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what ``open`` acquired."""

    @abc.abstractmethod
    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        """Deliver one message to each recipient; return one result per recipient, in order.

        Called from worker threads, several at once when ``concurrency`` > 1. Raise
        ``MailError`` (with ``retryable``/``fatal``/``uncertain`` set as they apply) only when
        the batch as a whole was not accepted; see the module docstring.
        """

    # --- the loop ------------------------------------------------------------------------------

    def send(
        self,
        content: MessageContent,
        ledger: Ledger,
        *,
        progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
        stopping: threading.Event | None = None,
        stop_timeout: float = 30.0,
    ) -> SendCounts:
        """Send every batch the ledger hands out. Only counts are kept in memory: results go
        to the ledger batch by batch, so memory stays flat whatever the size of the list."""
        stop = stopping if stopping is not None else threading.Event()
        self.stopping = stop
        prepared = PreparedContent(content)
        limit = self.batch_size_for(prepared)
        limiter = RateLimiter(self.rate_limit) if self.rate_limit else None
        sent = failed = uncertain = lost = abandoned = 0
        stopped: MailError | None = None
        opened = self.open()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"mail-{self.name}")
        running: dict[Future[list[DeliveryResult]], Batch] = {}

        def settle(future: Future[list[DeliveryResult]], batch: Batch) -> None:
            nonlocal sent, failed, uncertain, lost, stopped
            try:
                results = future.result()
            except MailError as e:
                if e.uncertain:
                    if self.idempotent:
                        log.warning("batch %s: %s; it will be sent again", batch.key, e)
                        ledger.release(batch)
                    else:
                        log.error("%d recipients uncertain: %s", len(batch), e)
                        ledger.uncertain(batch)
                        uncertain += len(batch)
                    return
                if e.retryable or e.fatal:
                    ledger.release(batch, e.delivered)
                    sent += sum(r.status == DeliveryStatus.SENT for r in e.delivered)
                    failed += sum(r.status == DeliveryStatus.FAILED for r in e.delivered)
                    if e.delivered and progress is not None:
                        progress(e.delivered)
                    if stopped is None and not stop.is_set():
                        log.error("sending stopped: %s", e)
                        stopped = e
                    return
                log.error("batch of %d refused: %s", len(batch), e)
                results = [failed_result(r, str(e)) for r in batch.recipients]
            if len(results) != len(batch):
                raise MailError(
                    f"returned {len(results)} results for {len(batch)} recipients",
                    backend=self.name,
                )
            if not ledger.record(batch, results):
                log.warning(
                    "batch %s: answered after this node's lease on it ran out; another node "
                    "holds it now, so its %d results were not recorded here",
                    batch.key,
                    len(results),
                )
                lost += len(results)
                return
            for result in results:
                if result.status == DeliveryStatus.SENT:
                    sent += 1
                else:
                    failed += 1
            if progress is not None:
                progress(results)

        deadline: float | None = None
        try:
            while True:
                while stopped is None and not stop.is_set() and len(running) < self.concurrency:
                    batch = ledger.claim(limit)
                    if batch is None:
                        break
                    if len(batch) > limit:
                        ledger.release(batch)
                        stopped = MailError(
                            f"batch {batch.key} holds {len(batch)} recipients, more than the "
                            f"{limit} this backend takes per call (the digest was cut into "
                            "batches for another backend); switch back to finish it",
                            backend=self.name,
                            fatal=True,
                        )
                        log.error("sending stopped: %s", stopped)
                        break
                    if limiter is not None and not limiter.acquire(len(batch), stop):
                        ledger.release(batch)
                        break
                    running[pool.submit(self.send_batch, prepared, batch)] = batch
                if not running:
                    break
                if stop.is_set():
                    if deadline is None:
                        deadline = time.monotonic() + stop_timeout
                        log.warning(
                            "stopping: waiting up to %g s for %d batches on the wire",
                            stop_timeout,
                            len(running),
                        )
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        abandoned = len(running)
                        log.error(
                            "stopping: %d batches still unanswered after %g s are left leased "
                            "(%s); once this node's leases run out another node takes them "
                            "back",
                            abandoned,
                            stop_timeout,
                            ", ".join(b.key for b in running.values()),
                        )
                        running.clear()
                        break
                    done, _ = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
                else:
                    done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(future, running.pop(future))
        finally:
            # Interrupted by an exception (a bug, a storage error): record what the batches
            # already out still return, so as few recipients as possible stay leased.
            for future, batch in running.items():
                try:
                    settle(future, batch)
                except Exception:  # already unwinding: the batch stays leased
                    log.exception("batch %s left leased", batch.key)
            pool.shutdown(wait=not abandoned, cancel_futures=True)
            if opened:
                self.close()
        return SendCounts(
            sent=sent,
            failed=failed,
            uncertain=uncertain,
            lost=lost,
            stopped=stopped,
            interrupted=stop.is_set(),
            abandoned=abandoned,
        )

    def send_one(self, content: MessageContent, recipient: Recipient) -> DeliveryResult:
        """Send a single message outside any ledger (``newsletter send --test``)."""
        opened = self.open()
        try:
            batch = Batch(key=f"{content.digest_uid}-test", recipients=(recipient,))
            try:
                results = self.send_batch(PreparedContent(content), batch)
            except MailError as e:
                return failed_result(recipient, str(e))
        finally:
            if opened:
                self.close()
        return results[0]
