"""Fuzz every public endpoint of ``serve`` over real HTTP: whatever a client sends, the answer
is never a 5xx, a ``Location`` never points off the configured site, and the server goes on
serving.

One server for the module: ``newsletter serve`` in a subprocess (the example project, gathered,
its feeds and archive built, four subscribers, every webhook configured, 127.0.0.1 trusted as a
proxy so the forwarded headers are applied too); its own process, so its threads never touch
this one's random state while hypothesis draws, and its log is checked for tracebacks at the
end. Requests are written on raw sockets, so methods, targets and headers go
out as generated; webhooks are signed the way each provider signs (HTTP Basic for Postmark,
ECDSA for SendGrid, HMAC for Mailgun), so the payloads reach the parsers. The budget is
bounded (``max_examples``), the whole module well under a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests._browser import wait_for
from tests.conftest import EXAMPLES
from tests.test_web_feeds import EXAMPLE_SITE, SECRET, free_port
from tests.test_web_webhooks import (
    MAILGUN_KEY,
    PM_PASSWORD,
    PM_USER,
    WEB,
    public_key_text,
)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
ADDRESSES = ("reader@example.com", "hard@example.com", "spam@example.com", "other@example.com")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass(frozen=True)
class Fuzzed:
    url: str  # http://127.0.0.1:<port>, also the configured site_url (with "/")
    port: int
    sendgrid_key: ec.EllipticCurvePrivateKey
    unsubscribe_tokens: tuple[str, ...]
    confirm_tokens: tuple[str, ...]

    def request(
        self, method: str, target: bytes, headers: list[tuple[str, str]], body: bytes = b""
    ) -> Answer:
        """One request on its own connection; asserts the invariants on the answer."""
        lines = [method.encode("latin-1") + b" " + target + b" HTTP/1.1"]
        if not any(name.lower() == "host" for name, _ in headers):
            lines.append(b"Host: 127.0.0.1")
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
        lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
        with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            answer = Answer(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
            response.close()
        assert answer.status < 500, (method, target, headers, body[:200], answer)
        location = answer.headers.get("location")
        if location is not None:
            assert location.startswith(self.url + "/"), (method, target, headers, location)
            assert answer.status in (301, 302, 303, 307, 308)
        return answer

    def still_serving(self) -> None:
        assert requests.get(self.url + "/subscribe", timeout=10).status_code == 200
        assert requests.get(self.url + "/feeds/rss.xml", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    project = tmp_path_factory.mktemp("fuzz") / "project"
    shutil.copytree(EXAMPLES, project, ignore=shutil.ignore_patterns("*.db*"))
    config = project / "newsletter.toml"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    text = config.read_text().replace(EXAMPLE_SITE, f'site_url = "{url}/"')
    text = text.replace('output_dir = "../feeds"', 'output_dir = "feeds-out"')
    text = text.replace('outbox_dir = "../outbox"', 'outbox_dir = "outbox"')
    web = WEB + 'trusted_proxies = ["127.0.0.1"]\nsubscribe_rate_per_minute = 100000\n'
    config.write_text(text + "\n[web]\n" + web)
    key = ec.generate_private_key(ec.SECP256R1())
    env = {
        **os.environ,
        "NEWSLETTER_SECRET": SECRET,
        "TEST_PM_USER": PM_USER,
        "TEST_PM_PASSWORD": PM_PASSWORD,
        "TEST_SG_KEY": public_key_text(key),
        "TEST_MG_KEY": MAILGUN_KEY,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEWSLETTER_SECRET", SECRET)  # the tokens below are signed with it
        with make_publisher(load_config(config)) as publisher:
            publisher.gather()
            publisher.build_feeds()
            subscribers = [publisher.add_subscriber(a)[0] for a in ADDRESSES]
            assert publisher.send_digest().sent == len(ADDRESSES)  # an archive page
            unsubscribe = tuple(publisher.tokens.make(s.id, s.email) for s in subscribers)
            confirm = tuple(publisher.confirm_tokens.make(s.id, s.email) for s in subscribers)
    log = project / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "newsletter",
                "--config",
                str(config),
                "serve",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    fuzzed = Fuzzed(url, port, key, unsubscribe, confirm)
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return requests.get(url + "/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        fuzzed.still_serving()
        yield fuzzed
        fuzzed.still_serving()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "Traceback" not in output and "Exception in ASGI" not in output, output


# --- strategies ---------------------------------------------------------------------------------

METHODS = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    st.from_regex(r"[A-Z]{1,12}", fullmatch=True),
)
PREFIXES = st.sampled_from(
    [
        "/",
        "/subscribe",
        "/subscribe/",
        "/confirm/",
        "/unsubscribe/",
        "/feeds/",
        "/feeds/archive/",
        "/archive",
        "/archive/",
        "/webhooks/postmark",
        "/webhooks/sendgrid",
        "/webhooks/mailgun",
        "/webhooks/resend",
        "/healthz",
        "//",
        "/%2e%2e/",
    ]
)
TRICKY_SEGMENTS = st.sampled_from(
    [
        "..",
        "%2e%2e",
        ".hidden",
        "%00",
        "%0d%0aSet-Cookie:%20x=1",
        "%5c..%5c",
        "rss.xml",
        "atom.xml",
        "feed.json",
        "index.html",
        "%ff%fe",
        "%",
        "%zz",
        "//evil.example",
        "@evil.example",
        "https:%2f%2fevil.example",
        "a" * 300,
        "\u00e9t\u00e9",
    ]
)
SEGMENT = st.one_of(TRICKY_SEGMENTS, st.text(max_size=20))
URL_SAFE = "/%:@!$&'()*+,;=~.-_?"


@st.composite
def targets(draw: st.DrawFn, prefix: st.SearchStrategy[str] = PREFIXES) -> bytes:
    """A request target: a known prefix, some segments, maybe a trailing slash and a query."""
    path = draw(prefix) + "/".join(draw(st.lists(SEGMENT, max_size=3)))
    if draw(st.booleans()):
        path += "/"
    target = quote(path, safe=URL_SAFE).encode("ascii")
    if draw(st.booleans()):
        query = draw(st.text(max_size=40))
        target += b"?" + quote(query, safe=URL_SAFE + "#").encode("ascii")
    return target


HEADER_VALUE = st.one_of(
    st.sampled_from(
        [
            "evil.example",
            "evil.example:8443",
            "[::1",
            "http://[::1",
            "null",
            "http://evil.example",
            "https://127.0.0.1",
            "127.0.0.1, 10.0.0.1",
            "https",
            "gopher",
            "cross-site",
            "same-origin",
            "none",
            "application/json",
            "application/x-www-form-urlencoded",
            "gzip",
            "*",
            "bytes=0-1",
            'W/"x", *',
            "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
            "Basic !!!",
        ]
    ),
    # Header values as HTTP allows them: visible ASCII, spaces and obs-text, no CR/LF/NUL.
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=60,
    ).map(str.strip),
)
HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "X-Forwarded-Host",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "Origin",
        "Referer",
        "Sec-Fetch-Site",
        "Content-Type",
        "Accept",
        "Accept-Encoding",
        "If-None-Match",
        "If-Modified-Since",
        "Range",
        "Authorization",
        "Cookie",
        "Expect",
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Email-Event-Webhook-Timestamp",
    ]
)
# Half the time a forged Host and/or X-Forwarded-Host (127.0.0.1 is a trusted proxy here, so
# the latter is applied too): no redirect may follow either.
FORGED = st.sampled_from(
    [
        [],
        [("Host", "evil.example")],
        [("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")],
        [("Host", "evil.example:8080"), ("X-Forwarded-Host", "evil.example")],
    ]
)
HEADERS = st.builds(
    lambda forged, other: forged + other,
    st.one_of(st.just([]), FORGED),
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUE), max_size=6),
)
TIMESTAMPS = st.one_of(
    st.from_regex(r"[0-9]{0,20}", fullmatch=True),
    st.integers(13, 450).map(lambda n: "9" * n),  # past any float: 401 digits was a 500
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "application/merge-patch+json",
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "multipart/form-data; boundary=x",
        "text/plain",
        "",
    ]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
RAW_JSON = st.sampled_from(
    [
        b"[" * 5000,
        b"[" * 40 + b"]" * 40,
        b'{"a":' * 50 + b"1" + b"}" * 50,
        b"9" * 5000,
        b"1e999999",
        b"-1e999999",
        b"NaN",
        b"Infinity",
        b'"\\ud800"',
        b'{"email": "\\udc00@example.com"}',
        b"\xff\xfe\x00[",
        b"\xef\xbb\xbf{}",
        b"",
        b"{",
        b"[1, 2,]",
    ]
)


def _as_number(digits: str) -> int | str:
    return int(digits) if digits.isdigit() and len(digits) < 4000 else digits


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(json_bytes),
    RAW_JSON,
    st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4).map(
        lambda d: urlencode(d).encode()
    ),
)


# --- anything, anywhere -------------------------------------------------------------------------


@FUZZ
@given(method=METHODS, target=targets(), headers=HEADERS, body=BODIES)
def test_any_request_anywhere(
    site: Fuzzed, method: str, target: bytes, headers: list[tuple[str, str]], body: bytes
) -> None:
    site.request(method, target, headers, body if method not in ("GET", "HEAD") else b"")


@FUZZ
@given(
    target=targets(st.sampled_from(["/feeds/", "/archive/", "/feeds/archive/", "/archive"])),
    method=st.sampled_from(["GET", "HEAD"]),
    headers=HEADERS,
)
def test_feeds_and_archive_paths(
    site: Fuzzed, target: bytes, method: str, headers: list[tuple[str, str]]
) -> None:
    answer = site.request(method, target, headers)
    assert answer.status in (200, 206, 301, 304, 307, 400, 404, 405, 412, 416), answer


# --- subscription endpoints ---------------------------------------------------------------------


@FUZZ
@given(
    body=st.one_of(
        BODIES,
        st.fixed_dictionaries(
            {"email": st.one_of(st.emails(), st.text(max_size=40)), "name": st.text(max_size=40)}
        ).map(json_bytes),
        st.fixed_dictionaries(
            {"email": st.one_of(st.emails(), st.text(max_size=40)), "name": st.text(max_size=40)}
        ).map(lambda d: urlencode(d).encode()),
    ),
    content_type=CONTENT_TYPES,
    headers=HEADERS,
)
def test_subscribe_bodies(
    site: Fuzzed, body: bytes, content_type: str, headers: list[tuple[str, str]]
) -> None:
    headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
    answer = site.request("POST", b"/subscribe", [("Content-Type", content_type), *headers], body)
    assert answer.status in (200, 202, 400, 403, 413, 415, 429), answer


@st.composite
def tokens(draw: st.DrawFn, real: tuple[str, ...]) -> str:
    """A real token, one altered, or anything."""
    kind = draw(st.sampled_from(["real", "altered", "cut", "any"]))
    token = draw(st.sampled_from(real))
    if kind == "altered":
        at = draw(st.integers(0, len(token) - 1))
        return token[:at] + draw(st.text(min_size=1, max_size=3)) + token[at + 1 :]
    if kind == "cut":
        return token[: draw(st.integers(0, len(token)))]
    if kind == "any":
        return draw(st.text(max_size=80))
    return token


@FUZZ
@given(
    data=st.data(),
    route=st.sampled_from(["confirm", "unsubscribe"]),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    body=st.one_of(st.just(b"List-Unsubscribe=One-Click"), st.binary(max_size=100)),
    headers=HEADERS,
)
def test_confirm_and_unsubscribe_links(
    site: Fuzzed,
    data: st.DataObject,
    route: str,
    method: str,
    body: bytes,
    headers: list[tuple[str, str]],
) -> None:
    real = site.confirm_tokens if route == "confirm" else site.unsubscribe_tokens
    token = data.draw(tokens(real))
    target = f"/{route}/{quote(token, safe='')}".encode("ascii")
    if data.draw(st.booleans()):
        target += b"/"  # the trailing-slash redirect, with whatever Host was sent
    answer = site.request(method, target, headers, body if method == "POST" else b"")
    # The confirm button refuses a POST from another site (a forged Origin); the one-click
    # unsubscribe takes any POST (RFC 8058).
    refused = (403,) if route == "confirm" and method == "POST" else ()
    assert answer.status in (200, 307, 400, 404, 405, 410, 413, *refused), answer


# --- provider webhooks, signed as each provider signs -------------------------------------------

EMAILS = st.one_of(st.sampled_from(ADDRESSES), st.emails(), st.text(max_size=30), JSON_SCALARS)


def loosely(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with these fields, each sometimes missing or of another JSON type."""
    return st.fixed_dictionaries(
        {},
        optional={name: st.one_of(strategy, JSON_VALUES) for name, strategy in fields.items()},
    )


POSTMARK_EVENTS = loosely(
    {
        "RecordType": st.sampled_from(["Bounce", "SpamComplaint", "SubscriptionChange"]),
        "Type": st.sampled_from(["HardBounce", "BadEmailAddress", "SoftBounce", "SpamComplaint"]),
        "Email": EMAILS,
        "Recipient": EMAILS,
        "SuppressSending": st.booleans(),
        "SuppressionReason": st.sampled_from(["HardBounce", "SpamComplaint", "ManualSuppression"]),
        "Description": st.text(max_size=50),
        "Details": st.text(max_size=50),
    }
)
SENDGRID_EVENTS = st.lists(
    loosely(
        {
            "event": st.sampled_from(["bounce", "spamreport", "dropped", "delivered"]),
            "type": st.sampled_from(["bounce", "blocked"]),
            "email": EMAILS,
            "reason": st.sampled_from(["Bounced Address", "spam reporting address", "x"]),
        }
    ),
    max_size=5,
)
MAILGUN_EVENTS = loosely(
    {
        "event": st.sampled_from(["failed", "complained", "delivered"]),
        "severity": st.sampled_from(["permanent", "temporary"]),
        "reason": st.sampled_from(["bounce", "suppress-bounce", "suppress-complaint", "generic"]),
        "recipient": EMAILS,
        "delivery-status": loosely({"description": st.text(max_size=40), "message": JSON_VALUES}),
    }
)


def payload_bytes(events: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(events.map(json_bytes), JSON_VALUES.map(json_bytes), RAW_JSON)


@FUZZ
@given(body=payload_bytes(POSTMARK_EVENTS), headers=HEADERS)
@example(body=b'{"RecordType": "Bounce", "Type": []}', headers=[])  # found by this test
def test_postmark_payloads(site: Fuzzed, body: bytes, headers: list[tuple[str, str]]) -> None:
    headers = [(n, v) for n, v in headers if n.lower() != "authorization"]
    auth = base64.b64encode(f"{PM_USER}:{PM_PASSWORD}".encode()).decode()
    answer = site.request(
        "POST", b"/webhooks/postmark", [("Authorization", f"Basic {auth}"), *headers], body
    )
    assert answer.status in (200, 400), answer


@FUZZ
@given(
    body=payload_bytes(SENDGRID_EVENTS),
    timestamp=st.one_of(st.none(), TIMESTAMPS),
)
def test_sendgrid_payloads(site: Fuzzed, body: bytes, timestamp: str | None) -> None:
    fresh = timestamp is None
    stamp = str(int(time.time())) if timestamp is None else timestamp
    signature = site.sendgrid_key.sign(stamp.encode("latin-1") + body, ec.ECDSA(hashes.SHA256()))
    headers = [
        ("X-Twilio-Email-Event-Webhook-Signature", base64.b64encode(signature).decode()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", stamp),
        ("Content-Type", "application/json"),
    ]
    answer = site.request("POST", b"/webhooks/sendgrid", headers, body)
    assert answer.status in ((200, 400) if fresh else (200, 400, 403)), answer


@FUZZ
@given(
    event=st.one_of(MAILGUN_EVENTS, JSON_VALUES),
    timestamp=st.one_of(st.none(), TIMESTAMPS, TIMESTAMPS.map(_as_number), JSON_SCALARS),
    token=st.one_of(st.none(), st.text(max_size=60)),
    extra=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2),
    raw=st.one_of(st.none(), RAW_JSON),
)
def test_mailgun_payloads(
    site: Fuzzed,
    event: Any,
    timestamp: Any,
    token: str | None,
    extra: dict[str, Any],
    raw: bytes | None,
) -> None:
    fresh = timestamp is None and token is None
    stamp = str(int(time.time())) if timestamp is None else timestamp
    token = secrets.token_hex(25) if token is None else token
    message = (str(stamp) + token).encode("utf-8", "surrogatepass")
    signature = hmac.new(MAILGUN_KEY.encode(), message, hashlib.sha256).hexdigest()
    payload = {
        **extra,
        "signature": {"timestamp": stamp, "token": token, "signature": signature},
        "event-data": event,
    }
    if raw is not None:  # the signature block, then something the parser must refuse
        body = json.dumps(payload)[:-1].encode() + b', "x": ' + raw + b"}"
    else:
        body = json.dumps(payload).encode()
    answer = site.request(
        "POST", b"/webhooks/mailgun", [("Content-Type", "application/json")], body
    )
    assert answer.status in ((200, 400) if fresh else (200, 400, 403)), answer
    # (A raw 1e999999 is JSON, inf, harmless where it lands: so 200 or 400 for raw bodies.)
    if fresh and raw is None and isinstance(event, dict):
        assert answer.status == 200, answer  # signed, fresh, an object: read, acted on or not
