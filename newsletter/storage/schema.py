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
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
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
    UniqueConstraint("source", "key", name="uq_articles_source_key"),
)
Index("ix_articles_published", articles.c.published, articles.c.id)
Index("ix_articles_first_seen", articles.c.first_seen)

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
)
Index("ix_subscribers_status", subscribers.c.status, subscribers.c.id)

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
)

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


# MIGRATIONS[n] brings a database from version n + 1 to n + 2; version 1 is create_all above.
MIGRATIONS: list[Migration] = [_m2_delivery_batches, _m3_claim_index, _m4_subscriber_lifecycle]
VERSION = 1 + len(MIGRATIONS)


def migrate(conn: Connection) -> tuple[int, int]:
    """Bring the schema up to ``VERSION`` inside the caller's transaction. Returns (from, to)."""
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
