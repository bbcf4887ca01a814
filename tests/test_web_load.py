"""Load on loopback, bounded in count and time: 1,000 conditional feed requests and 200
subscribe/unsubscribe requests from concurrent clients (threads, one ``requests.Session``
each). No request may fail, and afterwards every subscriber is there exactly once, in the
state the requests left it, with exactly one confirmation mail each. ``pytest -s`` shows the
requests per second; ``benchmarks/serve.py`` measures the same on a bigger scale.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from newsletter.types import SubscriberStatus
from tests._browser import wait_for
from tests.test_web_feeds import Running, built, link_secret, running_site

__all__ = ["built", "link_secret"]  # fixtures, imported to be used here

CLIENTS = 8
FEED_REQUESTS = 1000
SUBSCRIBES = 100
UNSUBSCRIBES = 100
TIME_LIMIT = 30.0  # seconds for both phases together, far above what a slow machine needs


@pytest.fixture
def site(built: Path) -> Iterator[Running]:
    with running_site(built, rate=1_000_000) as running:
        yield running


def run(jobs: list[Callable[[requests.Session], int]]) -> tuple[Counter[int], float]:
    """Run ``jobs`` on ``CLIENTS`` threads, each thread with its own session; returns the
    status codes seen and the seconds taken."""
    local = threading.local()
    sessions: list[requests.Session] = []

    def call(job: Callable[[requests.Session], int]) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            sessions.append(session)
        return job(session)

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        codes = Counter(pool.map(call, jobs))
    elapsed = time.perf_counter() - start
    for session in sessions:
        session.close()
    return codes, elapsed


def test_load_on_loopback(site: Running) -> None:
    started = time.perf_counter()
    # Readers who polled before: each holds an ETag (identity or gzip) for one of the feeds.
    validators: list[tuple[str, dict[str, str]]] = []
    for name in ("rss.xml", "atom.xml", "feed.json"):
        for encoding in ("identity", "gzip"):
            first = requests.get(
                f"{site.url}/feeds/{name}", headers={"Accept-Encoding": encoding}, timeout=10
            )
            assert first.status_code == 200
            validators.append(
                (
                    f"{site.url}/feeds/{name}",
                    {"Accept-Encoding": encoding, "If-None-Match": first.headers["etag"]},
                )
            )

    def poll(url: str, headers: dict[str, str]) -> Callable[[requests.Session], int]:
        def job(session: requests.Session) -> int:
            response = session.get(url, headers=headers, timeout=10)
            assert response.content == b""
            return response.status_code

        return job

    feed_jobs = [poll(*validators[i % len(validators)]) for i in range(FEED_REQUESTS)]
    codes, feed_seconds = run(feed_jobs)
    assert codes == Counter({304: FEED_REQUESTS})

    # Subscribers who leave while others join.
    leaving: list[str] = []
    with site.publisher() as publisher:
        for i in range(UNSUBSCRIBES):
            sub, _ = publisher.add_subscriber(f"old{i}@example.com")
            leaving.append(f"{site.url}/unsubscribe/{publisher.tokens.make(sub.id, sub.email)}")
    joining = [f"new{i}@example.com" for i in range(SUBSCRIBES)]

    def join(address: str) -> Callable[[requests.Session], int]:
        def job(session: requests.Session) -> int:
            if address.endswith(("0@example.com", "5@example.com")):  # some as JSON
                return session.post(
                    site.url + "/subscribe", json={"email": address}, timeout=10
                ).status_code
            return session.post(
                site.url + "/subscribe", data={"email": address}, timeout=10
            ).status_code

        return job

    def leave(url: str) -> Callable[[requests.Session], int]:
        def job(session: requests.Session) -> int:
            return session.post(url, data="List-Unsubscribe=One-Click", timeout=10).status_code

        return job

    mixed = [
        job for pair in zip(map(join, joining), map(leave, leaving), strict=True) for job in pair
    ]
    codes, write_seconds = run(mixed)
    assert set(codes) <= {200, 202} and sum(codes.values()) == SUBSCRIBES + UNSUBSCRIBES

    with site.publisher() as publisher:
        by_address = Counter(s.email for s in publisher.subscribers())
        states = {s.email: s.status for s in publisher.subscribers()}
    assert max(by_address.values()) == 1  # nobody twice
    assert sum(by_address.values()) == SUBSCRIBES + UNSUBSCRIBES + 1  # + built's reader
    assert all(states[a] == SubscriberStatus.PENDING for a in joining)
    assert all(states[f"old{i}@example.com"] == SubscriberStatus.UNSUBSCRIBED for i in range(100))

    # Every joiner gets exactly one confirmation (one file each, none for anyone else).
    wait_for(lambda: len(site.mails()) >= SUBSCRIBES, timeout=20)
    assert sorted(site.mails()) == sorted(joining)
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_LIMIT, f"took {elapsed:.1f} s"

    print(
        f"\nload: {FEED_REQUESTS} conditional feed requests in {feed_seconds:.2f} s "
        f"({FEED_REQUESTS / feed_seconds:.0f} req/s); "
        f"{SUBSCRIBES + UNSUBSCRIBES} subscribe/unsubscribe requests in {write_seconds:.2f} s "
        f"({(SUBSCRIBES + UNSUBSCRIBES) / write_seconds:.0f} req/s); {CLIENTS} clients"
    )
