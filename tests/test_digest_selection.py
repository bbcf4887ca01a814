"""Digest selection without the wall clock (issue 9, item 5): a digest takes the articles no
digest has covered yet, whenever and by whatever clock they were gathered.

The storage contract runs on SQLite and a real PostgreSQL (``db_url`` from the contract
suite); the end-to-end test gathers with the clock seam set a day behind.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, MetaData, Table, UniqueConstraint, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateTable

from newsletter import rules
from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.gather import store_articles
from newsletter.storage import SqlStorage, schema
from newsletter.types import ArticleData
from tests._factories import make_article
from tests._project import add_article
from tests.test_storage_contract import NOW, db_url, storage

__all__ = ["db_url", "storage"]  # the contract suite's fixtures, used here too


def article(key: str, published: datetime) -> ArticleData:
    return ArticleData(
        source="S",
        key=key,
        title=f"Title {key}",
        url=f"https://example.com/{key}",
        author=None,
        published=published,
        updated=None,
        summary="<p>s</p>",
        content="<p>c</p>",
    )


def gathered(storage: SqlStorage, key: str, now: datetime) -> int:
    """Store one article as a gather at ``now`` would; its id."""
    storage.sync_source("S", None)
    assert store_articles(storage, "S", [article(key, now - timedelta(hours=1))], now)[0] == 1
    found = storage.stored_articles("S", [key])
    return found[key].id


def digest(storage: SqlStorage, number: int, shown: list[int], covered: list[int]) -> bool:
    return storage.create_digest(
        number=number,
        uid=f"sel{number}",
        subject="s",
        preheader="p",
        html="<p>h</p>",
        text="t",
        article_ids=shown,
        covered_ids=covered,
        now=NOW,
        batch_size=10,
    )[1]


def uncovered(storage: SqlStorage) -> list[int]:
    return [a.id for a in storage.undigested_articles()]


def test_a_digest_covers_every_candidate_shown_or_not() -> None:
    fresh = [make_article(i, id=i, published=NOW - timedelta(hours=i)) for i in (1, 2, 3)]
    old = make_article(4, id=4, published=NOW - timedelta(days=30))
    choice = rules.choose_digest_articles(
        [old, *fresh], first=True, lookback_start=NOW - timedelta(days=1), max_items=2
    )
    assert [a.id for a in choice.articles] == [1, 2] and choice.more == 1
    assert choice.covered == (1, 2, 3, 4)  # what did not fit, and the old one, are done with


def test_the_next_digest_takes_what_no_digest_covered_whenever_it_was_gathered(
    storage: SqlStorage,
) -> None:
    a1, a2, a3 = (gathered(storage, k, NOW - timedelta(hours=2)) for k in ("a1", "a2", "a3"))
    assert uncovered(storage) == [a1, a2, a3]
    assert digest(storage, 1, shown=[a1], covered=[a1, a2])
    assert uncovered(storage) == [a3]
    # Gathered after digest 1 by a clock a day behind: first seen "before" it, still new.
    late = gathered(storage, "late", NOW - timedelta(days=1))
    assert uncovered(storage) == [a3, late]
    # A node that lost the race for number 2 covers nothing.
    assert digest(storage, 2, shown=[a3, late], covered=[a3, late])
    assert not digest(storage, 2, shown=[a1], covered=[a1, a2, a3, late])
    assert uncovered(storage) == []
    d1, d2 = storage.list_digests()[::-1]
    assert (d1.article_ids, d2.article_ids) == ((a1,), (a3, late))


def test_migration_7_keeps_what_the_old_watermark_gave(db_url: str, storage: SqlStorage) -> None:
    before = gathered(storage, "before", NOW - timedelta(hours=3))
    shown = gathered(storage, "shown", NOW - timedelta(hours=3))
    assert digest(storage, 1, shown=[shown], covered=[])  # created at NOW
    after = gathered(storage, "after", NOW + timedelta(hours=1))
    back_to_version_6(storage)
    upgraded = SqlStorage(db_url)
    try:
        with upgraded.engine.connect() as conn:
            rows = dict(
                conn.execute(select(schema.articles.c.id, schema.articles.c.covered_by)).all()
            )
            version = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).scalar_one()
        assert int(version) == schema.VERSION
        d1 = upgraded.list_digests()[0].id
        # Shown by digest 1; first seen before it (the old watermark left it out); after it.
        assert rows == {before: d1, shown: d1, after: None}
        assert uncovered(upgraded) == [after]
    finally:
        upgraded.close()


def back_to_version_6(storage: SqlStorage) -> None:
    """Make the database what version 6 left: no ``covered_by`` (nor its index). Closes
    ``storage``. SQLite cannot drop a column named in a foreign key: the table is rebuilt
    without it, as SQLite's documented way to alter a table goes."""
    dialect = storage.dialect
    if dialect == "postgresql":
        with storage.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_articles_uncovered"))
            conn.execute(text("ALTER TABLE articles DROP COLUMN covered_by"))
            conn.execute(text("UPDATE meta SET value = '6' WHERE key = 'schema_version'"))
        storage.close()
        return
    database = storage.engine.url.database
    assert database is not None
    storage.close()
    old = MetaData()
    kept = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in schema.articles.columns
        if c.name != "covered_by"
    ]
    v6 = Table("articles_v6", old, *kept, UniqueConstraint("source", "key"))
    ddl = str(CreateTable(v6).compile(dialect=sqlite.dialect()))
    names = ", ".join(c.name for c in kept)
    conn = sqlite3.connect(database, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.executescript(
            f"BEGIN; {ddl}; INSERT INTO articles_v6 ({names}) SELECT {names} FROM articles; "
            "DROP TABLE articles; ALTER TABLE articles_v6 RENAME TO articles; "
            "UPDATE meta SET value = '6' WHERE key = 'schema_version'; COMMIT;"
        )
    finally:
        conn.close()


def test_articles_gathered_under_a_slow_clock_go_into_the_next_digest_once(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    config = example_project
    start = fixed_clock[0]
    with make_publisher(load_config(config)) as publisher:
        publisher.gather()
        publisher.add_subscriber("reader@example.com")
        first = publisher.send_digest()
        assert first.created and first.sent == 1

        # The clock is a day behind while the next article is gathered.
        fixed_clock[0] = start - timedelta(days=1)
        add_article(config, "late", "Gathered Late", fixed_clock[0] - timedelta(hours=1))
        results = publisher.gather()
        assert sum(r.new for r in results) == 1

        fixed_clock[0] = start + timedelta(hours=2)  # the clock is right again
        second = publisher.send_digest()
        assert second.created and second.sent == 1
        third = publisher.send_digest()
        assert third.digest_id is None  # nothing new: the late article is not offered again

        digests = publisher.storage.list_digests()
        assert len(digests) == 2
        titles = {
            d.number: [a.title for a in publisher.storage.articles_by_id(d.article_ids)]
            for d in digests
        }
        assert titles[2] == ["Gathered Late"]
        # No article is in two digests.
        counts = Counter(i for d in digests for i in d.article_ids)
        assert counts and max(counts.values()) == 1
        assert publisher.storage.undigested_articles() == []
