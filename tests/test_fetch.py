"""The shared fetcher (``newsletter.sources.fetch``) on its own, with no feed parsing behind it.

Any source kind gets the same conditional GET, remembered permanent redirects, size cap, total
deadline and charset; these tests hold that contract against real servers on 127.0.0.1
(``LoopbackServer`` for well-behaved ones, ``RawServer`` for one that dribbles) and real files.
"""

from __future__ import annotations

import gzip
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from newsletter.exceptions import SourceError
from newsletter.sources.fetch import Fetched, Fetcher, read_file, split_content_type
from newsletter.types import SourceState
from tests._http import LoopbackServer, Reply, conditional, redirect
from tests._rawserver import Pace, RawServer

PAGE = b"<!doctype html><title>caf\xe9</title><p>Bonjour</p>"
AGENT = "fetch-tests/1.0"
ACCEPT = "text/html, */*;q=0.5"
LAST_MODIFIED = "Sun, 22 Nov 2026 07:00:00 GMT"


@pytest.fixture
def fetcher(session: requests.Session) -> Fetcher:
    return Fetcher(session, user_agent=AGENT, accept=ACCEPT)


def get(
    fetcher: Fetcher,
    url: str,
    state: SourceState | None = None,
    *,
    timeout: float = 5.0,
    max_bytes: int = 1024 * 1024,
) -> Fetched:
    return fetcher.get(
        url,
        state or SourceState(name="page"),
        source="page",
        timeout=timeout,
        max_bytes=max_bytes,
    )


def get_error(fetcher: Fetcher, url: str, *, timeout: float = 5.0, cap: int = 64) -> SourceError:
    with pytest.raises(SourceError) as info:
        get(fetcher, url, timeout=timeout, max_bytes=cap)
    return info.value


# --- conditional GET -----------------------------------------------------------------------------


def test_validators_are_returned_then_sent_and_a_304_is_not_modified(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    url = server.route("/page", conditional(PAGE, "text/html; charset=ISO-8859-1"))

    first = get(fetcher, url)

    assert first == Fetched(
        url=url,
        body=PAGE,
        etag='"v1"',
        last_modified=LAST_MODIFIED,
        media_type="text/html",
        charset="ISO-8859-1",
    )
    state = SourceState(name="page", etag=first.etag, last_modified=first.last_modified)
    second = get(fetcher, url, state)

    assert second == Fetched(url=url, not_modified=True)
    sent = server.seen("/page")
    assert "if-none-match" not in sent[0].headers
    assert sent[1].headers["if-none-match"] == '"v1"'
    assert sent[1].headers["if-modified-since"] == LAST_MODIFIED
    assert {r.headers["user-agent"] for r in sent} == {AGENT}
    assert {r.headers["accept"] for r in sent} == {ACCEPT}


def test_last_modified_alone_gets_a_304(server: LoopbackServer, fetcher: Fetcher) -> None:
    url = server.route("/page", conditional(PAGE, "text/html", etag=None))

    first = get(fetcher, url)
    second = get(fetcher, url, SourceState(name="page", last_modified=first.last_modified))

    assert first.etag is None and first.last_modified == LAST_MODIFIED
    assert second.not_modified and second.body == b""
    assert "if-none-match" not in server.seen("/page")[1].headers


def test_a_changed_document_comes_back_whole(server: LoopbackServer, fetcher: Fetcher) -> None:
    url = server.route("/page", conditional(PAGE, "text/html", etag='"v2"'))

    result = get(fetcher, url, SourceState(name="page", etag='"v1"'))

    assert not result.not_modified
    assert (result.body, result.etag) == (PAGE, '"v2"')


# --- redirects -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 308])
def test_a_permanent_redirect_is_reported_and_the_remembered_url_used_next_time(
    server: LoopbackServer, fetcher: Fetcher, status: int
) -> None:
    new = server.route("/new", Reply(200, PAGE, {"Content-Type": "text/html"}))
    old = server.route("/old", redirect(status, new))

    moved = get(fetcher, old)
    # Storage remembers ``permanent_url`` as the state's url and hands it back.
    again = get(fetcher, old, SourceState(name="page", url=moved.permanent_url))

    assert (moved.url, moved.permanent_url, moved.body) == (new, new, PAGE)
    assert (again.url, again.permanent_url) == (new, None)
    assert [r.path for r in server.requests] == ["/old", "/new", "/new"]


def test_a_temporary_redirect_is_followed_but_not_remembered(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    today = server.route("/today", Reply(200, PAGE))
    url = server.route("/page", redirect(302, today))

    result = get(fetcher, url)

    assert (result.url, result.permanent_url, result.body) == (today, None, PAGE)


def test_only_the_permanent_start_of_a_chain_is_remembered(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    final = server.route("/c", Reply(200, PAGE))
    middle = server.route("/b", redirect(307, final))
    start = server.route("/a", redirect(308, middle))

    result = get(fetcher, start)

    assert (result.url, result.permanent_url) == (final, middle)


def test_a_remembered_url_that_is_not_http_is_ignored(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    url = server.route("/page", Reply(200, PAGE))

    result = get(fetcher, url, SourceState(name="page", url="/var/lib/old-path"))

    assert result.url == url and result.body == PAGE


# --- the size cap --------------------------------------------------------------------------------


def test_a_declared_length_over_the_cap_is_refused(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    url = server.route("/big", Reply(200, b"x" * 100))

    error = get_error(fetcher, url, cap=64)

    assert (error.source, error.url) == ("page", url)
    assert error.message == (
        "response too large (Content-Length is 100 bytes; the limit is max_bytes = 64)"
    )


def test_a_body_without_length_is_cut_at_the_cap(server: LoopbackServer, fetcher: Fetcher) -> None:
    url = server.route("/big", Reply(200, b"x" * 100, chunked=True))

    error = get_error(fetcher, url, cap=64)

    assert error.message == (
        "response too large (more than 64 bytes received; the limit is max_bytes = 64)"
    )


def test_the_cap_counts_decompressed_bytes(server: LoopbackServer, fetcher: Fetcher) -> None:
    bomb = gzip.compress(b"\0" * 100_000)
    url = server.route("/bomb", Reply(200, bomb, {"Content-Encoding": "gzip"}))

    error = get_error(fetcher, url, cap=len(bomb) * 2)

    assert "bytes received" in error.message


def test_the_cap_is_reported_against_the_final_url(
    server: LoopbackServer, fetcher: Fetcher
) -> None:
    target = server.route("/big", Reply(200, b"x" * 100))
    url = server.route("/page", redirect(302, target))

    assert get_error(fetcher, url, cap=64).url == target


def test_a_body_at_exactly_the_cap_is_read(server: LoopbackServer, fetcher: Fetcher) -> None:
    url = server.route("/page", Reply(200, b"x" * 64, chunked=True))

    assert get(fetcher, url, max_bytes=64).body == b"x" * 64


# --- charset and media type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("text/html; charset=utf-8", ("text/html", "utf-8")),
        (
            'Application/XHTML+XML; Charset="Windows-1252"',
            ("application/xhtml+xml", "Windows-1252"),
        ),
        ("text/plain; format=flowed; charset='koi8-r'", ("text/plain", "koi8-r")),
        ("text/html; charset=", ("text/html", None)),
        ("", ("", None)),
    ],
)
def test_media_type_and_charset_come_from_the_content_type(
    server: LoopbackServer, fetcher: Fetcher, header: str, expected: tuple[str, str | None]
) -> None:
    headers = {"Content-Type": header} if header else {}
    url = server.route("/page", Reply(200, PAGE, headers))

    result = get(fetcher, url)

    assert (result.media_type, result.charset) == expected == split_content_type(header)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "message"), [(404, "HTTP 404 Not Found"), (503, "HTTP 503")])
def test_an_error_status_carries_the_status(
    server: LoopbackServer, fetcher: Fetcher, status: int, message: str
) -> None:
    url = server.route("/page", Reply(status, reason="" if status == 503 else None))

    error = get_error(fetcher, url)

    assert (error.message, error.status, error.source, error.url) == (message, status, "page", url)


def test_a_refused_connection_is_a_source_error(fetcher: Fetcher) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/page"

    error = get_error(fetcher, url)

    assert error.message.startswith("cannot connect: ") and error.url == url


@pytest.mark.timeout(30)
def test_a_dribbling_server_is_cut_at_the_total_deadline(fetcher: Fetcher) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PAGE)}\r\nConnection: close\r\n\r\n"

    def dribble(conn: socket.socket, pace: Pace) -> None:
        # One byte every 0.2 s never lets a per-read timeout of 1 s expire.
        pace.drip(conn, head.encode() + PAGE, 0.2)

    with RawServer(dribble) as slow:
        started = time.monotonic()
        error = get_error(fetcher, slow.url("/page"), timeout=1.0)
        elapsed = time.monotonic() - started

    assert error.message == "no complete answer within 1 s (total deadline)"
    assert elapsed < 1.0 + 1.5, elapsed


# --- local files ---------------------------------------------------------------------------------


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(PAGE)

    def read(etag: str | None = None) -> Fetched:
        return read_file(path, SourceState(name="page", etag=etag), source="page", max_bytes=1024)

    first = read()
    unchanged = read(first.etag)
    path.write_bytes(PAGE + b"<p>more</p>")
    changed = read(first.etag)

    assert first.body == PAGE and first.url == str(path)
    assert first.etag is not None and first.etag.startswith("file:")
    assert unchanged == Fetched(url=str(path), not_modified=True, etag=first.etag)
    assert changed.body == PAGE + b"<p>more</p>" and changed.etag != first.etag
    assert (first.media_type, first.charset) == ("", None)


def make_large(path: Path) -> None:
    path.write_bytes(b"x" * 100)


def make_nothing(path: Path) -> None:
    pass


def make_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "cap", "message"),
    [
        (make_large, 64, "file too large (100 bytes; the limit is max_bytes = 64)"),
        (make_nothing, 64, "file not found"),
        # A directory's size is small but not zero; the cap must not be what refuses it.
        (make_directory, 1 << 30, "cannot read file: Is a directory"),
    ],
    ids=["too-large", "missing", "directory"],
)
def test_a_file_that_cannot_be_had_is_a_source_error(
    tmp_path: Path, make: Callable[[Path], None], cap: int, message: str
) -> None:
    path = tmp_path / "page.html"
    make(path)

    with pytest.raises(SourceError) as info:
        read_file(path, SourceState(name="page"), source="page", max_bytes=cap)

    assert (info.value.message, info.value.source, info.value.url) == (message, "page", str(path))
