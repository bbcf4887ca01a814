"""The public site serving files over real HTTP on 127.0.0.1: feeds, archive, health.

Also holds ``running_site``, the helper every ``test_web_*`` module uses: the public app of a
copy of the example project under uvicorn in a thread (port 0), with ``site_url`` pointing at
it so that the links in pages and mail can be followed.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.web.public import create_public_app
from newsletter.web.static import FileCache, StaticFolder, accepts_gzip, media_type_of
from tests._browser import ServerThread, wait_for
from tests._project import serving

EXAMPLE_SITE = 'site_url = "https://news.example.org/"'
SECRET = "test-secret-for-signing-links"


@dataclass
class Running:
    """A running public site and the project behind it."""

    url: str  # http://127.0.0.1:<port>, no trailing slash
    config: Path
    server: ServerThread

    @property
    def project(self) -> Path:
        return self.config.parent

    @contextmanager
    def publisher(self) -> Iterator[Publisher]:
        """A Publisher of its own on the same config and database (to check what changed)."""
        publisher = make_publisher(load_config(self.config))
        try:
            yield publisher
        finally:
            publisher.close()

    def mails(self) -> dict[str, EmailMessage]:
        """Every message the outbox holds outside digests (confirmations), by address."""
        found: dict[str, EmailMessage] = {}
        folder = self.project / "outbox" / "0"
        for path in sorted(folder.glob("*.eml")) if folder.is_dir() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found[str(message["To"].addresses[0].addr_spec)] = message
        return found

    def wait_for_mail(self, address: str, *, timeout: float = 10) -> EmailMessage:
        message: EmailMessage = wait_for(lambda: self.mails().get(address), timeout=timeout)
        return message


@contextmanager
def running_site(config: Path, *, web: str = "", rate: float = 10_000) -> Iterator[Running]:
    """The public site of ``config`` with ``[web]`` settings ``web`` added (and a high
    subscribe rate unless given), serving on 127.0.0.1."""
    text = config.read_text()
    if "subscribe_rate_per_minute" not in web:
        web += f"\nsubscribe_rate_per_minute = {rate}\n"
    config.write_text(text + "\n[web]\n" + web)
    app = create_public_app(config, trusted_proxies=load_config(config).web.trusted_proxies)
    server = ServerThread(app)
    # The port is known once bound; the site reads its config on first use, so the links
    # it makes (confirmation, unsubscribe) point at this server.
    config.write_text(config.read_text().replace(EXAMPLE_SITE, f'site_url = "{server.url}/"'))
    with server:
        yield Running(url=server.url, config=config, server=server)


def confirm_link(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"https?://\S+/confirm/\S+", body.get_content())
    assert found is not None, body.get_content()
    return found.group(0)


def unsubscribe_link(message: EmailMessage) -> str:
    found = re.match(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))
    assert found is not None
    return found.group(1)


@pytest.fixture(autouse=True)
def link_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET", SECRET)


@pytest.fixture
def built(example_project: Path) -> Path:
    """The example project gathered, its feeds written and one digest sent (so the archive
    has a page)."""
    with make_publisher(load_config(example_project)) as publisher:
        publisher.gather()
        publisher.build_feeds()
        publisher.add_subscriber("reader@example.com")
        assert publisher.send_digest().sent == 1
    return example_project


@pytest.fixture
def site(built: Path) -> Iterator[Running]:
    with running_site(built) as running:
        yield running


def raw_get(site: Running, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with the path sent exactly as given (no client-side normalizing of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", site.server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name.replace("_", "-"), value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


# --- content types and validators ---------------------------------------------------------------


def test_feeds_and_archive_have_the_right_types_and_validators(site: Running) -> None:
    out = site.project / "feeds-out"
    page = next((out / "archive").glob("2*.html"))
    expected = {
        "/archive/": ("text/html; charset=utf-8", "public, max-age=300"),
        f"/archive/{page.name}": ("text/html; charset=utf-8", "public, max-age=86400"),
    }
    # Every file the feeds folder holds (main feeds, tag feeds, archive pages) is served.
    by_name = {
        "rss.xml": "application/rss+xml",
        "atom.xml": "application/atom+xml",
        "feed.json": "application/feed+json",
        "index.json": "application/json",
    }
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and not relative.startswith("archive/"):
            expected["/feeds/" + relative] = (by_name[path.name], "public, max-age=300")
    assert {"/feeds/rss.xml", "/feeds/atom.xml", "/feeds/feed.json"} <= set(expected)
    assert any(key.startswith("/feeds/tags/") for key in expected)
    for path, (media_type, cache_control) in expected.items():
        status, headers, body = raw_get(site, path)
        assert status == 200, path
        assert headers["content-type"].startswith(media_type), (path, headers["content-type"])
        assert headers["cache-control"] == cache_control
        assert re.fullmatch(r'"[0-9a-f]{32}"', headers["etag"]), headers["etag"]  # strong
        assert headers["last-modified"].endswith(" GMT")
        assert headers["vary"] == "Accept-Encoding"
        assert int(headers["content-length"]) == len(body) > 0
    _, _, index = raw_get(site, "/archive/")
    assert page.name.encode() in index
    assert raw_get(site, "/archive/index.html")[2] == index
    conn = http.client.HTTPConnection("127.0.0.1", site.server.port, timeout=10)
    conn.request("GET", "/archive")
    assert conn.getresponse().getheader("location") == site.url + "/archive/"
    conn.close()


def test_conditional_get_answers_304_with_no_body(site: Running) -> None:
    status, headers, body = raw_get(site, "/feeds/atom.xml")
    assert status == 200 and body
    etag, modified = headers["etag"], headers["last-modified"]

    for condition in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", W/{etag}'},  # If-None-Match compares weakly
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
    ):
        status, headers, body = raw_get(site, "/feeds/atom.xml", **condition)
        assert status == 304, condition
        assert body == b""
        assert "content-length" not in headers or headers["content-length"] == "0"
        assert headers["etag"] == etag
        assert headers["cache-control"] == "public, max-age=300"

    earlier = format_datetime(datetime.now(UTC) - timedelta(days=400), usegmt=True)
    for condition in (
        {"If-None-Match": '"0123456789abcdef0123456789abcdef"'},
        {"If-Modified-Since": earlier},
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
        {"If-None-Match": '"0123456789abcdef0123456789abcdef"', "If-Modified-Since": modified},
        {"If-Modified-Since": "not a date"},
    ):
        status, _, body = raw_get(site, "/feeds/atom.xml", **condition)
        assert status == 200 and body, condition


def test_gzip_when_asked_with_its_own_etag(site: Running) -> None:
    _, plain_headers, plain = raw_get(site, "/feeds/rss.xml")
    status, headers, packed = raw_get(site, "/feeds/rss.xml", Accept_Encoding="br, gzip;q=0.8")
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain
    assert len(packed) < len(plain)
    assert headers["etag"] != plain_headers["etag"]
    assert headers["etag"] == plain_headers["etag"][:-1] + '-gzip"'

    status, _, body = raw_get(
        site, "/feeds/rss.xml", Accept_Encoding="gzip", If_None_Match=headers["etag"]
    )
    assert status == 304 and body == b""
    # The identity ETag does not validate the gzip representation, nor the other way round.
    assert (
        raw_get(
            site, "/feeds/rss.xml", Accept_Encoding="gzip", If_None_Match=plain_headers["etag"]
        )[0]
        == 200
    )
    assert raw_get(site, "/feeds/rss.xml", If_None_Match=headers["etag"])[0] == 200

    for refused in ("gzip;q=0", "identity", "br"):
        _, headers, body = raw_get(site, "/feeds/rss.xml", Accept_Encoding=refused)
        assert "content-encoding" not in headers and body == plain, refused


def test_a_changed_file_gets_a_new_etag(site: Running) -> None:
    feed = site.project / "feeds-out" / "feed.json"
    _, before, _ = raw_get(site, "/feeds/feed.json")
    feed.write_text(feed.read_text().replace('"version"', '"version" ', 1))
    status, after, body = raw_get(site, "/feeds/feed.json", If_None_Match=before["etag"])
    assert status == 200 and body == feed.read_bytes()
    assert after["etag"] != before["etag"]


def test_head_answers_headers_only(site: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.server.port, timeout=10)
    conn.request("HEAD", "/feeds/rss.xml")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("application/rss+xml")
    assert response.read() == b""
    conn.close()


def test_paths_outside_the_folders_are_refused(site: Running) -> None:
    out = site.project / "feeds-out"
    (out / ".hidden.xml").write_text("<rss/>")
    (out / "outside.xml").symlink_to(site.config)
    secret_marker = b"[storage]"
    for path in (
        "/feeds/../newsletter.toml",
        "/feeds/%2e%2e/newsletter.toml",
        "/feeds/..%2fnewsletter.toml",
        "/feeds/tags/../../newsletter.toml",
        "/feeds//etc/passwd",
        "/feeds/%2fetc%2fpasswd",
        "/feeds/..\\newsletter.toml",
        "/feeds/rss.xml%00.html",
        "/feeds/.hidden.xml",
        "/feeds/outside.xml",  # a symlink leading out of the folder
        "/feeds/archive/index.html",  # the archive has one URL: /archive/
        "/feeds/tags",  # a folder
        "/feeds/",
        "/archive/../newsletter.toml",
        "/archive/%2e%2e/rss.xml",
        "/archive/../../newsletter.toml",
    ):
        status, _, body = raw_get(site, path)
        assert status == 404, path
        assert secret_marker not in body and b"<rss" not in body, path


def test_healthz_reports_database_and_feeds(example_project: Path) -> None:
    with running_site(example_project) as site:
        response = requests.get(site.url + "/healthz", timeout=10)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "database": True, "feeds": False}
        with site.publisher() as publisher:
            publisher.gather()
            publisher.build_feeds()
        assert requests.get(site.url + "/healthz", timeout=10).json()["feeds"] is True
        assert (
            requests.get(site.url + "/", timeout=10, allow_redirects=False).headers["location"]
            == site.url + "/subscribe"
        )


# --- the parts, without a server ----------------------------------------------------------------


def test_file_cache_hashes_each_version_once(tmp_path: Path) -> None:
    folder = tmp_path / "feeds"
    folder.mkdir()
    feed = folder / "rss.xml"
    feed.write_bytes(b"<?xml version='1.0'?>\n<rss version='2.0'>" + b"x" * 2000 + b"</rss>")
    cache = FileCache()
    static = StaticFolder(lambda: folder, cache=cache, cache_control=lambda _: "")
    path = static.locate("rss.xml")
    assert path is not None
    first = cache.load(path)
    for _ in range(5):
        assert cache.lookup(path, path.stat()) == first
    assert cache.loads == 1
    assert first.gz is not None and gzip.decompress(first.gz) == feed.read_bytes()
    stamp = path.stat()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    assert cache.lookup(path, path.stat()) is None  # touched: looked at again
    again = cache.load(path)
    assert again.etag == first.etag and cache.loads == 2  # same bytes, same validator


def test_media_types_come_from_the_content() -> None:
    atom = b"\xef\xbb\xbf<?xml version='1.0'?>\n<!-- made by us -->\n<feed xmlns='x'>"
    assert media_type_of(Path("tags/a.xml"), atom).startswith("application/atom+xml")
    assert media_type_of(Path("page-2.xml"), b"<rss version='2.0'>").startswith(
        "application/rss+xml"
    )
    assert media_type_of(Path("other.xml"), b"<urlset>").startswith("application/xml")
    jf = b'{"version": "https://jsonfeed.org/version/1.1", "title": "x"}'
    assert media_type_of(Path("tags/a.json"), jf) == "application/feed+json"
    assert media_type_of(Path("data.json"), b"{}") == "application/json"
    assert media_type_of(Path("logo.png"), b"") == "image/png"


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*;q=0.1, gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("gzip;q=abc", False),
    ],
)
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


# --- the command --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_command_serves_until_interrupted(built: Path) -> None:
    port = free_port()
    env = {**os.environ, "NEWSLETTER_SECRET": SECRET}
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(built), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                return False

        wait_for(healthy, timeout=20, interval=0.1)
        feed = requests.get(f"http://127.0.0.1:{port}/feeds/atom.xml", timeout=5)
        assert feed.headers["content-type"].startswith("application/atom+xml")
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert f"serving: http://127.0.0.1:{port}/".encode() in output


def test_serve_on_port_zero_announces_the_port_it_listens_on(built: Path) -> None:
    with serving(built, {**os.environ, "NEWSLETTER_SECRET": SECRET}) as (base, _):
        port = int(base.rsplit(":", 1)[1])  # printed once the socket is bound
        assert port != 0
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200


def test_serve_refuses_a_webhook_without_its_secret(built: Path) -> None:
    built.write_text(built.read_text() + '\n[web]\nmailgun_signing_key_env = "NO_SUCH_VAR_X"\n')
    env = {k: v for k, v in os.environ.items() if k != "NO_SUCH_VAR_X"}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(built), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 1
    message = " ".join(result.stderr.split())  # the terminal wraps long lines
    # The old [web] key still works (with a warning); the error names the key it became.
    expected = "mail.mailgun.webhook_signing_key_env: the environment variable $NO_SUCH_VAR_X"
    assert f"{expected} is not set" in message
