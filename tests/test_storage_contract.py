"""One contract suite for ``Storage``, run against SQLite and a real PostgreSQL.

What the core relies on when several nodes share one database: digests created once, batches
leased to one node at a time and fenced, dead nodes' leases taken back once, fires claimed
once, upserts that never fail on a race, migrations any number of processes may start at
once. Concurrency is real (threads with their own connections, or processes), never faked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from sqlalchemy import select

from newsletter.exceptions import StorageError
from newsletter.gather import store_articles
from newsletter.storage import SqlStorage, schema
from newsletter.types import (
    ArticleData,
    CachedPage,
    ClaimedRecipient,
    DeliveryResult,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Extracted,
    FetchResult,
    RunStatus,
    SubscriberStatus,
)

if TYPE_CHECKING:
    from tests._postgres import PostgresServer

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def storage(db_url: str) -> Iterator[SqlStorage]:
    s = SqlStorage(db_url)
    yield s
    s.close()


def race(db_url: str, workers: int, work: Callable[[SqlStorage, int], T]) -> list[T]:
    """``work(storage, i)`` in ``workers`` threads released together, each with a storage
    (connections) of its own, as separate processes would have. Returns their results; an
    exception in any thread fails the test (and releases the others: none waits forever)."""
    barrier = threading.Barrier(workers, timeout=60)
    results: list[T] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        own: SqlStorage | None = None
        try:
            own = SqlStorage(db_url)
            barrier.wait()
            results.append(work(own, i))
        except BaseException as e:
            barrier.abort()
            errors.append(e)
        finally:
            if own is not None:
                own.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    assert len(results) == workers, "a worker did not finish"
    return results


def _subscribers(storage: SqlStorage, n: int) -> None:
    storage.add_subscribers(((f"r{i:05d}@example.com", None) for i in range(n)), NOW)


def _digest(
    storage: SqlStorage, *, number: int = 1, batch: int = 10, fire: str | None = None
) -> tuple[Digest, bool]:
    return storage.create_digest(
        number=number,
        uid=f"uid{number}{fire or ''}"[:32],
        subject="s",
        preheader="p",
        html="<p>h</p>",
        text="t",
        article_ids=[],
        now=NOW,
        batch_size=batch,
        fire=fire,
    )


def _sent(recipients: Sequence[ClaimedRecipient]) -> list[DeliveryResult]:
    return [
        DeliveryResult(r.subscriber_id, r.email, DeliveryStatus.SENT, message_id="m")
        for r in recipients
    ]


# --- digests -------------------------------------------------------------------------------------


def test_a_digest_freezes_its_recipients_in_batches_in_subscriber_order(
    storage: SqlStorage,
) -> None:
    _subscribers(storage, 25)
    storage.unsubscribe("r00003@example.com", NOW)
    digest, created = _digest(storage, batch=10)
    assert created and digest.number == 1 and digest.status == DigestStatus.SENDING
    counts = storage.digest_counts(digest.id)
    assert counts.pending == 24 and counts.total == 24
    first = storage.claim_batch(digest.id, "node-a", LEASE)
    assert first is not None and first.key == f"nl-{digest.uid}-0" and first.attempts == 1
    assert [r.email for r in first.recipients][:3] == [
        "r00000@example.com",
        "r00001@example.com",
        "r00002@example.com",
    ]
    assert len(first.recipients) == 10
    sizes = [len(first.recipients)]
    while (b := storage.claim_batch(digest.id, "node-a", LEASE)) is not None:
        sizes.append(len(b.recipients))
    assert sizes == [10, 10, 4]


def test_the_same_number_or_fire_is_created_once_and_the_loser_gets_the_winner(
    storage: SqlStorage,
) -> None:
    _subscribers(storage, 3)
    one, created = _digest(storage, number=1, fire="digest@2026-11-29T07:00")
    assert created
    again, created = _digest(storage, number=2, fire="digest@2026-11-29T07:00")
    assert not created and again.id == one.id  # same fire, whatever number it asked for
    same_number, created = storage.create_digest(
        number=1,
        uid="otheruid",
        subject="x",
        preheader="x",
        html="x",
        text="x",
        article_ids=[],
        now=NOW,
        batch_size=10,
    )
    assert not created and same_number.id == one.id
    assert storage.digest_for_fire("digest@2026-11-29T07:00") == one
    assert storage.digest_counts(one.id).total == 3  # the losers froze no recipients


def test_racing_creators_make_one_digest(db_url: str, storage: SqlStorage) -> None:
    _subscribers(storage, 50)

    def create(own: SqlStorage, i: int) -> tuple[int, bool]:
        digest, created = own.create_digest(
            number=1,
            uid=f"racer{i}",
            subject="s",
            preheader="p",
            html="h",
            text="t",
            article_ids=[],
            now=NOW,
            batch_size=10,
        )
        return digest.id, created

    results = race(db_url, 6, create)
    assert len({digest_id for digest_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(storage.list_digests()) == 1
    assert storage.digest_counts(results[0][0]).total == 50


# --- batches, leases, fences ---------------------------------------------------------------------


def test_a_lost_lease_fences_the_old_holder_out(storage: SqlStorage) -> None:
    _subscribers(storage, 5)
    digest, _ = _digest(storage, batch=5)
    batch = storage.claim_batch(digest.id, "node-a", timedelta(seconds=1))
    assert batch is not None
    assert storage.claim_batch(digest.id, "node-b", LEASE) is None  # nothing else pending
    assert storage.open_batches(digest.id) == (0, 1)
    assert storage.digest_counts(digest.id).leased == 5
    (holder,) = storage.lease_holders(digest.id)
    assert (holder.node, holder.batches, holder.recipients) == ("node-a", 1, 5)
    assert not storage.record_results(digest.id, batch.key, "node-b", _sent(batch.recipients), NOW)
    time.sleep(1.2)
    (lease,) = storage.expired_leases()
    assert (lease.key, lease.owner) == (batch.key, "node-a")
    assert storage.reclaim_lease(lease, resend=True) == 5
    assert storage.reclaim_lease(lease, resend=True) == 0  # once only
    assert storage.open_batches(digest.id) == (1, 0)
    again = storage.claim_batch(digest.id, "node-b", LEASE)
    assert again is not None and again.key == batch.key and again.attempts == 2
    # node-a wakes up with its answer: refused, node-b holds the batch now.
    assert not storage.record_results(digest.id, batch.key, "node-a", _sent(batch.recipients), NOW)
    assert storage.record_results(digest.id, batch.key, "node-b", _sent(again.recipients), NOW)
    assert storage.digest_counts(digest.id).sent == 5
    assert storage.open_batches(digest.id) == (0, 0)
    assert storage.finish_digest(digest.id, NOW)
    assert not storage.finish_digest(digest.id, NOW)


def test_a_heartbeat_keeps_a_lease_and_expire_leases_gives_it_up(storage: SqlStorage) -> None:
    _subscribers(storage, 4)
    digest, _ = _digest(storage, batch=2)
    first = storage.claim_batch(digest.id, "node-a", timedelta(seconds=1))
    assert first is not None
    for _ in range(3):
        time.sleep(0.5)
        assert storage.heartbeat("node-a", timedelta(seconds=1), NOW) == 1
    assert storage.expired_leases() == []
    assert storage.expire_leases("node-a") == 1
    assert [lease.key for lease in storage.expired_leases()] == [first.key]


def test_uncertain_batches_wait_for_resend_uncertain_and_do_not_hold_the_digest(
    storage: SqlStorage,
) -> None:
    _subscribers(storage, 6)
    digest, _ = _digest(storage, batch=3)
    a = storage.claim_batch(digest.id, "node-a", LEASE)
    b = storage.claim_batch(digest.id, "node-a", LEASE)
    assert a is not None and b is not None
    assert storage.mark_uncertain(digest.id, a.key, "node-a") == 3
    assert not storage.finish_digest(digest.id, NOW)  # b is still leased
    assert storage.release_batch(digest.id, b.key, "node-a")
    assert not storage.release_batch(digest.id, b.key, "node-a")
    b2 = storage.claim_batch(digest.id, "node-c", LEASE)
    assert b2 is not None and b2.key == b.key
    assert storage.record_results(digest.id, b.key, "node-c", _sent(b2.recipients), NOW)
    assert storage.finish_digest(digest.id, NOW)
    counts = storage.digest_counts(digest.id)
    assert (counts.sent, counts.uncertain, counts.open) == (3, 3, 0)
    assert storage.uncertain_digest() is not None
    # The node that lost the answer may still record it while the batch is uncertain.
    assert storage.record_results(digest.id, a.key, "node-a", _sent(a.recipients), NOW)
    assert storage.digest_counts(digest.id).uncertain == 0
    assert storage.uncertain_digest() is None


def test_resend_uncertain_reopens_the_digest(storage: SqlStorage) -> None:
    _subscribers(storage, 3)
    digest, _ = _digest(storage, batch=3)
    a = storage.claim_batch(digest.id, "node-a", LEASE)
    assert a is not None
    storage.mark_uncertain(digest.id, a.key, "node-a")
    assert storage.finish_digest(digest.id, NOW)
    assert storage.resend_uncertain(digest.id) == 3
    reopened = storage.get_digest(digest.id)
    assert reopened is not None and reopened.status == DigestStatus.SENDING
    again = storage.claim_batch(digest.id, "node-b", LEASE)
    assert again is not None and again.key == a.key and len(again.recipients) == 3


def test_outcomes_are_stored_per_recipient(storage: SqlStorage) -> None:
    _subscribers(storage, 4)
    digest, _ = _digest(storage, batch=4)
    batch = storage.claim_batch(digest.id, "node-a", LEASE)
    assert batch is not None
    a, b, c, d = batch.recipients
    skipped = [DeliveryResult(d.subscriber_id, d.email, DeliveryStatus.SKIPPED)]
    assert storage.record_results(digest.id, batch.key, "node-a", skipped, NOW, final=False)
    results = [
        DeliveryResult(a.subscriber_id, a.email, DeliveryStatus.SENT, message_id="<m1@x>"),
        DeliveryResult(b.subscriber_id, b.email, DeliveryStatus.FAILED, error="refused: 550"),
        DeliveryResult(c.subscriber_id, c.email, DeliveryStatus.SENT),
    ]
    assert storage.record_results(digest.id, batch.key, "node-a", results, NOW)
    counts = storage.digest_counts(digest.id)
    assert (counts.sent, counts.failed, counts.skipped, counts.open) == (2, 1, 1, 0)
    d_ = schema.deliveries.c
    with storage.engine.connect() as conn:
        rows = conn.execute(
            select(d_.email, d_.status, d_.message_id, d_.error).order_by(d_.subscriber_id)
        ).all()
    assert [tuple(r) for r in rows] == [
        (a.email, "sent", "<m1@x>", None),
        (b.email, "failed", None, "refused: 550"),
        (c.email, "sent", None, None),
        (d.email, "skipped", None, None),
    ]
    # Only None in a column (no message ids at all) is stored too.
    _subscribers(storage, 6)
    second, _ = _digest(storage, number=2, batch=10)
    batch = storage.claim_batch(second.id, "node-a", LEASE)
    assert batch is not None
    failed = [
        DeliveryResult(r.subscriber_id, r.email, DeliveryStatus.FAILED, error="x")
        for r in batch.recipients
    ]
    assert storage.record_results(second.id, batch.key, "node-a", failed, NOW)
    assert storage.digest_counts(second.id).failed == 6


def test_a_claim_reports_who_left_since(storage: SqlStorage) -> None:
    _subscribers(storage, 3)
    digest, _ = _digest(storage, batch=3)
    storage.suppress("r00001@example.com", SubscriberStatus.BOUNCED, "gone", NOW)
    batch = storage.claim_batch(digest.id, "node-a", LEASE)
    assert batch is not None
    assert [r.status for r in batch.recipients] == [
        SubscriberStatus.ACTIVE,
        SubscriberStatus.BOUNCED,
        SubscriberStatus.ACTIVE,
    ]


def test_concurrent_claims_take_every_batch_exactly_once(db_url: str, storage: SqlStorage) -> None:
    n, size = 3000, 25
    _subscribers(storage, n)
    digest, _ = _digest(storage, batch=size)

    def work(own: SqlStorage, i: int) -> list[tuple[str, list[int]]]:
        taken = []
        while (b := own.claim_batch(digest.id, f"node-{i}", LEASE)) is not None:
            assert own.record_results(digest.id, b.key, f"node-{i}", _sent(b.recipients), NOW)
            taken.append((b.key, [r.subscriber_id for r in b.recipients]))
        return taken

    taken = [batch for node in race(db_url, 6, work) for batch in node]
    keys = [key for key, _ in taken]
    recipients = [sid for _, ids in taken for sid in ids]
    assert len(keys) == n // size and len(set(keys)) == len(keys)
    assert len(recipients) == n and len(set(recipients)) == n
    assert storage.digest_counts(digest.id).sent == n


# --- runs ----------------------------------------------------------------------------------------


def test_a_fire_is_claimed_once_and_taken_over_only_after_its_lease(storage: SqlStorage) -> None:
    at = NOW
    assert storage.claim_run("digest", "2026-11-29T07:00", at, "node-a", timedelta(seconds=1), NOW)
    assert not storage.claim_run("digest", "2026-11-29T07:00", at, "node-b", LEASE, NOW)
    assert not storage.take_over_run("digest", "2026-11-29T07:00", "node-b", LEASE, NOW)
    time.sleep(1.2)
    assert [r.fire for r in storage.stale_runs()] == ["2026-11-29T07:00"]
    assert storage.take_over_run("digest", "2026-11-29T07:00", "node-b", LEASE, NOW)
    assert not storage.finish_run("digest", "2026-11-29T07:00", "node-a", RunStatus.DONE, NOW)
    assert storage.finish_run("digest", "2026-11-29T07:00", "node-b", RunStatus.DONE, NOW)
    assert not storage.record_fire("digest", "2026-11-29T07:00", at, RunStatus.MISSED, NOW)
    assert storage.record_fire("digest", "2026-11-30T07:00", at, RunStatus.MISSED, NOW)
    runs = storage.runs_of("digest", ["2026-11-29T07:00", "2026-11-30T07:00", "nope"])
    assert {k: r.status for k, r in runs.items()} == {
        "2026-11-29T07:00": RunStatus.DONE,
        "2026-11-30T07:00": RunStatus.MISSED,
    }


def test_racing_fire_claims_have_one_winner(db_url: str) -> None:
    wins = race(
        db_url, 8, lambda own, i: own.claim_run("gather", "k", NOW, f"node-{i}", LEASE, NOW)
    )
    assert Counter(wins) == Counter({True: 1, False: 7})


# --- gathering, subscribers, meta ----------------------------------------------------------------


def test_two_nodes_storing_the_same_new_article_store_it_once(
    db_url: str, storage: SqlStorage
) -> None:
    storage.sync_source("S", None)
    article = ArticleData(
        source="S",
        key="https://example.com/1",
        title="One",
        url="https://example.com/1",
        author=None,
        published=NOW - timedelta(hours=1),
        updated=None,
        summary="<p>s</p>",
        content="<p>c</p>",
    )
    counts = race(db_url, 4, lambda own, i: store_articles(own, "S", [article], NOW))
    assert sum(new for new, _, _ in counts) == 1  # and nobody failed
    assert storage.count_articles() == 1


def test_adding_the_same_address_at_once_stores_it_once(db_url: str, storage: SqlStorage) -> None:
    created = race(db_url, 5, lambda own, i: own.add_subscriber("same@example.com", None, NOW)[1])
    assert Counter(created) == Counter({True: 1, False: 4})
    assert storage.count_subscribers() == 1


def test_a_kept_value_is_created_once(db_url: str) -> None:
    values = race(db_url, 5, lambda own, i: own.get_or_create_meta("secret", lambda: f"v{i}"))
    assert len(set(values)) == 1 and len(values) == 5


def test_reading_a_kept_value_never_creates_it(storage: SqlStorage) -> None:
    # The secret kept in the database is an old key once one is set: reading it must not
    # make one up where none ever signed a link.
    assert storage.get_meta("secret") is None
    assert storage.get_meta("secret") is None
    assert storage.get_or_create_meta("secret", lambda: "kept") == "kept"
    assert storage.get_meta("secret") == "kept"


# --- opening -------------------------------------------------------------------------------------


def test_many_processes_may_open_an_empty_database_at_once(db_url: str, tmp_path: Path) -> None:
    code = (
        "import sys; from newsletter.storage import open_storage; "
        "s = open_storage(sys.argv[1]); s.ping(); s.close(); print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == "ok"


def test_a_bad_url_is_one_clear_error() -> None:
    with pytest.raises(StorageError, match=r"cannot open database .*: not a database URL"):
        SqlStorage("no-such-scheme")
    with pytest.raises(StorageError, match="'mysql\\+nosuchdriver' is not a kind of database"):
        SqlStorage("mysql+nosuchdriver://u@localhost/db")


@pytest.mark.parametrize("url", ["postgresql://u@127.0.0.1:1/db", "postgres://u@127.0.0.1:1/db"])
def test_without_the_postgres_extra_the_error_says_what_to_install(
    url: str, example_project: Path
) -> None:
    text = example_project.read_text()
    start = text.index("[storage]")
    end = text.find("\n[", start + 1)
    example_project.write_text(
        text[:start] + f'[storage]\nurl = "{url}"\n' + (text[end:] if end != -1 else "")
    )
    # A Python where psycopg cannot be imported, as on an install without the extra.
    code = (
        "import sys; sys.modules['psycopg'] = None; from newsletter.cli import main; "
        "sys.argv = ['newsletter', '--config', sys.argv[1], 'status']; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    child = subprocess.run(
        [sys.executable, "-c", code, str(example_project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert child.returncode == 1
    assert child.stderr.strip().splitlines() == [
        "error: cannot open database postgresql+psycopg://u@127.0.0.1:1/db: install the "
        "PostgreSQL driver: pip install 'newsletter[postgres]' (psycopg 3)"
    ]


def test_a_database_that_refuses_the_connection_is_named_with_the_drivers_reason(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.base_url.set(database="no_such_db").render_as_string(hide_password=False)
    with pytest.raises(StorageError) as info:
        SqlStorage(url)
    message = str(info.value)
    assert message.startswith("cannot open database postgresql+psycopg://")
    assert 'database "no_such_db" does not exist' in message
    assert "Background on this error" not in message and "\n" not in message


def test_page_cache_is_replaced_per_source(storage: SqlStorage) -> None:
    """The full-text page cache: a fetch's pages replace the source's, other sources keep theirs."""
    page = CachedPage(
        url="https://news.example/a",
        fetched=datetime(2026, 3, 14, 9, 0, tzinfo=UTC),
        etag='"e1"',
        last_modified="Sat, 14 Mar 2026 09:00:00 GMT",
        article=Extracted(
            title="T",
            author="A",
            published=datetime(2026, 3, 14, 8, 30, tzinfo=UTC),
            content_html="<p>Body</p>",
            image_url="https://news.example/i.jpg",
            image_caption="Caption",
            text_length=4,
        ),
    )
    empty = CachedPage(url="https://news.example/b", fetched=page.fetched)
    now = page.fetched
    for name in ("one", "two"):
        storage.sync_source(name, "https://news.example/feed")
        storage.store_fetch(name, FetchResult(pages=(page, empty)), [], now, backfill=False)
    assert storage.cached_pages("one") == {page.url: page, empty.url: empty}
    # A fetch that returned other pages replaces the source's set; None leaves it alone.
    storage.store_fetch("one", FetchResult(pages=(empty,)), [], now, backfill=False)
    storage.store_fetch("one", FetchResult(), [], now, backfill=False)
    assert storage.cached_pages("one") == {empty.url: empty}
    assert storage.cached_pages("two") == {page.url: page, empty.url: empty}
    assert storage.cached_pages("three") == {}


def test_a_pending_import_marks_confirmations_due_and_changes_nobody_known(
    storage: SqlStorage,
) -> None:
    storage.add_subscriber("left@example.com", "Left", NOW)
    storage.unsubscribe("left@example.com", NOW)
    rows = [("New@Example.com", "New"), ("left@example.com", None), ("two@example.com", None)]
    assert storage.add_subscribers(rows, NOW, pending=True) == (2, 1)
    assert storage.known_emails(["NEW@example.com", "left@example.com", "x@example.com"]) == {
        "new@example.com",
        "left@example.com",
    }
    by_email = {s.email: s.status for s in storage.iter_subscribers()}
    assert by_email == {
        "left@example.com": SubscriberStatus.UNSUBSCRIBED,
        "new@example.com": SubscriberStatus.PENDING,
        "two@example.com": SubscriberStatus.PENDING,
    }
    claims = storage.claim_confirmations(limit=10, lease=LEASE)
    assert sorted(c.subscriber.email for c in claims) == ["new@example.com", "two@example.com"]
