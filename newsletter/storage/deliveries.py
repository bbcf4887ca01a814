"""Digests, their deliveries, and the batches that nodes claim, lease and record.

A digest's recipients are frozen and cut into batches in the transaction that creates it.
From then on a batch moves ``pending -> leased -> done``, or ``leased -> uncertain``, or back
to ``pending``; each move is one conditional UPDATE on the batch row, so two nodes can never
both hold a batch, and a node whose lease was taken from it cannot record over the new
holder (the *fence*: every write names the owner it expects). On PostgreSQL a claim skips
the rows another claim has locked (``FOR UPDATE SKIP LOCKED``); SQLite serializes writers
(``BEGIN IMMEDIATE``), which is enough for its one node.

Which recipients are skipped and what happens to a dead node's batch are decided in
``rules``; this module only moves rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, bindparam, cast, func, literal, select, text, update

from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.storage.notes import take_note
from newsletter.types import (
    BatchStatus,
    ClaimedBatch,
    ClaimedRecipient,
    DeliveryResult,
    DeliveryStatus,
    Digest,
    DigestCounts,
    DigestStatus,
    ExpiredLease,
    LeaseHolder,
    SubscriberStatus,
)

_b = s.batches
_d = s.deliveries

# PostgreSQL: a batch's outcomes in one statement of constant text (compiled once).
_UPDATE_FROM_ARRAYS = text(
    "UPDATE deliveries SET status = v.st, message_id = v.mid, error = v.err, updated_at = :now "
    "FROM unnest(CAST(:sids AS integer[]), CAST(:sts AS text[]), CAST(:mids AS text[]), "
    "CAST(:errs AS text[])) AS v(sid, st, mid, err) "
    "WHERE deliveries.digest_id = :digest_id AND deliveries.batch = :key "
    "AND deliveries.subscriber_id = v.sid"
).bindparams(bindparam("now", type_=s.UTCDateTime()))


class DeliveriesMixin(StorageBase):
    # --- digests ---------------------------------------------------------------------------------

    def create_digest(
        self,
        *,
        number: int,
        uid: str,
        subject: str,
        preheader: str,
        html: str,
        text: str,
        article_ids: Sequence[int],
        now: datetime,
        batch_size: int,
        fire: str | None = None,
        covered_ids: Sequence[int] = (),
        note_id: int | None = None,
    ) -> tuple[Digest, bool]:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        with self._tx() as conn:
            digest_id = conn.execute(
                self._insert_ignore(s.digests, None)
                .values(
                    uid=uid,
                    number=number,
                    fire=fire,
                    created_at=now,
                    subject=subject,
                    preheader=preheader,
                    html=html,
                    text=text,
                    status=DigestStatus.SENDING,
                )
                .returning(s.digests.c.id)
            ).scalar()
            created = digest_id is not None
            if digest_id is None:  # that fire (or that number) was taken by another node first
                taken = (
                    s.digests.c.fire == fire if fire is not None else s.digests.c.number == number
                )
                digest_id = conn.execute(select(s.digests.c.id).where(taken)).scalar()
                if digest_id is None:  # the fire is new, its number was taken
                    digest_id = conn.execute(
                        select(s.digests.c.id).where(s.digests.c.number == number)
                    ).scalar_one()
            else:
                if article_ids:
                    conn.execute(
                        s.digest_articles.insert(),
                        [
                            {"digest_id": digest_id, "article_id": aid, "position": i}
                            for i, aid in enumerate(article_ids)
                        ],
                    )
                # Only those still uncovered: an article another digest took is its, not ours.
                covered = sorted({*article_ids, *covered_ids})
                a = s.articles.c
                for start in range(0, len(covered), 500):
                    conn.execute(
                        update(s.articles)
                        .where(a.id.in_(covered[start : start + 500]), a.covered_by.is_(None))
                        .values(covered_by=digest_id)
                    )
                self._freeze_recipients(conn, digest_id, now, batch_size, f"nl-{uid}")
                if note_id is not None:
                    # Same transaction: the digest exists with its note, or neither changed.
                    take_note(conn, note_id, digest_id)
        digest = self.get_digest(int(digest_id))
        assert digest is not None
        return digest, created

    @staticmethod
    def _freeze_recipients(
        conn: Any, digest_id: int, now: datetime, batch_size: int, prefix: str
    ) -> None:
        """Every active subscriber becomes a pending delivery, cut into batches of
        ``batch_size`` in subscriber order: two set-based statements, whatever the list's size."""
        sub = s.subscribers.c
        numbered = (
            select(
                sub.id,
                sub.email,
                sub.name,
                ((func.row_number().over(order_by=sub.id) - 1) // batch_size).label("bucket"),
            )
            .where(sub.status == SubscriberStatus.ACTIVE)
            .subquery()
        )
        conn.execute(
            _d.insert().from_select(
                ["digest_id", "subscriber_id", "email", "name", "status", "updated_at", "batch"],
                select(
                    literal(digest_id),
                    numbered.c.id,
                    numbered.c.email,
                    numbered.c.name,
                    literal(DeliveryStatus.PENDING.value),
                    literal(now, s.UTCDateTime),
                    literal(prefix + "-", String) + cast(numbered.c.bucket, String),
                ),
            )
        )
        conn.execute(
            _b.insert().from_select(
                ["digest_id", "key", "seq", "size", "status", "attempts"],
                select(
                    literal(digest_id),
                    _d.c.batch,
                    func.min(_d.c.subscriber_id),
                    func.count(),
                    literal(BatchStatus.PENDING.value),
                    literal(0),
                )
                .where(_d.c.digest_id == digest_id)
                .group_by(_d.c.batch),
            )
        )

    def get_digest(self, digest_id: int) -> Digest | None:
        with self._read() as conn:
            row = conn.execute(select(s.digests).where(s.digests.c.id == digest_id)).first()
            if row is None:
                return None
            ids = (
                conn.execute(
                    select(s.digest_articles.c.article_id)
                    .where(s.digest_articles.c.digest_id == digest_id)
                    .order_by(s.digest_articles.c.position)
                )
                .scalars()
                .all()
            )
        return _digest(row, tuple(ids))

    def list_digests(self) -> list[Digest]:
        with self._read() as conn:
            rows = conn.execute(select(s.digests).order_by(s.digests.c.id.desc())).all()
            links = conn.execute(
                select(s.digest_articles.c.digest_id, s.digest_articles.c.article_id).order_by(
                    s.digest_articles.c.digest_id, s.digest_articles.c.position
                )
            ).all()
        ids: dict[int, list[int]] = {}
        for link in links:
            ids.setdefault(link.digest_id, []).append(link.article_id)
        return [_digest(row, tuple(ids.get(row.id, ()))) for row in rows]

    def last_digest(self) -> Digest | None:
        return self._first_digest(select(s.digests.c.id).order_by(s.digests.c.number.desc()))

    def unfinished_digest(self) -> Digest | None:
        return self._first_digest(
            select(s.digests.c.id)
            .where(s.digests.c.status == DigestStatus.SENDING)
            .order_by(s.digests.c.number)
        )

    def digest_for_fire(self, fire: str) -> Digest | None:
        return self._first_digest(select(s.digests.c.id).where(s.digests.c.fire == fire))

    def uncertain_digest(self) -> Digest | None:
        has_uncertain = (
            select(_b.c.key)
            .where(_b.c.digest_id == s.digests.c.id, _b.c.status == BatchStatus.UNCERTAIN)
            .exists()
        )
        return self._first_digest(
            select(s.digests.c.id).where(has_uncertain).order_by(s.digests.c.number.desc())
        )

    def _first_digest(self, query: Any) -> Digest | None:
        with self._read() as conn:
            row = conn.execute(query.limit(1)).first()
        return self.get_digest(row.id) if row is not None else None

    def finish_digest(self, digest_id: int, now: datetime) -> bool:
        still_open = (
            select(_b.c.key)
            .where(
                _b.c.digest_id == digest_id,
                _b.c.status.in_((BatchStatus.PENDING, BatchStatus.LEASED)),
            )
            .exists()
        )
        with self._tx() as conn:
            done = conn.execute(
                update(s.digests)
                .where(
                    s.digests.c.id == digest_id,
                    s.digests.c.status == DigestStatus.SENDING,
                    ~still_open,
                )
                .values(status=DigestStatus.SENT, sent_at=now)
            )
        return bool(done.rowcount)

    # --- batches ---------------------------------------------------------------------------------

    def claim_batch(self, digest_id: int, owner: str, lease: timedelta) -> ClaimedBatch | None:
        sub = s.subscribers.c
        with self._tx() as conn:
            while True:
                row = conn.execute(
                    select(_b.c.key, _b.c.attempts, _b.c.first_sent_at)
                    .where(_b.c.digest_id == digest_id, _b.c.status == BatchStatus.PENDING)
                    .order_by(_b.c.seq)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                now = self._lease_now(conn)
                # Two index lookups rather than a join: planned as a join, PostgreSQL may scan
                # every subscriber to find the status of a batch's hundred.
                rows = conn.execute(
                    select(_d.c.subscriber_id, _d.c.email, _d.c.name)
                    .where(
                        _d.c.digest_id == digest_id,
                        _d.c.status == DeliveryStatus.PENDING,
                        _d.c.batch == row.key,
                    )
                    .order_by(_d.c.subscriber_id)
                ).all()
                status = (
                    dict(
                        conn.execute(
                            select(sub.id, sub.status).where(
                                sub.id.in_([r.subscriber_id for r in rows])
                            )
                        ).all()
                    )
                    if rows
                    else {}
                )
                recipients = tuple(
                    ClaimedRecipient(
                        r.subscriber_id,
                        r.email,
                        r.name,
                        # An erased subscriber has no row: treated like one who left.
                        SubscriberStatus(
                            status.get(r.subscriber_id, SubscriberStatus.UNSUBSCRIBED)
                        ),
                    )
                    for r in rows
                )
                where = and_(_b.c.digest_id == digest_id, _b.c.key == row.key)
                if not recipients:  # everyone in it was recorded already (or erased)
                    conn.execute(update(_b).where(where).values(status=BatchStatus.DONE))
                    continue
                conn.execute(
                    update(_b)
                    .where(where)
                    .values(
                        status=BatchStatus.LEASED,
                        owner=owner,
                        lease_until=now + lease,
                        attempts=_b.c.attempts + 1,
                        first_sent_at=func.coalesce(
                            _b.c.first_sent_at, literal(now, s.UTCDateTime)
                        ),
                    )
                )
                return ClaimedBatch(
                    digest_id, row.key, recipients, row.attempts + 1, row.first_sent_at or now
                )

    def record_results(
        self,
        digest_id: int,
        key: str,
        owner: str,
        results: Sequence[DeliveryResult],
        now: datetime,
        *,
        final: bool = True,
    ) -> bool:
        fence = and_(
            _b.c.digest_id == digest_id,
            _b.c.key == key,
            _b.c.owner == owner,
            _b.c.status.in_((BatchStatus.LEASED, BatchStatus.UNCERTAIN)),
        )
        with self._tx() as conn:
            held = conn.execute(
                update(_b).where(fence).values(status=BatchStatus.DONE if final else _b.c.status)
            )
            if not held.rowcount:
                return False
            if results:
                self._store_outcomes(conn, digest_id, key, results, now)
        return True

    def _store_outcomes(
        self,
        conn: Any,
        digest_id: int,
        key: str,
        results: Sequence[DeliveryResult],
        now: datetime,
    ) -> None:
        """Every recipient's outcome in one statement on PostgreSQL, the columns sent as four
        arrays (a thousand single-row UPDATEs cost a quarter of a second over the wire, and
        a thousand-row VALUES clause as long again to compile); one executemany on SQLite
        (in-process, and as fast)."""
        if self.dialect == "postgresql":
            conn.execute(
                _UPDATE_FROM_ARRAYS,
                {
                    "digest_id": digest_id,
                    "key": key,
                    "now": now,
                    "sids": [r.subscriber_id for r in results],
                    "sts": [r.status.value for r in results],
                    "mids": [r.message_id for r in results],
                    "errs": [r.error for r in results],
                },
            )
            return
        rows = [(r.subscriber_id, r.status.value, r.message_id, r.error) for r in results]
        conn.execute(
            update(_d)
            .where(
                _d.c.digest_id == digest_id,
                _d.c.batch == key,
                _d.c.subscriber_id == bindparam("sid"),
            )
            .values(
                status=bindparam("st"),
                message_id=bindparam("mid"),
                error=bindparam("err"),
                updated_at=now,
            ),
            [{"sid": sid, "st": st, "mid": mid, "err": err} for sid, st, mid, err in rows],
        )

    def release_batch(self, digest_id: int, key: str, owner: str) -> bool:
        with self._tx() as conn:
            return _leave(conn, digest_id, key, owner, BatchStatus.PENDING)

    def mark_uncertain(self, digest_id: int, key: str, owner: str) -> int:
        with self._tx() as conn:
            if not _leave(conn, digest_id, key, owner, BatchStatus.UNCERTAIN):
                return 0
            return self._deliveries_uncertain(conn, digest_id, key)

    @staticmethod
    def _deliveries_uncertain(conn: Any, digest_id: int, key: str) -> int:
        moved = conn.execute(
            update(_d)
            .where(
                _d.c.digest_id == digest_id,
                _d.c.batch == key,
                _d.c.status == DeliveryStatus.PENDING,
            )
            .values(status=DeliveryStatus.UNCERTAIN)
        )
        return int(moved.rowcount)

    def expired_leases(self, *, limit: int = 100) -> list[ExpiredLease]:
        with self._read() as conn:
            now = self._lease_now(conn)
            rows = conn.execute(
                select(_b.c.digest_id, _b.c.key, _b.c.owner, _b.c.first_sent_at)
                .where(_b.c.status == BatchStatus.LEASED, _b.c.lease_until < now)
                .order_by(_b.c.digest_id, _b.c.seq)
                .limit(limit)
            ).all()
        return [ExpiredLease(r.digest_id, r.key, r.owner, r.first_sent_at) for r in rows]

    def reclaim_lease(self, lease: ExpiredLease, *, resend: bool) -> int:
        """Returns the deliveries moved (0: someone else reclaimed it, or its node woke up)."""
        with self._tx() as conn:
            now = self._lease_now(conn)
            done = conn.execute(
                update(_b)
                .where(
                    _b.c.digest_id == lease.digest_id,
                    _b.c.key == lease.key,
                    _b.c.owner == lease.owner,
                    _b.c.status == BatchStatus.LEASED,
                    _b.c.lease_until < now,
                )
                .values(
                    status=BatchStatus.PENDING if resend else BatchStatus.UNCERTAIN,
                    owner=None if resend else lease.owner,
                    lease_until=None,
                )
            )
            if not done.rowcount:
                return 0
            if not resend:
                return self._deliveries_uncertain(conn, lease.digest_id, lease.key)
            count = select(func.count()).where(
                _d.c.digest_id == lease.digest_id,
                _d.c.batch == lease.key,
                _d.c.status == DeliveryStatus.PENDING,
            )
            return int(conn.execute(count).scalar_one())

    def resend_uncertain(self, digest_id: int) -> int:
        with self._tx() as conn:
            conn.execute(
                update(_b)
                .where(_b.c.digest_id == digest_id, _b.c.status == BatchStatus.UNCERTAIN)
                .values(status=BatchStatus.PENDING, owner=None, lease_until=None)
            )
            moved = conn.execute(
                update(_d)
                .where(_d.c.digest_id == digest_id, _d.c.status == DeliveryStatus.UNCERTAIN)
                .values(status=DeliveryStatus.PENDING)
            )
            if moved.rowcount:
                conn.execute(
                    update(s.digests)
                    .where(s.digests.c.id == digest_id)
                    .values(status=DigestStatus.SENDING, sent_at=None)
                )
        return int(moved.rowcount)

    # --- reports ---------------------------------------------------------------------------------

    def digest_counts(self, digest_id: int) -> DigestCounts:
        joined = _d.outerjoin(_b, and_(_b.c.digest_id == _d.c.digest_id, _b.c.key == _d.c.batch))
        with self._read() as conn:
            rows = conn.execute(
                select(_d.c.status, _b.c.status, func.count())
                .select_from(joined)
                .where(_d.c.digest_id == digest_id)
                .group_by(_d.c.status, _b.c.status)
            ).all()
        counts: dict[str, int] = {}
        for delivery, batch, n in rows:
            name = str(delivery)
            if delivery == DeliveryStatus.PENDING and batch == BatchStatus.LEASED:
                name = "leased"
            counts[name] = counts.get(name, 0) + int(n)
        return DigestCounts(**counts)

    def open_batches(self, digest_id: int) -> tuple[int, int]:
        with self._read() as conn:
            rows = conn.execute(
                select(_b.c.status, func.count())
                .where(
                    _b.c.digest_id == digest_id,
                    _b.c.status.in_((BatchStatus.PENDING, BatchStatus.LEASED)),
                )
                .group_by(_b.c.status)
            ).all()
        by_status = {str(status): int(n) for status, n in rows}
        return by_status.get(BatchStatus.PENDING, 0), by_status.get(BatchStatus.LEASED, 0)

    def lease_holders(self, digest_id: int) -> list[LeaseHolder]:
        joined = _b.join(_d, and_(_d.c.digest_id == _b.c.digest_id, _d.c.batch == _b.c.key))
        with self._read() as conn:
            rows = conn.execute(
                select(
                    _b.c.owner,
                    func.count(func.distinct(_b.c.key)),
                    func.count(),
                    func.max(_b.c.lease_until),
                )
                .select_from(joined)
                .where(
                    _b.c.digest_id == digest_id,
                    _b.c.status == BatchStatus.LEASED,
                    _d.c.status == DeliveryStatus.PENDING,
                )
                .group_by(_b.c.owner)
                .order_by(_b.c.owner)
            ).all()
        return [LeaseHolder(str(r[0]), int(r[1]), int(r[2]), r[3]) for r in rows]

    def pending_addresses(self, digest_id: int, *, limit: int) -> tuple[str, ...]:
        with self._read() as conn:
            rows = conn.execute(
                select(_d.c.email)
                .where(_d.c.digest_id == digest_id, _d.c.status == DeliveryStatus.PENDING)
                .order_by(_d.c.subscriber_id)
                .limit(limit)
            ).all()
        return tuple(r.email for r in rows)


def _leave(conn: Any, digest_id: int, key: str, owner: str, status: BatchStatus) -> bool:
    """Move a batch ``owner`` holds out of its lease to ``status``: pending again (nobody's),
    or uncertain (still naming its owner, who may yet record the answer it lost). False when
    ``owner`` no longer held it."""
    done = conn.execute(
        update(_b)
        .where(
            _b.c.digest_id == digest_id,
            _b.c.key == key,
            _b.c.owner == owner,
            _b.c.status == BatchStatus.LEASED,
        )
        .values(
            status=status,
            owner=owner if status == BatchStatus.UNCERTAIN else None,
            lease_until=None,
        )
    )
    return bool(done.rowcount)


def _digest(row: Any, article_ids: tuple[int, ...]) -> Digest:
    return Digest(
        id=row.id,
        uid=row.uid,
        created_at=row.created_at,
        subject=row.subject,
        preheader=row.preheader,
        html=row.html,
        text=row.text,
        article_ids=article_ids,
        status=DigestStatus(row.status),
        sent_at=row.sent_at,
        number=row.number,
        fire=row.fire,
    )
