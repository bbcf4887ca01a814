"""Several nodes on one PostgreSQL: real `newsletter` processes, a real server, loopback
emulators of the providers; messages counted per recipient where they arrive.

The promise under test: every active subscriber gets every issue exactly once, whatever
nodes join, die (SIGKILL) or are stopped (SIGTERM). Where the provider cannot de-duplicate a
re-send (SendGrid), the only exception allowed is a batch on the wire when its node died:
its recipients are reported uncertain, and only `send --resend-uncertain` may send them
again.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.storage import schema
from newsletter.types import BatchStatus, DeliveryStatus
from tests._project import add_article, command, set_table, use_database, use_emulator
from tests.emulators import ResendEmulator, SendGridEmulator

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_project(example_project: Path, postgres_url: str) -> Path:
    use_database(example_project, postgres_url)
    return example_project


def prepare(config: Path, subscribers: int, *, gather: bool = True) -> list[str]:
    """Create the schema and the subscribers, and gather the articles (unless not
    ``gather``): the next `send` has a digest to make. Returns the addresses."""
    addresses = [f"reader{i:05d}@example.com" for i in range(subscribers)]
    with make_publisher(load_config(config)) as publisher:
        publisher.storage.add_subscribers(((a, None) for a in addresses), NOW)
        if gather:
            publisher.gather()
    return addresses


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    """Whatever a failing test left running is killed, so it cannot send into the next."""
    yield
    for child in list(CHILDREN):
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)
    CHILDREN.clear()


CHILDREN: list[subprocess.Popen[str]] = []


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    child = command(config, *args)
    CHILDREN.append(child)
    return child


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, *, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def finish(children: list[subprocess.Popen[str]], timeout: float = 180) -> list[str]:
    """Each child's output once it exited. One still running after ``timeout`` is aborted,
    and the failure shows its output and where each of its threads was (faulthandler)."""
    outputs = []
    for child in children:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            out, err = child.communicate(timeout=30)
            raise AssertionError(
                f"{child.args[-1]!r} still running after {timeout} s; its output and threads:\n"
                + (out + err)[-12_000:]
            ) from None
        outputs.append(out + err)
    return outputs


def sent_by(output: str) -> int:
    """What a `send` reported it sent itself ("digest N ...: X sent")."""
    match = re.search(r"digest \d+ (?:created and )?delivered \(\d+ articles\): (\d+) sent", output)
    assert match, output
    return int(match.group(1))


def batch_rows(config: Path) -> list[tuple[str, str, str | None, int]]:
    with make_publisher(load_config(config)) as publisher:
        b = schema.batches.c
        with publisher.storage.engine.connect() as conn:
            rows = conn.execute(select(b.key, b.status, b.owner, b.attempts)).all()
    return [(r.key, r.status, r.owner, r.attempts) for r in rows]


def uncertain_addresses(config: Path) -> set[str]:
    with make_publisher(load_config(config)) as publisher:
        d = schema.deliveries.c
        with publisher.storage.engine.connect() as conn:
            rows = conn.execute(select(d.email).where(d.status == DeliveryStatus.UNCERTAIN)).all()
    return {r.email for r in rows}


def test_nodes_joining_a_send_take_only_batches_nobody_holds(pg_project: Path) -> None:
    n = 4000
    with SendGridEmulator() as emulator:
        emulator.slow(0.3, times=100_000)
        use_emulator(pg_project, emulator, batch_size=100, concurrency=2)
        addresses = prepare(pg_project, n)
        first = start(pg_project, "send")
        wait_for(lambda: len(emulator.deliveries) >= 600, 60, "the first node to be sending")
        joiners = [start(pg_project, "send") for _ in range(2)]
        outputs = finish([first, *joiners])
        for child, output in zip([first, *joiners], outputs, strict=True):
            assert child.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter(addresses)
        assert emulator.problems == []
    # Each node reports what it sent itself; together, everyone once.
    reports = [sent_by(o) for o in outputs]
    assert sum(reports) == n and all(r > 0 for r in reports), reports
    assert "created and delivered" in outputs[0]
    assert all("created" not in o for o in outputs[1:])
    rows = batch_rows(pg_project)
    assert len(rows) == n // 100
    assert {status for _, status, _, _ in rows} == {BatchStatus.DONE}
    assert {attempts for *_, attempts in rows} == {1}  # no batch was ever taken twice
    assert len({owner for _, _, owner, _ in rows}) == 3


@pytest.mark.parametrize("kind", ["resend", "sendgrid"])
def test_kill_9_of_a_random_node_mid_send_repeated(pg_project: Path, kind: str) -> None:
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    n = 3000
    emulator_class = {"resend": ResendEmulator, "sendgrid": SendGridEmulator}[kind]
    with emulator_class() as emulator:
        emulator.slow(0.5, times=100_000)  # accepted, answered later: kills land in between
        use_emulator(pg_project, emulator, batch_size=100, concurrency=1)
        set_table(pg_project, "schedule", "lease_seconds = 2")
        addresses = prepare(pg_project, n)
        for round_ in range(2):
            if round_:
                add_article(pg_project, f"round{round_}", f"Round {round_}", NOW)
                gather = start(pg_project, "gather")
                assert gather.wait(timeout=60) == 0
            before = len(emulator.deliveries)

            def this_round(before: int = before) -> Counter[str]:
                return Counter(d.to for d in emulator.deliveries[before:])

            nodes = [start(pg_project, "send") for _ in range(3)]
            wait_for(lambda: sum(this_round().values()) >= n // 4, 60, "the nodes to be sending")
            # The first node in the seeded order that holds a batch (one that has only
            # others' batches left to wait for holds none) is frozen, then killed.
            for victim in rng.sample(range(len(nodes)), len(nodes)):
                held = _freeze_holding(pg_project, nodes[victim])
                if held:
                    break
            assert held, f"seed {seed}: no node held a batch"
            nodes[victim].send_signal(signal.SIGKILL)
            survivors = [c for i, c in enumerate(nodes) if i != victim]
            outputs = finish(survivors)
            nodes[victim].communicate(timeout=10)
            assert nodes[victim].returncode == -signal.SIGKILL
            for child, output in zip(survivors, outputs, strict=True):
                assert child.returncode == 0, output
            assert emulator.problems == []
            got = this_round()
            if kind == "resend":
                # The dead node's batches were sent again under their keys, and Resend
                # dropped the duplicates.
                assert got == Counter(addresses), f"seed {seed}"
                # The batches the dead node held were claimed again and finished by another.
                again = {
                    key: (status, attempts) for key, status, _, attempts in batch_rows(pg_project)
                }
                held_keys = _held_keys(pg_project, held)
                assert held_keys and all(
                    again[key] == (BatchStatus.DONE, 2) for key in held_keys
                ), f"seed {seed}"
                continue
            # SendGrid: nobody twice; those who got nothing were on the wire at the kill
            # (in a batch the dead node held) and are reported uncertain.
            uncertain = uncertain_addresses(pg_project)
            assert max(got.values()) == 1, (
                f"seed {seed} round {round_}: {_digests(pg_project)} {outputs}"
            )
            missing = {a for a in addresses if not got[a]}
            assert missing <= uncertain <= held, f"seed {seed}"
            assert uncertain, f"seed {seed}: no batch was on the wire at the kill"
            resend = start(pg_project, "send", "--resend-uncertain")
            (output,) = finish([resend])
            assert resend.returncode == 0, output
            got = this_round()
            assert set(got) == set(addresses), f"seed {seed}"
            twice = {a for a, count in got.items() if count > 1}
            assert twice <= uncertain, f"seed {seed}"  # the documented trade of that option


def _freeze_holding(config: Path, node: subprocess.Popen[str]) -> set[str]:
    """Stop ``node`` (SIGSTOP) at a moment it holds a batch; returns that batch's addresses
    (empty, and the node running, if it held none within two seconds). Frozen, it can
    neither send nor record more: what it holds at the kill is known."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        node.send_signal(signal.SIGSTOP)
        held = _held_by(config, node.pid)
        if held:
            return held
        node.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    return set()


def _digests(config: Path) -> list[tuple[int, str, int, str | None]]:
    with make_publisher(load_config(config)) as publisher:
        return [
            (d.number, d.status, len(d.article_ids), d.fire)
            for d in publisher.storage.list_digests()
        ]


def _held_keys(config: Path, addresses: set[str]) -> set[str]:
    """The batch keys of the latest digest's deliveries to ``addresses``."""
    with make_publisher(load_config(config)) as publisher:
        digest = publisher.storage.last_digest()
        assert digest is not None
        d = schema.deliveries.c
        with publisher.storage.engine.connect() as conn:
            rows = conn.execute(
                select(d.batch).where(d.digest_id == digest.id, d.email.in_(sorted(addresses)))
            ).all()
    return {r.batch for r in rows}


def _held_by(config: Path, pid: int) -> set[str]:
    """The addresses in batches leased by the node with process id ``pid`` right now."""
    with make_publisher(load_config(config)) as publisher:
        d, b = schema.deliveries.c, schema.batches.c
        joined = schema.deliveries.join(
            schema.batches, (b.digest_id == d.digest_id) & (b.key == d.batch)
        )
        with publisher.storage.engine.connect() as conn:
            rows = conn.execute(
                select(d.email)
                .select_from(joined)
                .where(b.status == BatchStatus.LEASED, b.owner.like(f"%:{pid}:%"))
            ).all()
    return {r.email for r in rows}


def test_sigterm_stops_a_send_cleanly_and_the_rest_goes_once(pg_project: Path) -> None:
    n = 3000
    with SendGridEmulator() as emulator:
        emulator.slow(0.3, times=100_000)
        use_emulator(pg_project, emulator, batch_size=100, concurrency=2)
        addresses = prepare(pg_project, n)
        child = start(pg_project, "send")
        wait_for(lambda: len(emulator.deliveries) >= 500, 60, "the node to be sending")
        status = start(pg_project, "status")
        (report,) = finish([status])
        assert status.returncode == 0, report
        assert "digest being sent: #1 sending" in report
        assert re.search(rf"node \S+:{child.pid}:\w+ holds \d+ batches \(\d+ recipients\)", report)
        assert re.search(rf"node \S+:{child.pid}:\w+: send, up since", report)
        child.send_signal(signal.SIGTERM)
        (output,) = finish([child], timeout=60)
        assert child.returncode == 3, output  # an interrupted one-shot send
        assert "SIGTERM: stopping" in output and "interrupted" in output
        rows = batch_rows(pg_project)
        assert BatchStatus.LEASED not in {status for _, status, _, _ in rows}
        assert BatchStatus.UNCERTAIN not in {status for _, status, _, _ in rows}
        got_before = len(emulator.deliveries)
        assert got_before < n
        rerun = start(pg_project, "send")
        (output,) = finish([rerun])
        assert rerun.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter(addresses)


def test_a_second_sigterm_exits_at_once_and_gives_the_batches_up(pg_project: Path) -> None:
    n = 2000
    with ResendEmulator() as emulator:
        emulator.slow(3.0, times=100_000)  # every batch hangs on the wire
        use_emulator(pg_project, emulator, batch_size=100, concurrency=2)
        set_table(pg_project, "schedule", "lease_seconds = 30\nstop_timeout_seconds = 60")
        addresses = prepare(pg_project, n)
        child = start(pg_project, "send")
        wait_for(lambda: len(emulator.deliveries) >= 200, 60, "two batches on the wire")
        child.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        (output,) = finish([child], timeout=30)
        assert time.monotonic() - started < 5  # not the 60 s stop timeout
        assert child.returncode == 128 + signal.SIGTERM, output
        assert "exiting now" in output
        # Its leases were ended on the way out: another node goes on at once (not in 30 s),
        # and Resend drops the duplicates of the re-sent batches.
        emulator.clear_faults()
        rerun = start(pg_project, "send")
        (output,) = finish([rerun], timeout=120)
        assert rerun.returncode == 0, output
        assert set(emulator.delivered_to()) == set(addresses)
        assert "stopped renewing its lease" in output


@pytest.mark.timeout(300)  # two cron minutes and the wait for the first: up to three minutes
def test_two_then_three_run_nodes_with_a_digest_every_minute(pg_project: Path) -> None:
    subscribers = 300
    with SendGridEmulator() as emulator:
        use_emulator(pg_project, emulator, batch_size=50)
        set_table(
            pg_project,
            "schedule",
            'digest_cron = "* * * * *"\ngather_interval_minutes = 1\nlease_seconds = 5',
        )
        addresses = prepare(pg_project, subscribers, gather=False)
        nodes = [start(pg_project, "run") for _ in range(2)]
        try:
            wait_for(lambda: len(emulator.deliveries) >= subscribers, 90, "the first digest")
            nodes.append(start(pg_project, "run"))  # a third node joins the running two
            time.sleep(1)
            add_article(pg_project, "minute-two", "News for the next minute", NOW)
            wait_for(lambda: len(emulator.deliveries) >= 2 * subscribers, 90, "the second digest")
            time.sleep(2)  # anything a third fire or a stray node would add shows up by now
        finally:
            for node in nodes:
                node.send_signal(signal.SIGTERM)
            outputs = finish(nodes, timeout=90)
        for node, output in zip(nodes, outputs, strict=True):
            assert node.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter({a: 2 for a in addresses})
        assert emulator.problems == []
    with make_publisher(load_config(pg_project)) as publisher:
        digests = publisher.storage.list_digests()
        assert [d.number for d in digests] == [2, 1]
        assert all(d.fire and d.fire.startswith("digest@") for d in digests)


def test_nodes_started_at_once_on_an_empty_database_make_one_of_everything(
    pg_project: Path,
) -> None:
    with SendGridEmulator() as emulator:
        use_emulator(pg_project, emulator, batch_size=20)
        set_table(pg_project, "schedule", "lease_seconds = 3")
        # Four nodes on a database with no schema yet: they migrate, gather the same
        # articles and create the first digest at the same moment.
        nodes = [start(pg_project, "run", "--once") for _ in range(4)]
        for node, output in zip(nodes, finish(nodes), strict=True):
            assert node.returncode == 0, output
        with make_publisher(load_config(pg_project)) as publisher:
            assert publisher.storage.count_articles() == 9
            assert [d.number for d in publisher.storage.list_digests()] == [1]
        addresses = prepare(pg_project, 100, gather=False)
        add_article(pg_project, "fresh", "Fresh news", NOW)
        nodes = [start(pg_project, "run", "--once") for _ in range(4)]
        for node, output in zip(nodes, finish(nodes), strict=True):
            assert node.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter(addresses)
    with make_publisher(load_config(pg_project)) as publisher:
        assert publisher.storage.count_articles() == 10
        assert [d.number for d in publisher.storage.list_digests()] == [2, 1]


def test_a_run_beside_a_send_on_sqlite_shares_the_digest_and_stops_cleanly(
    example_project: Path,
) -> None:
    n = 1500
    with SendGridEmulator() as emulator:
        emulator.slow(0.3, times=100_000)
        use_emulator(example_project, emulator, batch_size=25, concurrency=2)
        set_table(example_project, "schedule", 'digest_cron = "0 7 1 1 *"\nlease_seconds = 3')
        addresses = prepare(example_project, n)
        runner = start(example_project, "-v", "run")
        try:
            wait_for(lambda: (example_project.parent / "feeds-out").exists(), 30, "the run")
            manual = start(example_project, "send")
            # The running node joins the digest the manual send created (at its next
            # wake-up); SIGTERM reaches it in the middle of its batches.
            wait_for(
                lambda: bool(_held_by(example_project, runner.pid)),
                30,
                "the run to join",
                every=0.2,
            )
            runner.send_signal(signal.SIGTERM)
            (run_output,) = finish([runner], timeout=60)
            (output,) = finish([manual])
        finally:
            if runner.poll() is None:
                runner.kill()
        assert runner.returncode == 0, run_output
        assert "SIGTERM: stopping" in run_output and "stopped" in run_output
        assert manual.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter(addresses)
    joined = re.search(r"digest 1: joined: (\d+) sent by this node", run_output)
    assert joined and int(joined.group(1)) > 0, run_output
    assert sent_by(output) + int(joined.group(1)) == n


def test_a_node_that_planned_against_an_older_digest_does_not_send_the_news_again(
    pg_project: Path,
) -> None:
    # Node A plans the next digest; before it stores it, node B plans, creates and sends the
    # same news. A's digest must not become a second issue of the same articles.
    with SendGridEmulator() as emulator:
        use_emulator(pg_project, emulator, batch_size=50)
        addresses = prepare(pg_project, 120)
        env = {"MAIL_TOKEN": "test-token-1234", "NEWSLETTER_SECRET": "test-secret"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            a = make_publisher(load_config(pg_project))
            b = make_publisher(load_config(pg_project))
            try:
                plan = a.plan_digest()
                assert plan.articles and plan.number == 1
                report = b.send_digest()
                assert report.created and report.sent == len(addresses)
                digest, created = a._create_digest(plan, None)
                assert not created and digest.number == 1
                late = a.send_digest()  # nothing new since digest 1: nothing to send
                assert late.digest_id is None
            finally:
                a.close()
                b.close()
        assert Counter(emulator.delivered_to()) == Counter(addresses)


def test_a_batch_given_back_beyond_resends_key_memory_is_not_sent_again(
    pg_project: Path,
) -> None:
    # A batch whose answer was lost goes back to pending under its Idempotency-Key. Resend
    # remembers a key for 24 hours: a batch first sent longer ago than that is reported
    # uncertain, not sent again, whoever claims it.
    with ResendEmulator() as emulator:
        use_emulator(pg_project, emulator, batch_size=10)
        addresses = prepare(pg_project, 30)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MAIL_TOKEN", "test-token-1234")
            patch.setenv("NEWSLETTER_SECRET", "test-secret")
            publisher = make_publisher(load_config(pg_project))
            try:
                plan = publisher.plan_digest()
                digest, _ = publisher._create_digest(plan, None)
                storage = publisher.storage
                first = storage.claim_batch(digest.id, "node-x", timedelta(minutes=1))
                assert first is not None
                assert storage.release_batch(digest.id, first.key, "node-x")
                b = schema.batches
                with storage.engine.begin() as conn:
                    conn.execute(
                        b.update()
                        .where(b.c.key == first.key)
                        .values(first_sent_at=datetime.now(UTC) - timedelta(hours=30))
                    )
                report = publisher.send_digest()
            finally:
                publisher.close()
        assert (report.sent, report.uncertain) == (20, 10)
        old = {r.email for r in first.recipients}
        assert set(emulator.delivered_to()) == set(addresses) - old
        assert uncertain_addresses(pg_project) == old
        assert first.key not in {d.key for d in emulator.deliveries}
        # Asked for, they go: accepting a second copy for whoever got the first.
        again = start(pg_project, "send", "--resend-uncertain")
        (output,) = finish([again])
        assert again.returncode == 0, output
        assert Counter(emulator.delivered_to()) == Counter(addresses)
