"""The total deadline per fetch: servers that drip, dribble or stay silent cost at most
``timeout`` seconds, and only their own source fails.

Every server here is real, on 127.0.0.1: ``RawServer`` for the misbehaving peers (it writes to
the socket byte by byte), ``LoopbackServer`` for the well-behaved ones. Gathers run through a
real ``Publisher`` on a real SQLite file.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import requests
import trustme

from newsletter.config import HttpSettings, SourceConfig
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import SourceError
from newsletter.sources import deadline
from newsletter.sources.feed import FeedSource
from newsletter.sources.settings import FeedSettings
from newsletter.types import SourceState
from newsletter.websub import ping_hub
from tests._factories import make_config
from tests._http import LoopbackServer, Reply
from tests._rawserver import Pace, RawServer, Script

DATA = Path(__file__).parent / "data" / "sources"
RSS = (DATA / "rss2.xml").read_bytes()
TIMEOUT = 2.0
SLACK = 1.5  # the watchdog's reaction, unwinding the fetch, storing, on a shared machine
HEAD = (
    f"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\nContent-Length: {len(RSS)}\r\n"
    "Connection: close\r\n\r\n"
).encode()


def drip_body(conn: socket.socket, pace: Pace) -> None:
    conn.sendall(HEAD)
    pace.drip(conn, RSS, 1.0)


def dribble_headers(conn: socket.socket, pace: Pace) -> None:
    pace.drip(conn, HEAD + RSS, 1.0)


def dribble_headers_fast(conn: socket.socket, pace: Pace) -> None:
    pace.drip(conn, HEAD + RSS, 0.2)  # well inside a per-read timeout of 1 s


def silence(conn: socket.socket, pace: Pace) -> None:
    pace.wait(60)


def keep_alive_then_dribble(conn: socket.socket, pace: Pace) -> None:
    # The first answer keeps the connection open; the request sent on it next is dribbled.
    conn.sendall(HEAD.replace(b"Connection: close", b"Connection: keep-alive") + RSS)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    pace.drip(conn, HEAD + RSS, 1.0)


def slow_but_in_time(conn: socket.socket, pace: Pace) -> None:
    # Five pauses of 0.25 s: 1.25 s in all, well inside a 3 s deadline.
    data = HEAD + RSS
    step = len(data) // 5 + 1
    for i in range(0, len(data), step):
        conn.sendall(data[i : i + step])
        pace.wait(0.25)


def publisher_for(tmp_path: Path, sources: dict[str, str], timeout: float) -> Publisher:
    tables = "".join(
        f'[[sources]]\nname = "{name}"\nkind = "feed"\nurl = "{url}"\ntimeout = {timeout}\n'
        for name, url in sources.items()
    )
    config = make_config(tmp_path, tables + '[storage]\npath = "news.db"\n')
    return make_publisher(config)


@pytest.fixture
def good(server: LoopbackServer) -> str:
    return server.route("/good.xml", Reply(200, RSS, {"Content-Type": "application/rss+xml"}))


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fetch-deadline-watchdog"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("script", [drip_body, dribble_headers, silence], ids=lambda s: s.__name__)
def test_a_slow_server_costs_at_most_the_timeout_and_fails_alone(
    script: Script, good: str, tmp_path: Path, fixed_clock: list[datetime]
) -> None:
    with (
        RawServer(script) as slow,
        publisher_for(tmp_path, {"slow": slow.url(), "good": good}, TIMEOUT) as publisher,
    ):
        started = time.monotonic()
        results = publisher.gather()
        elapsed = time.monotonic() - started

        assert elapsed < TIMEOUT + SLACK, elapsed
        assert slow.connections == 1
        by_name = {r.source: r for r in results}
        error = by_name["slow"].error
        assert isinstance(error, SourceError)
        assert error.message == "no complete answer within 2 s (total deadline)"
        assert (error.source, error.url) == ("slow", slow.url())
        assert by_name["good"].ok and by_name["good"].new == 3
        states = {s.name: s for s in publisher.storage.source_states()}
        assert states["slow"].error_count == 1
        assert states["slow"].last_error == str(error)
        assert states["good"].last_success == fixed_clock[0]
        assert publisher.storage.count_articles() == 3
    # Nothing left behind: the watchdog ends once no deadline is running.
    for thread in watchdog_threads():
        thread.join(timeout=1)
    assert watchdog_threads() == []


@pytest.mark.timeout(30)
def test_a_slow_response_within_the_deadline_succeeds(
    tmp_path: Path, fixed_clock: list[datetime]
) -> None:
    with (
        RawServer(slow_but_in_time) as slow,
        publisher_for(tmp_path, {"slow": slow.url()}, 3.0) as publisher,
    ):
        started = time.monotonic()
        (result,) = publisher.gather()
        assert time.monotonic() - started >= 0.75  # it was slow: four pauses at least
        assert result.ok, result.error
        assert result.new == 3
        assert publisher.storage.count_articles() == 3


@pytest.mark.timeout(30)
def test_redirect_hops_count_against_one_deadline(
    server: LoopbackServer, session: requests.Session
) -> None:
    # Each hop answers in 0.7 s, well inside the per-read timeout; four of them are not.
    for hop in range(4):
        location = {"Location": f"/hop{hop + 1}", "Content-Length": "0"}
        server.route(f"/hop{hop}", Reply(302, headers=location, delay=0.7))
    server.route("/hop4", Reply(200, RSS, delay=0.7))
    source = FeedSource(
        SourceConfig("hops", "feed", FeedSettings(url=server.url("/hop0"), timeout=TIMEOUT)),
        session=session,
        http=HttpSettings(),
    )
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        source.fetch(SourceState(name="hops"))
    assert time.monotonic() - started < TIMEOUT + SLACK
    assert caught.value.message == "no complete answer within 2 s (total deadline)"
    # Cut during the third hop (at 2 s of 2.8): the chain was followed, never finished.
    assert len(server.seen("/hop0")) == len(server.seen("/hop1")) == 1
    assert server.seen("/hop4") == []


@pytest.mark.timeout(30)
def test_a_reused_keep_alive_connection_answers_to_the_next_fetchs_deadline(
    session: requests.Session,
) -> None:
    with RawServer(keep_alive_then_dribble) as server:
        config = SourceConfig("reused", "feed", FeedSettings(url=server.url(), timeout=TIMEOUT))
        source = FeedSource(config, session=session, http=HttpSettings())
        assert len(source.fetch(SourceState(name="reused")).entries) == 3
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            source.fetch(SourceState(name="reused"))
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert caught.value.message == "no complete answer within 2 s (total deadline)"
        assert server.connections == 1  # the second fetch did reuse the first connection


@pytest.mark.timeout(30)
def test_a_process_forked_during_a_fetch_has_its_own_watchdog(session: requests.Session) -> None:
    # The parent is inside a deadline (its watchdog thread running) when it forks; the child has
    # no such thread, and must start its own for its own fetches.
    inside, release = threading.Event(), threading.Event()

    def parent_fetch() -> None:
        with deadline.limit(20):
            inside.set()
            release.wait(20)

    holder = threading.Thread(target=parent_fetch)
    holder.start()
    inside.wait(5)
    try:
        with RawServer(dribble_headers_fast) as slow:
            config = SourceConfig("child", "feed", FeedSettings(url=slow.url(), timeout=1.0))
            source = FeedSource(config, session=session, http=HttpSettings())
            with warnings.catch_warnings():
                # Python 3.12+ warns about forking a process with threads; that is the point.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # the child: report by exit status, never return into pytest
                code = 1
                try:
                    signal.alarm(10)  # a child whose fetch is never cut must not linger
                    started = time.monotonic()
                    try:
                        source.fetch(SourceState(name="child"))
                    except SourceError as e:
                        in_time = time.monotonic() - started < 1.0 + SLACK
                        code = 0 if in_time and "total deadline" in e.message else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        holder.join()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("script", [dribble_headers, drip_body], ids=lambda s: s.__name__)
def test_the_deadline_holds_over_tls(script: Script, ca: trustme.CA, tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with RawServer(script, tls=context) as slow, requests.Session() as session:
        session.trust_env = False  # $REQUESTS_CA_BUNDLE would win over session.verify
        session.verify = str(bundle)
        source = FeedSource(
            SourceConfig("tls", "feed", FeedSettings(url=slow.url(), timeout=TIMEOUT)),
            session=session,
            http=HttpSettings(),
        )
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            source.fetch(SourceState(name="tls"))
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert caught.value.message == "no complete answer within 2 s (total deadline)"


@pytest.mark.timeout(30)
def test_a_dribbling_websub_hub_costs_at_most_the_timeout() -> None:
    with RawServer(dribble_headers) as hub:
        started = time.monotonic()
        (result,) = ping_hub(
            hub.url("/hub"), ["https://news.example.org/rss.xml"], user_agent="t/1", timeout=1.0
        )
        assert time.monotonic() - started < 1.0 + SLACK
        assert result.status is None
        assert result.error == "no complete answer within 1 s (total deadline)"
