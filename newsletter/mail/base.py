"""The mail backend seam: the base class owns the loop, a backend only sends one batch.

Modelled on django-anymail's ``BaseEmailBackend`` and Django's mail backends: ``send`` opens
the backend once, hands it batches, records a ``DeliveryResult`` per recipient through the
``Ledger`` and closes only what it opened. A subclass implements ``send_batch`` (build the
provider's payload for a batch, send it, parse the response into per-recipient results).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from newsletter.render.personalize import Template
from newsletter.types import DeliveryResult, MessageContent, Recipient

log = logging.getLogger(__name__)


class Ledger(Protocol):
    """Where the send loop gets work and reports outcomes (the core binds it to Storage)."""

    def claim(self, size: int) -> Sequence[Recipient]:
        """The next batch of recipients, already marked in flight; empty when none are left."""

    def record(self, results: Sequence[DeliveryResult]) -> None:
        """Store the outcome of each recipient of a batch."""


class PreparedContent:
    """A digest's shared content with its bodies split at the placeholders, once per send."""

    def __init__(self, content: MessageContent) -> None:
        self.content = content
        self.html = Template(content.html, is_html=True)
        self.text = Template(content.text, is_html=False)


class MailBackend(abc.ABC):
    """One way of delivering mail.

    ``idempotent`` says whether re-sending a batch that was in flight when a process died is
    safe (the backend or provider de-duplicates it). Where it is not, such recipients are
    reported as uncertain and only re-sent on request.
    """

    name: str = "base"
    batch_size: int = 100
    idempotent: bool = False

    def open(self) -> bool:
        """Acquire connections or sessions. Returns True when it opened something."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what ``open`` acquired."""

    @abc.abstractmethod
    def send_batch(
        self, content: PreparedContent, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        """Deliver one message to each recipient; return one result per recipient, in order.

        A recipient the provider refuses is a FAILED result, not an exception. Raise
        ``MailError`` only when the whole batch failed (the loop then records every recipient
        of the batch as failed with that reason).
        """

    def send(
        self,
        content: MessageContent,
        ledger: Ledger,
        *,
        progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
    ) -> tuple[int, int]:
        """Send every recipient the ledger hands out. Returns (sent, failed).

        Only counts are kept: results go to the ledger batch by batch, so memory stays flat
        whatever the size of the list.
        """
        from newsletter.exceptions import MailError
        from newsletter.types import DeliveryStatus

        prepared = PreparedContent(content)
        opened = self.open()
        sent = failed = 0
        try:
            while True:
                batch = ledger.claim(self.batch_size)
                if not batch:
                    break
                try:
                    results = self.send_batch(prepared, batch)
                except MailError as e:
                    log.error("batch of %d failed: %s", len(batch), e)
                    results = [
                        DeliveryResult(
                            r.subscriber_id, r.email, DeliveryStatus.FAILED, error=str(e)
                        )
                        for r in batch
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
        finally:
            if opened:
                self.close()
        return sent, failed
