"""Tables, column types and numbered migrations. The only module that knows the schema's shape.

A new database gets ``metadata.create_all`` and the latest version number; an existing one gets
each migration newer than its stored version, all in one transaction, at open. To change the
schema: edit the tables here *and* append a migration that brings an older database to the same
shape; never edit a migration that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC, on SQLite (naive text) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} would be stored ambiguously")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sources = Table(
    "sources",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("configured_url", Text),  # what the config says; a change resets url and validators
    Column("url", Text),  # effective URL, updated by permanent redirects
    Column("etag", Text),
    Column("last_modified", Text),
    Column("last_fetched", UTCDateTime),
    Column("last_success", UTCDateTime),
    Column("last_error", Text),
    Column("error_count", Integer, nullable=False, default=0),
    Column("warning", Text),
)

articles = Table(
    "articles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(64), nullable=False, unique=True),
    Column("source", String(200), nullable=False),
    Column("key", Text, nullable=False),
    Column("url", Text),
    Column("title", Text, nullable=False),
    Column("author", Text),
    Column("published", UTCDateTime, nullable=False),
    Column("updated", UTCDateTime, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("summary", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("tags", Text, nullable=False, default="[]"),  # JSON list
    Column("image_url", Text),
    Column("content_hash", String(64), nullable=False),
    # Found on a source's very first fetch: its back catalogue, not news to our readers.
    Column("backfill", Boolean, nullable=False, default=False),
    # The digest that accounted for the article (migration 7): it showed it, or passed it over
    # (beyond its size, outside the first digest's look-back, back catalogue). NULL: in no
    # digest yet, so the next digest considers it, whenever and by whatever clock it arrived.
    Column("covered_by", Integer, ForeignKey("digests.id")),
    UniqueConstraint("source", "key", name="uq_articles_source_key"),
)
Index("ix_articles_published", articles.c.published, articles.c.id)
Index("ix_articles_first_seen", articles.c.first_seen)
# Partial: only the articles no digest has covered yet, the few the next digest reads.
ix_articles_uncovered = Index(
    "ix_articles_uncovered",
    articles.c.id,
    postgresql_where=articles.c.covered_by.is_(None),
    sqlite_where=articles.c.covered_by.is_(None),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),  # stored lower-cased
    Column("name", Text),
    Column("status", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("unsubscribed_at", UTCDateTime),  # when they stopped receiving mail, for any reason
    # Double opt-in (migration 4): when the last confirmation mail was asked for (repeated
    # requests within a few minutes send nothing more), and when the address was confirmed.
    Column("confirm_sent_at", UTCDateTime),
    Column("confirmed_at", UTCDateTime),
    # Why a provider suppressed the address (bounced or complained), as it reported it.
    Column("status_reason", Text),
    # The confirmation mail waiting to go (migration 6): when any ``serve`` process may claim
    # it next (a claim moves it on by a lease, so a process that dies mid-send leaves it to
    # the others), on the storage's lease clock; NULL when none is waiting. And how many
    # claims this confirmation has had, which bounds its retries.
    Column("confirm_due_at", UTCDateTime),
    Column("confirm_attempts", Integer, nullable=False, server_default="0"),
)
Index("ix_subscribers_status", subscribers.c.status, subscribers.c.id)
# Partial: only the few rows with a confirmation waiting are indexed.
ix_subscribers_confirm_due = Index(
    "ix_subscribers_confirm_due",
    subscribers.c.confirm_due_at,
    postgresql_where=subscribers.c.confirm_due_at.is_not(None),
    sqlite_where=subscribers.c.confirm_due_at.is_not(None),
)

digests = Table(
    "digests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(32), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("subject", Text, nullable=False),
    Column("preheader", Text, nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("sent_at", UTCDateTime),
    # The issue number: the last digest's plus one, unique, so two nodes that both decide to
    # create the next digest cannot both succeed (migration 5).
    Column("number", Integer, nullable=False, server_default="0"),
    # The scheduled fire that created it ("digest@<fire key>"), unique: a fire creates at most
    # one digest cluster-wide, whoever runs it and however often (migration 5).
    Column("fire", String(100)),
)
Index("ux_digests_number", digests.c.number, unique=True)
Index("ux_digests_fire", digests.c.fire, unique=True)

digest_articles = Table(
    "digest_articles",
    metadata,
    Column("digest_id", Integer, ForeignKey("digests.id"), primary_key=True),
    Column("article_id", Integer, ForeignKey("articles.id"), primary_key=True),
    Column("position", Integer, nullable=False),
)
Index("ix_digest_articles_article", digest_articles.c.article_id)

deliveries = Table(
    "deliveries",
    metadata,
    Column("digest_id", Integer, ForeignKey("digests.id"), primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id"), primary_key=True),
    Column("email", String(320), nullable=False),  # frozen at digest creation
    Column("name", Text),
    Column("status", String(20), nullable=False),
    Column("message_id", Text),
    Column("error", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    # Set when the delivery is first claimed; kept when a batch goes back to pending, so a
    # re-send carries the same idempotency key (migration 2).
    Column("batch", String(64)),
)
Index(
    "ix_deliveries_status", deliveries.c.digest_id, deliveries.c.status, deliveries.c.subscriber_id
)
# claim_batch looks up pending rows by batch key (released batches first, then new ones in
# subscriber order); without this every claim scanned all pending rows (migration 3).
Index(
    "ix_deliveries_claim",
    deliveries.c.digest_id,
    deliveries.c.status,
    deliveries.c.batch,
    deliveries.c.subscriber_id,
)


# A digest's recipients are cut into batches when the digest is created; a batch is the unit
# that nodes claim, lease and record (migration 5). Its key is the idempotency key a provider
# sees, the same every time the batch is (re-)sent.
batches = Table(
    "batches",
    metadata,
    Column("digest_id", Integer, ForeignKey("digests.id"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),  # claim order: the batch's lowest subscriber id
    Column("size", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # BatchStatus
    Column("owner", String(120)),  # the node holding (or last holding) the lease
    Column("lease_until", UTCDateTime),
    Column("first_sent_at", UTCDateTime),  # first claim: a provider's idempotency window
    Column("attempts", Integer, nullable=False, server_default="0"),
)
Index("ix_batches_claim", batches.c.digest_id, batches.c.status, batches.c.seq)
Index("ix_batches_owner", batches.c.owner, batches.c.status)
Index("ix_batches_lease", batches.c.status, batches.c.lease_until)

# One row per scheduled fire of a job, keyed by the job and its fire key (the local wall time
# for a cron job with a fixed hour, else the UTC instant). The database de-duplicates fires
# across nodes: only the node whose INSERT succeeds does the work (migration 5).
runs = Table(
    "runs",
    metadata,
    Column("job", String(40), primary_key=True),
    Column("fire", String(60), primary_key=True),
    Column("scheduled_at", UTCDateTime, nullable=False),
    Column("status", String(20), nullable=False),  # RunStatus
    Column("node", String(120)),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("lease_until", UTCDateTime),  # while running: extended by the node's heartbeat
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("detail", Text),
)
Index("ix_runs_job_time", runs.c.job, runs.c.scheduled_at)

# Processes working on this database (``run``, ``send``), with their heartbeat (migration 5).
nodes = Table(
    "nodes",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("command", String(40), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)

# State that the ``serve`` processes share (migration 6), so that several behind a load
# balancer behave as one.
#
# The subscribe rate limit: one token bucket per client, kept as the time it is full again
# (GCRA's "theoretical arrival time", in epoch seconds on the storage's lease clock). A row
# whose ``full_at`` has passed is a full bucket, the same as no row, and is purged. The key is
# a SHA-256 of the client key, never the address itself. ``allowed`` is what the last request
# was answered: an upsert's RETURNING shows only the row after the update.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("full_at", Double, nullable=False),
    Column("allowed", Boolean, nullable=False),
)
Index("ix_rate_buckets_full_at", rate_buckets.c.full_at)

# Webhook tokens already accepted (Mailgun's replay check), as a SHA-256, until they expire.
webhook_tokens = Table(
    "webhook_tokens",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
)
Index("ix_webhook_tokens_expires_at", webhook_tokens.c.expires_at)

# The article pages fetched for a source's entries (full text), with their validators for the
# next conditional GET and what was extracted from them. A source's rows are replaced by the
# pages its entries refer to at each successful fetch, so they do not outlive the feed's items.
pages = Table(
    "pages",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("url", Text, primary_key=True),
    Column("fetched", UTCDateTime, nullable=False),
    Column("etag", Text),
    Column("last_modified", Text),
    # False: the page held no article (its other columns are NULL).
    Column("has_article", Boolean, nullable=False),
    Column("title", Text),
    Column("author", Text),
    Column("published", UTCDateTime),
    Column("content", Text),
    Column("image_url", Text),
    Column("image_caption", Text),
    Column("text_length", Integer),
)

# The editor's note that opens the next digest. ``pending`` is True for the one note waiting
# and NULL once a digest took it (``digest_id``): unique, so there is never a second waiting
# note, whatever the number of writers. ``origin`` names a note read from a file (its hash
# and mtime): unique, so a file read again after a crash is not taken twice.
editor_notes = Table(
    "editor_notes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("origin", String(200), unique=True),
    Column("pending", Boolean, unique=True),
    Column("digest_id", Integer, ForeignKey("digests.id")),
    # Ids never reused (SQLite would hand a deleted note's id to the next one): a digest
    # rendered with a note that was replaced since must not take its successor.
    sqlite_autoincrement=True,
)


# --- migrations ----------------------------------------------------------------------------------

Migration = Callable[[Connection], None]


def _m2_delivery_batches(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN batch VARCHAR(64)"))


def _m3_claim_index(conn: Connection) -> None:
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_deliveries_claim "
            "ON deliveries (digest_id, status, batch, subscriber_id)"
        )
    )


def _m4_subscriber_lifecycle(conn: Connection) -> None:
    when = UTCDateTime().compile(dialect=conn.dialect)
    for column, kind in (
        ("confirm_sent_at", when),
        ("confirmed_at", when),
        ("status_reason", "TEXT"),
    ):
        conn.execute(text(f"ALTER TABLE subscribers ADD COLUMN {column} {kind}"))


def _m5_nodes_and_leases(conn: Connection) -> None:
    """Digest numbers and fires, batches with leases, runs and nodes.

    Deliveries that a crash left in flight in an unfinished digest become batches leased by a
    node that is gone (the lease already expired), so the first node to look decides, as for
    any dead node, whether they are re-sent or reported uncertain; in a digest already marked
    sent they are uncertain. Pending deliveries not yet in a batch are cut into batches of 100
    (every provider accepts that many per call).
    """
    conn.execute(text("ALTER TABLE digests ADD COLUMN number INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE digests ADD COLUMN fire VARCHAR(100)"))
    conn.execute(text("UPDATE digests SET number = id"))
    for table in (batches, runs, nodes):
        table.create(conn)
    for index in digests.indexes:
        index.create(conn)
    d = deliveries.c
    gone = datetime(1970, 1, 1, tzinfo=UTC)
    for digest_id, uid, status in conn.execute(
        select(digests.c.id, digests.c.uid, digests.c.status)
    ).all():
        rows = conn.execute(
            select(d.subscriber_id, d.batch, d.status, d.updated_at)
            .where(d.digest_id == digest_id, d.status.in_(("pending", "inflight")))
            .order_by(d.subscriber_id)
        ).all()
        if not rows:
            continue
        loose = [r.subscriber_id for r in rows if r.batch is None]
        for start in range(0, len(loose), 100):
            chunk = loose[start : start + 100]
            conn.execute(
                deliveries.update()
                .where(d.digest_id == digest_id, d.subscriber_id.in_(chunk))
                .values(batch=f"nl-{uid}-{chunk[0]}")
            )
        inflight = {r.batch for r in rows if r.status == "inflight"}
        sent_digest = status == "sent"
        keyed = conn.execute(
            select(d.batch, func.min(d.subscriber_id), func.count(), func.max(d.updated_at))
            .where(d.digest_id == digest_id, d.status.in_(("pending", "inflight")))
            .group_by(d.batch)
        ).all()
        for key, seq, size, when in keyed:
            was_inflight = key in inflight
            if was_inflight and sent_digest:
                state, owner, until = "uncertain", "before-upgrade", None
            elif was_inflight:
                state, owner, until = "leased", "before-upgrade", gone
            else:
                state, owner, until = "pending", None, None
            conn.execute(
                batches.insert().values(
                    digest_id=digest_id,
                    key=key,
                    seq=seq,
                    size=size,
                    status=state,
                    owner=owner,
                    lease_until=until,
                    first_sent_at=when if was_inflight else None,
                    attempts=1 if was_inflight else 0,
                )
            )
            if was_inflight:
                conn.execute(
                    deliveries.update()
                    .where(d.digest_id == digest_id, d.batch == key, d.status == "inflight")
                    .values(status="uncertain" if sent_digest else "pending")
                )


def _m6_shared_web_state(conn: Connection) -> None:
    """The state ``serve`` kept in memory moves here: rate buckets, accepted webhook tokens,
    and the confirmation mails waiting to go (two subscriber columns). A confirmation that a
    process had queued in memory before the upgrade is not known here: the person asks again."""
    when = UTCDateTime().compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE subscribers ADD COLUMN confirm_due_at {when}"))
    conn.execute(
        text("ALTER TABLE subscribers ADD COLUMN confirm_attempts INTEGER NOT NULL DEFAULT 0")
    )
    ix_subscribers_confirm_due.create(conn)
    for table in (rate_buckets, webhook_tokens):
        table.create(conn)


def _m7_articles_covered_by(conn: Connection) -> None:
    """Which digest accounted for each article. Digest selection was "in no digest and first
    seen after the last digest was created", so an article gathered under a slow clock was
    never in any digest. Existing articles keep what that rule gave them: an article a digest
    showed is covered by the first that did; one first seen no later than some digest was
    created (passed over by it) is covered by the first such digest; the rest are uncovered
    and go to the next digest, as before."""
    # Idempotent: a database whose version was set back by hand (as older migrations' tests
    # do) has the column and its values already.
    if "covered_by" not in {c["name"] for c in inspect(conn).get_columns("articles")}:
        conn.execute(
            text("ALTER TABLE articles ADD COLUMN covered_by INTEGER REFERENCES digests(id)")
        )
        a, d, da = articles.c, digests.c, digest_articles.c
        shown = select(func.min(da.digest_id)).where(da.article_id == a.id).scalar_subquery()
        passed = select(func.min(d.id)).where(d.created_at >= a.first_seen).scalar_subquery()
        conn.execute(articles.update().values(covered_by=func.coalesce(shown, passed)))
    ix_articles_uncovered.create(conn, checkfirst=True)


def _m8_page_cache(conn: Connection) -> None:
    """The full-text page cache: a new table, empty (the next fetch fills it)."""
    pages.create(conn, checkfirst=True)


def _m9_editor_notes(conn: Connection) -> None:
    """The editor's note (``newsletter note``, ``[digest] note_file``), taken by one digest."""
    editor_notes.create(conn, checkfirst=True)


# MIGRATIONS[n] brings a database from version n + 1 to n + 2; version 1 is create_all above.
MIGRATIONS: list[Migration] = [
    _m2_delivery_batches,
    _m3_claim_index,
    _m4_subscriber_lifecycle,
    _m5_nodes_and_leases,
    _m6_shared_web_state,
    _m7_articles_covered_by,
    _m8_page_cache,
    _m9_editor_notes,
]
VERSION = 1 + len(MIGRATIONS)


# pg_advisory_xact_lock key for migrations: any number of nodes may start at once on an empty
# database; the first creates the schema, the others wait for its commit and find it there.
MIGRATION_LOCK = 0x6E6C5F6D6967  # "nl_mig"


def current_version(conn: Connection) -> int:
    """The stored schema version; 0 for an empty database. Only reads."""
    if not inspect(conn).has_table(meta.name):
        return 0
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return 0 if row is None else int(row.value)


def migrate(conn: Connection) -> tuple[int, int]:
    """Bring the schema up to ``VERSION`` inside the caller's transaction. Returns (from, to).

    Serialized across processes: on PostgreSQL by a transaction-scoped advisory lock, on
    SQLite by the ``BEGIN IMMEDIATE`` every transaction of ours starts with.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    meta.create(conn, checkfirst=True)
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    if row is None:
        metadata.create_all(conn)
        conn.execute(meta.insert().values(key="schema_version", value=str(VERSION)))
        return 0, VERSION
    current = int(row.value)
    if current > VERSION:
        raise RuntimeError(
            f"the database is at schema version {current}, newer than this program's {VERSION}; "
            "upgrade newsletter"
        )
    for version in range(current, VERSION):
        MIGRATIONS[version - 1](conn)
    if current != VERSION:
        conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(VERSION)))
    return current, VERSION
