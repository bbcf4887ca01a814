"""Delivering a digest as one node among several: the ledger the send loop works against, and
taking back the batches of nodes that died.

``StorageLedger`` binds ``MailBackend.send`` to ``Storage`` under this node's id: a claim
leases a batch, skips who left since the digest was created (``rules.split_claimed``) and
fills in each recipient's values; a record is fenced by the lease. ``reclaim_expired``
applies ``rules.reclaim`` to every batch whose lease ran out.

Owns: the glue between the loop, the rules and storage. Does not own: SQL, the loop, the
decisions themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from newsletter import clock, rules
from newsletter.mail.base import Batch, MailBackend
from newsletter.node import Node
from newsletter.storage import Storage
from newsletter.types import DeliveryResult, DeliveryStatus, Digest, Recipient

log = logging.getLogger(__name__)

RecipientValues = Callable[[int, str, str | None], Mapping[str, str]]


class StorageLedger:
    """The send loop's ``Ledger`` for one digest, on this node's leases. Not thread-safe:
    the loop calls it from one thread."""

    def __init__(
        self,
        storage: Storage,
        node: Node,
        digest: Digest,
        values: RecipientValues,
        backend: MailBackend,
        *,
        resend_uncertain: bool = False,
    ) -> None:
        self.storage = storage
        self.node = node
        self.digest_id = digest.id
        self.values = values
        self.backend = backend
        # ``send --resend-uncertain``: re-send whatever comes back, a duplicate accepted.
        self.resend_uncertain = resend_uncertain
        self.skipped = 0
        self.uncertain_count = 0  # made uncertain here: claimed again past the key's memory

    def claim(self, size: int) -> Batch | None:
        while True:
            claimed = self.storage.claim_batch(self.digest_id, self.node.id, self.node.lease)
            if claimed is None:
                return None
            if claimed.attempts > 1 and self._past_the_key(claimed.first_sent_at):
                # Given back after an answer was lost, and now older than the provider's
                # memory of its key: sending it again could deliver twice.
                self.uncertain_count += self.storage.mark_uncertain(
                    self.digest_id, claimed.key, self.node.id
                )
                log.warning(
                    "batch %s: first sent %s, beyond %s's memory of its key; its recipients "
                    "are uncertain (`newsletter send --resend-uncertain` sends them again)",
                    claimed.key,
                    claimed.first_sent_at,
                    self.backend.name,
                )
                continue
            send, skip = rules.split_claimed(claimed.recipients)
            if skip:
                skipped = [
                    DeliveryResult(r.subscriber_id, r.email, DeliveryStatus.SKIPPED) for r in skip
                ]
                if self.storage.record_results(
                    self.digest_id, claimed.key, self.node.id, skipped, clock.now(), final=not send
                ):
                    self.skipped += len(skip)
            if not send:
                continue
            if claimed.attempts > 1:
                log.info("batch %s: attempt %d", claimed.key, claimed.attempts)
            return Batch(
                key=claimed.key,
                recipients=tuple(
                    Recipient(
                        r.subscriber_id,
                        r.email,
                        r.name,
                        self.values(r.subscriber_id, r.email, r.name),
                    )
                    for r in send
                ),
            )

    def _past_the_key(self, first_sent_at: datetime | None) -> bool:
        """Whether a re-send of a batch first sent then would reach a provider that no longer
        de-duplicates it (only idempotent backends re-send a batch whose answer was lost)."""
        if self.resend_uncertain or not self.backend.idempotent:
            return False  # asked for, or it came back only because it was not accepted
        decision = rules.reclaim(
            first_sent_at,
            idempotent=True,
            window=self.backend.idempotency_window,
            now=datetime.now(UTC),
        )
        return decision == rules.Reclaim.UNCERTAIN

    def record(self, batch: Batch, results: Sequence[DeliveryResult]) -> bool:
        return self.storage.record_results(
            self.digest_id, batch.key, self.node.id, results, clock.now()
        )

    def release(self, batch: Batch, delivered: Sequence[DeliveryResult] = ()) -> None:
        if delivered and not self.storage.record_results(
            self.digest_id, batch.key, self.node.id, delivered, clock.now(), final=False
        ):
            log.warning("batch %s: not recorded, this node's lease on it had run out", batch.key)
            return
        if not self.storage.release_batch(self.digest_id, batch.key, self.node.id):
            log.warning("batch %s: not given back, this node's lease on it had run out", batch.key)

    def uncertain(self, batch: Batch) -> None:
        self.storage.mark_uncertain(self.digest_id, batch.key, self.node.id)


@dataclass
class Reclaimed:
    """What ``reclaim_expired`` did."""

    resent: int = 0  # deliveries back to pending: the provider de-duplicates a re-send
    uncertain: int = 0  # deliveries that may have arrived, now reported uncertain
    digests: set[int] = field(default_factory=set)


def reclaim_expired(storage: Storage, backend: MailBackend) -> Reclaimed:
    """Take back every batch whose node stopped renewing its lease (it died, or lost the
    database for longer than a lease): re-sendable where ``backend``'s provider de-duplicates
    by the batch's key within its memory, else uncertain."""
    done = Reclaimed()
    while leases := storage.expired_leases():
        moved_any = False
        for lease in leases:
            action = rules.reclaim(
                lease.first_sent_at,
                idempotent=backend.idempotent,
                window=backend.idempotency_window,
                now=datetime.now(UTC),
            )
            moved = storage.reclaim_lease(lease, resend=action == rules.Reclaim.RESEND)
            if not moved:
                continue
            moved_any = True
            done.digests.add(lease.digest_id)
            if action == rules.Reclaim.RESEND:
                done.resent += moved
                log.warning(
                    "batch %s: node %s stopped renewing its lease; %d recipients will be sent "
                    "again (%s drops the duplicate)",
                    lease.key,
                    lease.owner,
                    moved,
                    backend.name,
                )
            else:
                done.uncertain += moved
                log.warning(
                    "batch %s: node %s stopped renewing its lease while sending; %d recipients "
                    "are uncertain (`newsletter send --resend-uncertain` sends them again)",
                    lease.key,
                    lease.owner,
                    moved,
                )
        if not moved_any:
            break
    return done
