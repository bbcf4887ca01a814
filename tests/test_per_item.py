"""``[digest] mode = "per_item"``: one mail per new article, the rss2email/Buttondown way.

Each mail is a digest of its own, so the digests' guarantees hold for it: a real SQLite file
or PostgreSQL, the Resend emulator on loopback (it drops a re-sent batch whose
Idempotency-Key it has seen), real `newsletter` processes killed with SIGKILL or racing on
one database. Messages are counted where they arrive, per (recipient, subject).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter import rules
from newsletter.config import load_config
from newsletter.core import DigestPlan, Publisher, make_publisher
from newsletter.exceptions import ConfigError, RenderError
from newsletter.render.digest import DigestRenderer
from newsletter.scheduler import NodeScheduler
from newsletter.storage import schema
from newsletter.types import Article
from tests._project import add_article, command, set_table, use_database, use_emulator
from tests.emulators import TOKEN, ResendEmulator

READERS = ("ada@example.com", "grace@example.org")
SENT_LINE = re.compile(r"digest \d+ (?:created and )?delivered \(\d+ articles\): (\d+) sent")

CONFIG = """\
[newsletter]
title = "Item Post"
site_url = "https://news.example.org/"
sender = "Item Post <post@news.example.org>"
postal_address = "Item Post, 42 Sample Road, 10115 Berlin, Germany"
timezone = "UTC"

[[sources]]
name = "Editorial"
kind = "folder"
path = "articles"

[schedule]
lease_seconds = 2

[digest]
mode = "per_item"

[storage]
path = "newsletter.db"
"""


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[ResendEmulator]:
    """Resend on loopback, with the token and secret in the environment, as a node has them."""
    for name, value in (("MAIL_TOKEN", TOKEN), ("NEWSLETTER_SECRET", "per-item-secret")):
        monkeypatch.setenv(name, value)
    server = ResendEmulator()
    yield server
    server.close()
    assert server.problems == []


@pytest.fixture
def config(tmp_path: Path, emulator: ResendEmulator) -> Path:
    path = tmp_path / "project" / "newsletter.toml"
    (path.parent / "articles").mkdir(parents=True)
    path.write_text(CONFIG)
    use_emulator(path, emulator, batch_size=50)
    return path


def write_articles(config: Path, count: int, *, start: int = 0) -> list[str]:
    """``count`` articles published a minute apart, the last one a minute ago. Titles, oldest
    first."""
    now = datetime.now(UTC).replace(microsecond=0)
    titles = []
    for i in range(start, start + count):
        title = f"Story number {i:02d}"
        add_article(config, f"story-{i:02d}", title, now - timedelta(minutes=count + start - i))
        titles.append(title)
    return titles


def open_publisher(config: Path, readers: tuple[str, ...] = READERS) -> Publisher:
    publisher = make_publisher(load_config(config))
    for address in readers:
        publisher.add_subscriber(address)
    return publisher


def gathered(
    config: Path, count: int, *, start: int = 0, readers: tuple[str, ...] = READERS
) -> tuple[list[str], Publisher]:
    """``count`` new articles gathered by a publisher with ``readers`` subscribed."""
    titles = write_articles(config, count, start=start)
    publisher = open_publisher(config, readers)
    publisher.gather()
    return titles, publisher


def received(emulator: ResendEmulator) -> Counter[tuple[str, str]]:
    return Counter((d.to, d.subject) for d in emulator.deliveries)


# --- the rule ------------------------------------------------------------------------------------


def _article(i: int, published: datetime, *, backfill: bool = False) -> Article:
    return Article(
        id=i,
        uid=f"u{i}",
        key=f"k{i}",
        source="s",
        title=f"t{i}",
        url=f"https://example.org/{i}",
        author=None,
        published=published,
        updated=published,
        first_seen=published,
        summary="",
        content="",
        backfill=backfill,
    )


def test_the_newest_go_alone_and_the_rest_is_rolled_up_first() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    pool = [_article(i, now - timedelta(minutes=20 - i)) for i in range(12)]
    old = _article(99, now - timedelta(days=30))  # outside the first mail's look-back
    args = {"lookback_start": now - timedelta(hours=24), "per_item_max": 5, "max_items": 30}
    mail = rules.next_item_mail([*pool, old], first=True, **args)
    assert mail is not None and not mail.single
    # The 7 oldest, newest first as in any digest; the article outside the look-back is
    # covered (never offered again), not shown.
    assert [a.id for a in mail.choice.articles] == [6, 5, 4, 3, 2, 1, 0]
    assert mail.choice.covered == (0, 1, 2, 3, 4, 5, 6, 99)
    left = pool[7:]
    singles = []
    while left:
        mail = rules.next_item_mail(left, first=False, **args)
        assert mail is not None and mail.single
        singles.append(mail.choice.articles[0].id)
        assert mail.choice.covered == (singles[-1],)
        left = [a for a in left if a.id != singles[-1]]
    assert singles == [7, 8, 9, 10, 11]  # oldest first: the inbox ends with the newest on top
    assert rules.next_item_mail([], first=False, **args) is None
    assert rules.next_item_mail([old], first=True, **args) is None


def test_mode_and_limits_are_checked(config: Path) -> None:
    set_table(config, "digest", 'mode = "per_item"\nper_item_max = 3\nper_item_subject = "New: x"')
    digest = load_config(config).digest
    assert (digest.mode, digest.per_item_max, digest.per_item_subject) == ("per_item", 3, "New: x")
    set_table(config, "digest", 'mode = "each"')
    with pytest.raises(ConfigError, match=r"mode.*expected one of digest, per_item"):
        load_config(config)
    set_table(config, "digest", "per_item_max = 0")
    with pytest.raises(ConfigError, match="per_item_max"):
        load_config(config)


def test_the_single_mails_subject_is_its_own_template(
    config: Path, emulator: ResendEmulator
) -> None:
    set_table(
        config,
        "digest",
        'mode = "per_item"\nper_item_subject = "New on {{ newsletter.title }}: {{ lead.title }}"',
    )
    [title], publisher = gathered(config, 1)
    with publisher:
        publisher.send_items()
    assert {d.subject for d in emulator.deliveries} == {f"New on Item Post: {title}"}
    set_table(config, "digest", 'mode = "per_item"\nper_item_subject = "{{ lead.title "')
    with pytest.raises(RenderError) as info:
        DigestRenderer(load_config(config))
    assert info.value.template == "[digest] per_item_subject"


# --- sending, in process -------------------------------------------------------------------------


def test_three_new_items_are_three_mails_per_subscriber_then_nothing(
    config: Path, emulator: ResendEmulator
) -> None:
    titles, publisher = gathered(config, 3)
    with publisher:
        reports = publisher.send_items()
        # One article each, made by this call, to every reader.
        assert [r.articles for r in reports] == [1, 1, 1]
        assert all(r.created and r.sent == len(READERS) for r in reports)
        # The subject is the article's title (per_item_subject), oldest first.
        assert [d.subject for d in emulator.deliveries[:: len(READERS)]] == titles
        assert received(emulator) == Counter({(r, t): 1 for r in READERS for t in titles})
        digests = publisher.storage.list_digests()
        assert sorted(d.number for d in digests) == [1, 2, 3]
        assert all(len(d.article_ids) == 1 for d in digests)

        # A second run with nothing new sends nothing.
        publisher.gather()
        assert publisher.send_items() == []
        assert len(emulator.deliveries) == 3 * len(READERS)

        # The next gather's items are mailed by the next run, and only they.
        more = write_articles(config, 2, start=3)
        publisher.gather()
        assert [r.number for r in publisher.send_items()] == [4, 5]
    assert received(emulator) == Counter({(r, t): 1 for r in READERS for t in titles + more})


def test_twelve_items_past_the_limit_are_five_mails_and_one_digest_of_the_rest(
    config: Path, emulator: ResendEmulator
) -> None:
    set_table(config, "digest", 'mode = "per_item"\nper_item_max = 5')  # the default, said
    titles, publisher = gathered(config, 12)
    with publisher:
        reports = publisher.send_items()
        assert [r.articles for r in reports] == [7, 1, 1, 1, 1, 1]
        first = publisher.storage.get_digest(reports[0].digest_id or 0)
        assert first is not None
        # An ordinary digest of the 7 oldest, under the digest subject.
        assert first.subject == f"Item Post: {titles[6]} (+6 more)"
        for title in titles[:7]:
            assert title in first.text
        assert publisher.storage.undigested_articles() == []
    singles = titles[7:]
    per_reader = Counter(d.to for d in emulator.deliveries)
    assert per_reader == Counter({r: 6 for r in READERS})
    assert [d.subject for d in emulator.deliveries[len(READERS) :: len(READERS)]] == singles
    assert received(emulator) == Counter(
        {(r, s): 1 for r in READERS for s in [f"Item Post: {titles[6]} (+6 more)", *singles]}
    )


def test_a_single_item_mail_leaves_the_editors_note_to_the_next_digest(
    config: Path, emulator: ResendEmulator
) -> None:
    # The note opens the next *digest*: a mail that carries one article is that article's,
    # so the note waits; a roll-up digest is a digest and takes it.
    set_table(config, "digest", 'mode = "per_item"\nper_item_max = 2')
    write_articles(config, 2)
    with open_publisher(config) as publisher:
        publisher.set_note("A word from the **editor**.")
        publisher.gather()
        assert [r.articles for r in publisher.send_items()] == [1, 1]
        assert all("word from the" not in d.html for d in emulator.deliveries)
        pending = publisher.storage.pending_note()
        assert pending is not None and "editor" in pending.body

        write_articles(config, 3, start=2)
        publisher.gather()
        reports = publisher.send_items()
        assert [r.articles for r in reports] == [1, 1, 1]
        rolled = publisher.storage.get_digest(reports[0].digest_id or 0)
        assert rolled is not None and "word from the" in rolled.html
        singles = [publisher.storage.get_digest(r.digest_id or 0) for r in reports[1:]]
        assert all(d is not None and "word from the" not in d.html for d in singles)
        assert publisher.storage.pending_note() is None


def test_the_scheduler_mails_new_items_after_each_gather_and_has_no_digest_job(
    config: Path, emulator: ResendEmulator
) -> None:
    titles = write_articles(config, 2)
    with open_publisher(config) as publisher:
        scheduler = NodeScheduler(publisher)
        assert [job.name for job in scheduler.jobs] == ["gather"]
        scheduler.wake()  # a node gathers when it starts, and mails what it found
        assert received(emulator) == Counter({(r, t): 1 for r in READERS for t in titles})
        scheduler.wake()  # no fire due, nothing new
        assert len(emulator.deliveries) == 2 * len(READERS)


# --- real processes ------------------------------------------------------------------------------


def _digest_rows(config: Path) -> list[tuple[int, str | None]]:
    with make_publisher(load_config(config)) as publisher:
        d = schema.digests.c
        with publisher.storage.engine.connect() as conn:
            rows = conn.execute(select(d.number, d.fire).order_by(d.number)).all()
    return [(r.number, r.fire) for r in rows]


def test_kill_9_mid_send_then_rerun_delivers_each_mail_once(
    config: Path, emulator: ResendEmulator
) -> None:
    readers = tuple(f"reader{i:04d}@example.com" for i in range(1500))
    titles, publisher = gathered(config, 3, readers=readers)
    publisher.close()
    child = command(config, "send")
    try:
        deadline = time.monotonic() + 60
        # Killed inside the second mail: the first done, the third not made yet.
        while len(emulator.deliveries) < len(readers) * 3 // 2:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the send did not get far enough"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert len(emulator.deliveries) < 3 * len(readers)

    rerun = command(config, "send")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    assert received(emulator) == Counter({(r, t): 1 for r in readers for t in titles})
    assert [fire for _, fire in _digest_rows(config)] == [
        f"item:{i}" for i in sorted(_article_ids(config))
    ]


def _article_ids(config: Path) -> list[int]:
    with make_publisher(load_config(config)) as publisher:
        return [a.id for a in publisher.storage.recent_articles(100)]


def test_two_nodes_on_postgresql_make_each_mail_once(
    config: Path, emulator: ResendEmulator, postgres_url: str
) -> None:
    use_database(config, postgres_url)
    set_table(config, "digest", 'mode = "per_item"\nper_item_max = 3')
    readers = tuple(f"reader{i:04d}@example.com" for i in range(400))
    titles, publisher = gathered(config, 5, readers=readers)
    publisher.close()
    nodes = [command(config, "send") for _ in range(2)]
    outputs = [child.communicate(timeout=120) for child in nodes]
    for child, (out, err) in zip(nodes, outputs, strict=True):
        assert child.returncode == 0, out + err
    # What each node says it sent itself adds up to every message, once.
    said = [int(m) for out, _ in outputs for m in SENT_LINE.findall(out)]
    assert sum(said) == 4 * len(readers)
    rolled = f"Item Post: {titles[1]} (+1 more)"
    assert received(emulator) == Counter(
        {(r, s): 1 for r in readers for s in [rolled, *titles[2:]]}
    )
    rows = _digest_rows(config)
    assert [n for n, _ in rows] == [1, 2, 3, 4]
    assert rows[0][1] is None and all(f is not None and f.startswith("item:") for _, f in rows[1:])


def test_a_node_that_planned_an_item_mail_already_made_joins_it(
    config: Path, emulator: ResendEmulator, postgres_url: str
) -> None:
    # Node B read the candidates before node A's mail for the article was committed, and the
    # last digest after: its plan carries the next number, which is free. The article's fire
    # (item:<id>) is what stops a second mail of the same article.
    use_database(config, postgres_url)
    [title] = write_articles(config, 1)
    with open_publisher(config) as a, make_publisher(load_config(config)) as b:
        a.gather()
        [article] = a.storage.undigested_articles()
        plan = DigestPlan(articles=(article,), more=0, first=True, number=1, covered=(article.id,))
        made, created, _ = a._try_create_digest(plan, f"item:{article.id}", single=True)
        assert created
        stale = DigestPlan(articles=(article,), more=0, first=False, number=2)
        joined, created, _ = b._try_create_digest(stale, f"item:{article.id}", single=True)
        assert not created and joined.id == made.id
        reports = [*b.send_items(wait_for_others=True), *a.send_items(wait_for_others=True)]
        assert [r.digest_id for r in reports] == [made.id]
        assert [d.number for d in a.storage.list_digests()] == [1]
    assert received(emulator) == Counter({(r, title): 1 for r in READERS})


def test_send_dry_run_names_the_next_mail_then_send_reports_each(
    config: Path, emulator: ResendEmulator
) -> None:
    titles, publisher = gathered(config, 3)
    publisher.close()
    out, err = command(config, "send", "--dry-run").communicate(timeout=60)
    assert f"a new digest, 1 articles: {titles[0]!r}" in out, out + err
    assert emulator.deliveries == []
    child = command(config, "send")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, out + err
    assert [int(n) for n in SENT_LINE.findall(out)] == [len(READERS)] * 3
    assert received(emulator) == Counter({(r, t): 1 for r in READERS for t in titles})
    out, err = command(config, "send").communicate(timeout=60)
    assert "nothing sent (no new articles)" in out, out + err
    assert len(emulator.deliveries) == 3 * len(READERS)
