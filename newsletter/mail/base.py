"""The mail backend seam: the base class owns the loop, a backend only sends one batch.

Modelled on django-anymail's ``BaseEmailBackend`` and Django's mail backends: ``send`` opens
the backend once, claims batches from a ``Ledger``, keeps up to ``concurrency`` batches in
flight on a thread pool, paces them to ``rate_limit`` messages per second, records a
``DeliveryResult`` per recipient and closes only what it opened. A provider module implements
``send_batch``: build the payload for one batch, send it, parse the response.

How the loop treats a batch whose ``send_batch`` raised ``MailError``:

- ``uncertain``: the provider may have accepted it (a timeout after the request went out).
  It stays *in flight*; only an idempotent backend re-sends it on the next run.
- ``retryable`` (429/5xx after retries, outage) or ``fatal`` (bad credentials, bad config):
  the batch goes back to pending, no further batch is started, and ``send`` reports the error
  in ``SendCounts.stopped``; a later run resumes.
- anything else (the provider refused this batch's payload): every recipient of the batch is
  recorded as failed with the provider's reason.

A recipient the provider refuses inside an accepted batch is a FAILED result, never an error.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from newsletter.exceptions import ConfigError, MailError
from newsletter.render.personalize import Template
from newsletter.types import DeliveryResult, DeliveryStatus, MessageContent, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config

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
    """Where the send loop gets work and reports outcomes (the core binds it to Storage)."""

    def claim(self, size: int) -> Batch | None:
        """The next batch, already recorded as in flight; None when nothing is pending."""

    def record(self, results: Sequence[DeliveryResult]) -> None:
        """Store the outcome of each recipient of a batch."""

    def release(self, batch: Batch) -> None:
        """Put a batch that was certainly not accepted back to pending, keeping its key."""


@dataclass(frozen=True)
class SendCounts:
    sent: int = 0
    failed: int = 0
    uncertain: int = 0  # left in flight: the outcome is unknown
    stopped: MailError | None = None  # why the send stopped early (pending ones remain)


class PreparedContent:
    """A digest's shared content, prepared once per send: bodies split at the placeholders,
    and a cache for whatever a provider derives from it once (e.g. bodies in its own
    substitution syntax), safe to fill from several threads."""

    def __init__(self, content: MessageContent) -> None:
        self.content = content
        self.html = Template(content.html, is_html=True)
        self.text = Template(content.text, is_html=False)
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

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

    def acquire(self, n: int) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= min(n, self.rate):
                self.tokens -= n  # may go negative for a batch larger than one second's worth
                return
            time.sleep((min(n, self.rate) - self.tokens) / self.rate)


class MailBackend(abc.ABC):
    """One way of delivering mail. Subclasses set the class attributes and ``send_batch``."""

    name: ClassVar[str] = "base"
    max_batch_size: ClassVar[int] = 1000  # the provider's documented limit per call
    idempotent: ClassVar[bool] = False  # re-sending an in-flight batch is de-duplicated
    # How long the provider remembers an idempotency key; None: forever (the outbox).
    idempotency_window: ClassVar[timedelta | None] = None

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

    @staticmethod
    def secret(config: Config, key: str) -> str:
        """The secret held by the environment variable that ``[mail] <key>`` names."""
        env = getattr(config.mail, key)
        if not env:
            raise ConfigError("is required", file=config.file, key=f"mail.{key}")
        value = config.secret(env)
        if value is None:
            raise ConfigError(
                f"the environment variable ${env} is not set (it should hold the secret)",
                file=config.file,
                key=f"mail.{key}",
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
    ) -> SendCounts:
        """Send every batch the ledger hands out. Only counts are kept in memory: results go
        to the ledger batch by batch, so memory stays flat whatever the size of the list."""
        prepared = PreparedContent(content)
        size = self.batch_size_for(prepared)
        limiter = RateLimiter(self.rate_limit) if self.rate_limit else None
        sent = failed = uncertain = 0
        stopped: MailError | None = None
        opened = self.open()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"mail-{self.name}")
        running: dict[Future[list[DeliveryResult]], Batch] = {}

        def settle(future: Future[list[DeliveryResult]], batch: Batch) -> None:
            nonlocal sent, failed, uncertain, stopped
            try:
                results = future.result()
            except MailError as e:
                if e.uncertain:
                    log.error("%d recipients uncertain: %s", len(batch), e)
                    uncertain += len(batch)
                    return
                if e.retryable or e.fatal:
                    ledger.release(batch)
                    if stopped is None:
                        log.error("sending stopped: %s", e)
                        stopped = e
                    return
                log.error("batch of %d refused: %s", len(batch), e)
                results = [
                    DeliveryResult(r.subscriber_id, r.email, DeliveryStatus.FAILED, error=str(e))
                    for r in batch.recipients
                ]
            if len(results) != len(batch):
                raise MailError(
                    f"returned {len(results)} results for {len(batch)} recipients",
                    backend=self.name,
                )
            ledger.record(results)
            for result in results:
                if result.status == DeliveryStatus.SENT:
                    sent += 1
                else:
                    failed += 1
            if progress is not None:
                progress(results)

        try:
            while True:
                while stopped is None and len(running) < self.concurrency:
                    batch = ledger.claim(size)
                    if batch is None:
                        break
                    if limiter is not None:
                        limiter.acquire(len(batch))
                    running[pool.submit(self.send_batch, prepared, batch)] = batch
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    settle(future, running.pop(future))
        finally:
            # Interrupted (Ctrl-C, a bug): record what the batches already out still return,
            # so as few recipients as possible are left uncertain.
            for future, batch in running.items():
                try:
                    settle(future, batch)
                except Exception:  # already unwinding: the batch stays in flight
                    log.exception("batch %s left in flight", batch.key)
            pool.shutdown(wait=True)
            if opened:
                self.close()
        return SendCounts(sent=sent, failed=failed, uncertain=uncertain, stopped=stopped)

    def send_one(self, content: MessageContent, recipient: Recipient) -> DeliveryResult:
        """Send a single message outside any ledger (``newsletter send --test``)."""
        opened = self.open()
        try:
            batch = Batch(key=f"{content.digest_uid}-test", recipients=(recipient,))
            try:
                results = self.send_batch(PreparedContent(content), batch)
            except MailError as e:
                return DeliveryResult(
                    recipient.subscriber_id, recipient.email, DeliveryStatus.FAILED, error=str(e)
                )
        finally:
            if opened:
                self.close()
        return results[0]
