"""Subscribers: addresses, their status and its history.

Which statuses an import or an admin may bring back, and what double opt-in allows, are the
callers' decisions passed in as arguments; writes are conflict-safe (``ON CONFLICT``), so two
processes adding the same address both succeed and store it once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Text, and_, func, literal, or_, select, update

from newsletter.exceptions import SubscriberError
from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.types import Subscriber, SubscriberStatus

# Statuses that receive mail (or are about to: pending is waiting for its confirmation).
_RECEIVING = (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
# Statuses an admin's `subscribers add` may bring back; suppressed addresses stay suppressed.
REACTIVATABLE = (SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.PENDING)
_SUPPRESSED = (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED)
_T = TypeVar("_T")


class SubscribersMixin(StorageBase):
    def add_subscriber(
        self,
        email: str,
        name: str | None,
        now: datetime,
        *,
        reactivate: Collection[SubscriberStatus] = REACTIVATABLE,
    ) -> tuple[Subscriber, bool]:
        """Add a subscriber, or activate a known one whose status is in ``reactivate``.
        Returns (subscriber, created).

        Re-activating can bring back an unsubscribed or pending address, never a suppressed one
        (bounced or complained).
        """
        if not set(reactivate) <= set(REACTIVATABLE):
            raise ValueError(f"{sorted(reactivate)} cannot all be re-activated")
        email = email.lower()
        sub = s.subscribers
        with self._tx() as conn:
            inserted = self._insert_row(
                conn,
                sub,
                ["email"],
                {
                    "email": email,
                    "name": name,
                    "status": SubscriberStatus.ACTIVE,
                    "created_at": now,
                },
            )
            created = inserted
            if not created and reactivate:
                conn.execute(
                    update(sub)
                    .where(sub.c.email == email, sub.c.status.in_(list(reactivate)))
                    .values(
                        status=SubscriberStatus.ACTIVE,
                        unsubscribed_at=None,
                        name=func.coalesce(literal(name, Text), sub.c.name),
                    )
                )
            row = conn.execute(select(sub).where(sub.c.email == email)).one()
        return _subscriber(row), created

    def add_subscribers(
        self, rows: Iterable[tuple[str, str | None]], now: datetime, *, pending: bool = False
    ) -> tuple[int, int]:
        """Bulk add in one transaction, never re-activating anyone. Returns (added, present).

        With ``pending``, new addresses are added pending with their confirmation marked due,
        as ``request_subscription`` does, so a ``serve`` mailer (or the caller) sends them.
        Rows go in chunks of ``chunk`` with ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL
        both have it), so a million-row import is a few thousand statements, not a million.
        """
        total = present = 0
        count = select(func.count()).select_from(s.subscribers)
        with self._tx() as conn:
            before = int(conn.execute(count).scalar_one())
            extra: dict[str, Any] = {"status": SubscriberStatus.ACTIVE}
            if pending:
                extra = {
                    "status": SubscriberStatus.PENDING,
                    "confirm_sent_at": now,
                    "confirm_due_at": self._lease_now(conn),
                    "confirm_attempts": 0,
                }
            for chunk in _chunks(rows, 1000):
                values = [
                    {"email": e.lower(), "name": n, "created_at": now, **extra} for e, n in chunk
                ]
                total += len(values)
                conn.execute(self._insert_ignore(s.subscribers, ["email"]), values)
            added = int(conn.execute(count).scalar_one()) - before
        present = total - added
        return added, present

    def known_emails(self, emails: Iterable[str]) -> set[str]:
        """Which of these addresses (compared lower-cased) are stored, whatever their status."""
        known: set[str] = set()
        column = s.subscribers.c.email
        with self._read() as conn:
            for chunk in _chunks((e.lower() for e in emails), 1000):
                known.update(conn.execute(select(column).where(column.in_(chunk))).scalars())
        return known

    def get_subscriber(self, email: str) -> Subscriber | None:
        with self._read() as conn:
            row = conn.execute(
                select(s.subscribers).where(s.subscribers.c.email == email.lower())
            ).first()
        return _subscriber(row) if row is not None else None

    def iter_subscribers(
        self, *, status: SubscriberStatus | None = None, batch: int = 1000
    ) -> Iterator[Subscriber]:
        """Stream subscribers in id order, ``batch`` rows per query (keyset pagination)."""
        last = 0
        while True:
            query = select(s.subscribers).where(s.subscribers.c.id > last)
            if status is not None:
                query = query.where(s.subscribers.c.status == status)
            with self._read() as conn:
                rows = conn.execute(query.order_by(s.subscribers.c.id).limit(batch)).all()
            if not rows:
                return
            for row in rows:
                yield _subscriber(row)
            last = rows[-1].id

    def count_subscribers(self, status: SubscriberStatus | None = None) -> int:
        query = select(func.count()).select_from(s.subscribers)
        if status is not None:
            query = query.where(s.subscribers.c.status == status)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def unsubscribe(self, email: str, now: datetime) -> bool:
        """Mark an active or pending subscriber unsubscribed (kept, so an import cannot bring
        them back). False when already gone; raises ``SubscriberError`` when unknown."""
        with self._tx() as conn:
            result = conn.execute(
                update(s.subscribers)
                .where(
                    s.subscribers.c.email == email.lower(),
                    s.subscribers.c.status.in_(_RECEIVING),
                )
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
            )
            if result.rowcount:
                return True
            row = conn.execute(
                select(s.subscribers.c.id).where(s.subscribers.c.email == email.lower())
            ).first()
        if row is None:
            raise SubscriberError("no such subscriber", address=email)
        return False

    def get_subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        with self._read() as conn:
            row = conn.execute(
                select(s.subscribers).where(s.subscribers.c.id == subscriber_id)
            ).first()
        return _subscriber(row) if row is not None else None

    def request_subscription(
        self, email: str, name: str | None, now: datetime, *, resend_after: timedelta
    ) -> tuple[Subscriber, bool]:
        """Record a web subscription request, in one transaction. Returns (subscriber, send):
        whether a confirmation mail should go out now.

        A new address is added as pending; an unsubscribed one becomes pending again. A pending
        address gets another confirmation only when the last one was asked for more than
        ``resend_after`` ago, so repeated requests cannot flood a mailbox. Active and
        suppressed addresses are left exactly as they are, and get nothing.

        When it decides to send, the confirmation is marked due (``confirm_due_at``, on the
        lease clock) in the same transaction: the mail is then owed by the database, not by
        the memory of the process that answered, and any ``serve`` process's mailer claims it
        (``claim_confirmations``).
        """
        email = email.lower()
        sub = s.subscribers
        with self._tx() as conn:
            due = self._lease_now(conn)
            self._insert_row(
                conn,
                sub,
                ["email"],
                {
                    "email": email,
                    "name": name,
                    "status": SubscriberStatus.PENDING,
                    "created_at": now,
                },
            )
            # The claim is one conditional UPDATE, so two requests racing for the same address
            # cannot both decide to send.
            claimed = conn.execute(
                update(sub)
                .where(
                    sub.c.email == email,
                    or_(
                        sub.c.status == SubscriberStatus.UNSUBSCRIBED,
                        and_(
                            sub.c.status == SubscriberStatus.PENDING,
                            or_(
                                sub.c.confirm_sent_at.is_(None),
                                sub.c.confirm_sent_at <= now - resend_after,
                            ),
                        ),
                    ),
                )
                .values(
                    status=SubscriberStatus.PENDING,
                    confirm_sent_at=now,
                    confirm_due_at=due,
                    confirm_attempts=0,
                    name=func.coalesce(literal(name, Text), sub.c.name),
                )
            )
            row = conn.execute(select(sub).where(sub.c.email == email)).one()
        return _subscriber(row), bool(claimed.rowcount)

    def confirm_subscriber(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """Activate a pending subscriber (double opt-in, step two). Returns the subscriber as it
        is afterwards (unchanged when it was not pending), or None when unknown."""
        sub = s.subscribers
        with self._tx() as conn:
            conn.execute(
                update(sub)
                .where(sub.c.id == subscriber_id, sub.c.status == SubscriberStatus.PENDING)
                .values(status=SubscriberStatus.ACTIVE, confirmed_at=now, unsubscribed_at=None)
            )
            row = conn.execute(select(sub).where(sub.c.id == subscriber_id)).first()
        return _subscriber(row) if row is not None else None

    def unsubscribe_id(self, subscriber_id: int, now: datetime) -> Subscriber | None:
        """``unsubscribe`` by id (the web's unsubscribe links). Committed before it returns.
        Returns the subscriber as it is afterwards, or None when unknown."""
        sub = s.subscribers
        with self._tx() as conn:
            conn.execute(
                update(sub)
                .where(sub.c.id == subscriber_id, sub.c.status.in_(_RECEIVING))
                .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
            )
            row = conn.execute(select(sub).where(sub.c.id == subscriber_id)).first()
        return _subscriber(row) if row is not None else None

    def purge_pending(self, requested_before: datetime) -> int:
        """Forget pending addresses whose last request is older than ``requested_before``:
        nobody confirmed them, so they are not anyone's subscription. One that had received
        issues before (it unsubscribed, then asked again) goes back to unsubscribed instead, so
        its delivery history and its unsubscribe stay recorded. Returns how many were changed.

        Each statement only touches rows still pending and old, so several processes purging
        at once do the work once and a confirmation racing a purge wins or loses whole.
        """
        sub = s.subscribers
        stale = and_(
            sub.c.status == SubscriberStatus.PENDING,
            func.coalesce(sub.c.confirm_sent_at, sub.c.created_at) < requested_before,
        )
        received = (
            select(s.deliveries.c.subscriber_id)
            .where(s.deliveries.c.subscriber_id == sub.c.id)
            .exists()
        )
        with self._tx() as conn:
            back = conn.execute(
                update(sub)
                .where(stale, or_(received, sub.c.unsubscribed_at.is_not(None)))
                .values(status=SubscriberStatus.UNSUBSCRIBED, confirm_due_at=None)
            ).rowcount
            gone = conn.execute(sub.delete().where(stale)).rowcount
        return int(back) + int(gone)

    def suppress(
        self, email: str, status: SubscriberStatus, reason: str | None, now: datetime
    ) -> bool:
        """Suppress a known address for good (``status`` BOUNCED or COMPLAINED), whatever its
        status was; the first suppression is kept. True when this call changed it."""
        if status not in _SUPPRESSED:
            raise ValueError(f"{status} is not a suppression")
        sub = s.subscribers
        with self._tx() as conn:
            result = conn.execute(
                update(sub)
                .where(sub.c.email == email.lower(), sub.c.status.not_in(_SUPPRESSED))
                .values(
                    status=status,
                    status_reason=(reason or "")[:1000] or None,
                    unsubscribed_at=func.coalesce(
                        sub.c.unsubscribed_at, literal(now, s.UTCDateTime)
                    ),
                )
            )
        return bool(result.rowcount)

    def delete_subscriber(self, email: str) -> None:
        """Erase a subscriber and their delivery history (a data-protection request)."""
        with self._tx() as conn:
            row = conn.execute(
                select(s.subscribers.c.id).where(s.subscribers.c.email == email.lower())
            ).first()
            if row is None:
                raise SubscriberError("no such subscriber", address=email)
            conn.execute(s.deliveries.delete().where(s.deliveries.c.subscriber_id == row.id))
            conn.execute(s.subscribers.delete().where(s.subscribers.c.id == row.id))


def _chunks(rows: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _subscriber(row: Any) -> Subscriber:
    return Subscriber(
        id=row.id,
        email=row.email,
        name=row.name,
        status=SubscriberStatus(row.status),
        created_at=row.created_at,
        unsubscribed_at=row.unsubscribed_at,
    )
