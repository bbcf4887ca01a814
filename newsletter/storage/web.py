"""What the ``serve`` processes share, so that several behind a load balancer behave as one.

- the subscribe rate limit: one token bucket per client, kept as the moment it is full again
  (GCRA's "theoretical arrival time": the token bucket in one number), taken by one atomic
  upsert, so N processes count against one limit;
- the webhook tokens already accepted (Mailgun's replay check), until they expire;
- the confirmation mails waiting to go (``subscribers.confirm_due_at``, set by
  ``request_subscription``), claimed under a lease by whichever process's mailer asks first.

Client keys and tokens are stored as SHA-256 digests only: a visitor's address is never
written down. Buckets and claims are measured by the lease clock (the database server's on
PostgreSQL), so processes on different machines agree on them; a webhook token's expiry is the
caller's clock, the one its signature was checked against.

Owns: the SQL for those three. Does not own the policy (the rate, the retry delays, what a
replay is): ``web.ratelimit``, ``web.subscription`` and ``web.webhooks`` pass it in.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Double, Table, case, delete, func, literal, select, update

from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.storage.subscribers import _subscriber
from newsletter.types import ClaimedConfirmation, SubscriberStatus

_rb = s.rate_buckets
_wt = s.webhook_tokens
_sub = s.subscribers

# Slack when comparing bucket times, in seconds: ``full_at`` is a sum of intervals in epoch
# seconds (a double holds those to about a microsecond), and the last token of a burst must
# not be lost to rounding. A millisecond is nothing to a limit counted per minute.
_EPSILON = 1e-3


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class WebStateMixin(StorageBase):
    # --- the subscribe rate limit ----------------------------------------------------------------

    def take_rate_token(
        self, key: str, *, per_minute: float, burst: float, now: datetime | None = None
    ) -> float:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")
        interval = 60.0 / per_minute  # the seconds one token takes to come back
        tolerance = (burst - 1.0) * interval + _EPSILON  # how far ahead of now full_at may be
        with self._tx() as conn:
            t = (now or self._lease_now(conn)).timestamp()
            at = literal(t, Double)
            # Allowed while a token is left, that is while the bucket is full again no later
            # than ``tolerance`` from now; the token taken moves ``full_at`` on by one interval
            # (from now, when the bucket was full). A refused request takes nothing, as in the
            # token bucket. One statement: the row lock (PostgreSQL) or BEGIN IMMEDIATE
            # (SQLite) makes concurrent requests from any process take turns.
            allowed = _rb.c.full_at - at <= tolerance
            start = case((_rb.c.full_at > at, _rb.c.full_at), else_=at)
            upsert = (
                self._upsert(_rb)
                .values(key=_digest("rate", key), full_at=t + interval, allowed=True)
                .on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        "full_at": case((allowed, start + interval), else_=_rb.c.full_at),
                        "allowed": allowed,
                    },
                )
                .returning(_rb.c.full_at, _rb.c.allowed)
            )
            row = conn.execute(upsert).one()
        if row.allowed:
            return 0.0
        return max(float(row.full_at) - t - tolerance, _EPSILON)

    def purge_rate_buckets(self, *, keep_at_most: int, now: datetime | None = None) -> int:
        with self._tx() as conn:
            t = (now or self._lease_now(conn)).timestamp()
            purged = conn.execute(delete(_rb).where(_rb.c.full_at <= literal(t, Double))).rowcount
            left = conn.execute(select(func.count()).select_from(_rb)).scalar_one()
            if left > keep_at_most:
                # A flood from that many addresses: forget them all, as a restart of the old
                # in-memory limiter did. The table stays bounded; the flood meets full buckets.
                purged += conn.execute(delete(_rb)).rowcount
        return int(purged)

    def _upsert(self, table: Table) -> Any:
        """``INSERT`` with ``ON CONFLICT DO UPDATE`` and ``RETURNING`` for the dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # --- webhook tokens --------------------------------------------------------------------------

    def remember_webhook_token(
        self, provider: str, token: str, *, expires_at: datetime, now: datetime
    ) -> bool:
        with self._tx() as conn:
            conn.execute(delete(_wt).where(_wt.c.expires_at <= now))
            return self._insert_row(
                conn, _wt, ["key"], {"key": _digest(provider, token), "expires_at": expires_at}
            )

    def forget_webhook_token(self, provider: str, token: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(_wt).where(_wt.c.key == _digest(provider, token)))

    # --- confirmation mails ----------------------------------------------------------------------

    def claim_confirmations(self, *, limit: int, lease: timedelta) -> list[ClaimedConfirmation]:
        with self._tx() as conn:
            now = self._lease_now(conn)
            while True:
                query = (
                    select(_sub.c.id, _sub.c.status)
                    .where(_sub.c.confirm_due_at <= now)
                    .order_by(_sub.c.confirm_due_at, _sub.c.id)
                    .limit(limit)
                )
                if self.dialect == "postgresql":
                    # Rows another process is claiming are left to it, not waited for.
                    query = query.with_for_update(skip_locked=True)
                found = conn.execute(query).all()
                if not found:
                    return []
                live = [r.id for r in found if r.status == SubscriberStatus.PENDING]
                gone = [r.id for r in found if r.status != SubscriberStatus.PENDING]
                if gone:
                    # Confirmed, unsubscribed or suppressed since it was asked for: no mail.
                    conn.execute(
                        update(_sub).where(_sub.c.id.in_(gone)).values(confirm_due_at=None)
                    )
                if live:
                    break
            until = now + lease
            # Conditional, so that a claim can never take a row another one holds.
            conn.execute(
                update(_sub)
                .where(_sub.c.id.in_(live), _sub.c.confirm_due_at <= now)
                .values(confirm_due_at=until, confirm_attempts=_sub.c.confirm_attempts + 1)
            )
            rows = conn.execute(
                select(_sub)
                .where(_sub.c.id.in_(live), _sub.c.confirm_due_at == until)
                .order_by(_sub.c.id)
            ).all()
        return [ClaimedConfirmation(_subscriber(r), until, int(r.confirm_attempts)) for r in rows]

    def finish_confirmation(
        self, claim: ClaimedConfirmation, *, retry_in: timedelta | None
    ) -> bool:
        with self._tx() as conn:
            due = None if retry_in is None else self._lease_now(conn) + retry_in
            done = conn.execute(
                update(_sub)
                .where(
                    _sub.c.id == claim.subscriber.id,
                    _sub.c.confirm_due_at == claim.lease_until,
                )
                .values(confirm_due_at=due)
            )
        return bool(done.rowcount)
