"""``serve`` against hostile clients, over real HTTP on 127.0.0.1: bodies too large or too
deep, malformed provider payloads (400 with a reason, never a 500), redirects that stay on
the configured site whatever Host a request claims, and connections that dribble their
headers or idle (closed within the bound, while normal requests go on being served).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import clock
from newsletter.config import load_config
from newsletter.mail.sendgrid_webhook import sendgrid_suppressions
from newsletter.types import SubscriberStatus
from newsletter.web.app import create_app
from newsletter.web.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH, BodyLimits, json_depth
from newsletter.web.public import create_public_app
from newsletter.web.redirects import on_site
from newsletter.web.site import Site
from tests._browser import ServerThread
from tests.test_web_feeds import Running, running_site
from tests.test_web_webhooks import (
    MAILGUN_KEY,
    PM_PASSWORD,
    PM_USER,
    UNCHANGED,
    link_secret,
    mailgun_failed,
    mailgun_payload,
    sendgrid_key,
    site,
    statuses,
)

__all__ = ["link_secret", "sendgrid_key", "site"]  # fixtures, imported to apply here too

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000  # Python's parser gives up at about 1,000


def raw_request(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    """Send ``data`` on a new connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_of(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert found is not None, answer[:200]
    return int(found.group(1))


def still_serving(site: Running) -> None:
    assert requests.get(site.url + "/subscribe", timeout=10).status_code == 200


# --- bodies: size and depth, before parsing -----------------------------------------------------


def test_deep_json_on_subscribe_is_400_with_the_reason(site: Running) -> None:
    nested: Any = "x@example.com"
    for _ in range(MAX_JSON_DEPTH + 5):
        nested = {"email": nested}
    small_deep = json.dumps(nested).encode()
    for body in (
        DEEP_ARRAY[:16_000],
        b'{"email": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        small_deep,
    ):
        response = requests.post(
            site.url + "/subscribe",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, response.text
        assert f"more than {MAX_JSON_DEPTH} levels" in response.json()["error"]
    for body, reason in ((b'{"email": "\xff"}', "not UTF-8"), (b'{"email": NaN}', "NaN")):
        response = requests.post(
            site.url + "/subscribe",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400 and reason in response.json()["error"], response.text
    surrogate = requests.post(
        site.url + "/subscribe",
        data=b'{"email": "a@example.com", "name": "\\ud800"}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["error"]
    still_serving(site)


def test_deep_json_on_the_mailgun_webhook_is_400_with_the_reason(site: Running) -> None:
    signed = mailgun_payload(mailgun_failed("hard@example.com", "permanent"))
    deep = json.dumps(signed)[:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    for body in (DEEP_ARRAY, deep.encode()):
        response = requests.post(
            site.url + "/webhooks/mailgun",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 400, response.text
        assert f"more than {MAX_JSON_DEPTH} levels" in response.json()["error"]
    assert statuses(site) == UNCHANGED
    still_serving(site)


def test_a_401_digit_timestamp_is_refused_not_a_crash(
    site: Running, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    huge = "9" * 401
    body = b'[{"email": "hard@example.com", "event": "bounce"}]'
    signature = sendgrid_key.sign(huge.encode() + body, ec.ECDSA(hashes.SHA256()))
    for timestamp in (huge, "-" + huge, "1_700_000_000", "\u00b2", "", "1e9"):
        response = requests.post(
            site.url + "/webhooks/sendgrid",
            data=body,
            headers={
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            },
            timeout=10,
        )
        assert response.status_code == 403, (timestamp, response.text)
        assert response.json() == {"error": "missing or malformed timestamp"}
    token = secrets.token_hex(25)
    for timestamp in (huge, int(huge), float("1e300"), "\u0661\u0662"):
        mac = hmac.new(MAILGUN_KEY.encode(), (str(timestamp) + token).encode(), hashlib.sha256)
        payload = {
            "signature": {"timestamp": timestamp, "token": token, "signature": mac.hexdigest()},
            "event-data": mailgun_failed("hard@example.com", "permanent"),
        }
        response = requests.post(site.url + "/webhooks/mailgun", json=payload, timeout=10)
        assert response.status_code == 403, (timestamp, response.text)
        assert response.json() == {"error": "missing or malformed timestamp"}
    assert statuses(site) == UNCHANGED


def signed_sendgrid(key: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, str]:
    timestamp = str(int(clock.now().timestamp()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def test_malformed_provider_payloads_are_400_with_a_reason(
    site: Running, sendgrid_key: ec.EllipticCurvePrivateKey
) -> None:
    """Properly signed, so each reaches the parser; none is a 500, none changes anything."""
    bad_bodies = {
        b'{"email": "hard@example.com", "event": "bounce"}': "expected a JSON array",
        b'"a string"': "expected a JSON",
        b"1e999999": "expected a JSON",
        b"9" * 5_000: "not JSON",  # past Python's limit for int()
        b'[{"email": "hard@example.com", "event": "bounce", "reason": NaN}]': "NaN",
        b"\xff\xfe[]": "not UTF-8",
        b'[{"email": "hard\\udfff@example.com", "event": "bounce"}]': "surrogate",
        b"[" * 40 + b"]" * 40: f"more than {MAX_JSON_DEPTH}",
        b"": "not JSON",
    }
    for body, reason in bad_bodies.items():
        sendgrid = requests.post(
            site.url + "/webhooks/sendgrid",
            data=body,
            headers=signed_sendgrid(sendgrid_key, body),
            timeout=10,
        )
        assert sendgrid.status_code == 400, (body[:60], sendgrid.text)
        assert reason in sendgrid.json()["error"], (body[:60], sendgrid.text)
        if body.startswith(b"{"):
            continue  # an object is what Postmark sends
        postmark = requests.post(
            site.url + "/webhooks/postmark", data=body, auth=(PM_USER, PM_PASSWORD), timeout=10
        )
        assert postmark.status_code == 400 and postmark.json()["error"], (body[:60], postmark.text)
    # Right shape, wrong types inside: nothing to act on, and said so (not retried forever).
    odd_types: list[Any] = [
        {"event": "failed", "severity": "permanent", "reason": ["bounce"], "recipient": 5},
        {"event": "complained", "recipient": {"email": "hard@example.com"}},
        {"event": ["complained"], "recipient": None},
    ]
    for event in odd_types:
        response = requests.post(
            site.url + "/webhooks/mailgun", json=mailgun_payload(event), timeout=10
        )
        assert response.status_code == 200 and response.json() == {"suppressed": 0, "ignored": 0}
    for odd in ({"RecordType": "Bounce", "Type": []}, {"RecordType": ["Bounce"], "Email": 1}):
        response = requests.post(
            site.url + "/webhooks/postmark", json=odd, auth=(PM_USER, PM_PASSWORD), timeout=10
        )
        assert response.status_code == 200 and response.json() == {"suppressed": 0, "ignored": 0}
    for payload in ({"signature": "nope", "event-data": {}}, [1, 2], {"event-data": []}):
        response = requests.post(site.url + "/webhooks/mailgun", json=payload, timeout=10)
        assert response.status_code in (400, 403) and response.json()["error"], payload
    # A signature that is not hex, even one that is not ASCII, is just a bad signature.
    payload = mailgun_payload(mailgun_failed("hard@example.com", "permanent"))
    payload["signature"]["signature"] = "\u00e9" * 64
    response = requests.post(site.url + "/webhooks/mailgun", json=payload, timeout=10)
    assert response.status_code == 403 and response.json() == {"error": "bad signature"}
    body = json.dumps([{"email": "hard@example.com", "event": "bounce", "reason": "x\x00" * 9000}])
    signed = requests.post(
        site.url + "/webhooks/sendgrid",
        data=body.encode(),
        headers=signed_sendgrid(sendgrid_key, body.encode()),
        timeout=10,
    )
    assert signed.status_code == 200 and signed.json() == {"suppressed": 1, "ignored": 0}
    assert statuses(site)["hard@example.com"] == SubscriberStatus.BOUNCED
    (kept,) = sendgrid_suppressions(json.loads(body))
    assert kept.reason.startswith("sendgrid bounce: x x x") and len(kept.reason) == 500
    still_serving(site)


def test_bodies_over_the_limit_are_413_before_they_are_read(site: Running) -> None:
    port = site.server.port
    for path in ("/webhooks/mailgun", "/webhooks/postmark", "/subscribe", "/unsubscribe/x"):
        # Only the headers are sent: the answer comes without waiting for the body.
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
        ).encode()
        answer = raw_request(port, head)
        assert status_of(answer) == 413, (path, answer)
        assert b"connection: close" in answer.lower() and b"over" in answer
    # No length said: counted as it comes. One byte over is sent, and nothing after it (a
    # client still sending when the server closes would get a reset instead of the answer).
    chunk = b"x" * (MAX_BODY_BYTES // 8)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"1\r\nx\r\n"
    answer = raw_request(
        port,
        b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked,
    )
    assert status_of(answer) == 413
    form = requests.post(site.url + "/subscribe", data={"email": "x" * 20_000}, timeout=10)
    assert form.status_code == 413
    still_serving(site)


@contextmanager
def echo_server(config: Path, **limits: Any) -> Iterator[ServerThread]:
    """A bare app (no endpoint of ours) behind ``BodyLimits(**limits)`` that answers with the
    length of the body it was handed."""

    def echo(site: Site) -> list[BaseRoute]:
        async def length(request: Request) -> Response:
            return JSONResponse({"length": len(await request.body())})

        return [Route("/echo", length, methods=["POST"])]

    app = create_app(config, concerns=[echo], middleware=[Middleware(BodyLimits, **limits)])
    with ServerThread(app) as server:
        yield server


def test_a_body_dribbled_past_its_deadline_is_408(example_project: Path) -> None:
    with echo_server(example_project, max_bytes=1000, timeout=1.0) as server:
        assert requests.post(server.url + "/echo", data=b"y" * 1000, timeout=10).json() == {
            "length": 1000
        }
        with closing(socket.create_connection(("127.0.0.1", server.port), timeout=10)) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            start = time.monotonic()
            answer = b""
            for _ in range(10):
                try:
                    sock.sendall(b"z")
                except OSError:
                    break
                answer += _recv_now(sock)
                if answer:
                    break
                time.sleep(0.5)
            answer += _recv_all(sock)
        assert status_of(answer) == 408 and b"did not arrive within 1 seconds" in answer
        assert time.monotonic() - start < 3
        assert requests.post(server.url + "/echo", data=b"", timeout=10).json() == {"length": 0}


def _recv_now(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def _recv_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}], "c": "\\"[[["}', stop_after=10) == 3
    assert json_depth(b'"\\\\"[[]]', stop_after=10) == 2  # an escaped backslash ends no string
    assert json_depth(b"[" * 1_000_000, stop_after=32) == 33  # stops counting once over
    assert json_depth(b'"unterminated [[[', stop_after=10) == 0
    started = time.monotonic()
    json_depth(b'"\\"' * 1_000_000, stop_after=32)  # no quadratic rescans
    assert time.monotonic() - started < 2


# --- redirects stay on the configured site ------------------------------------------------------


def test_redirects_use_the_site_url_whatever_host_is_claimed(example_project: Path) -> None:
    with running_site(example_project, web='trusted_proxies = ["127.0.0.1"]\n') as site:
        forged = [
            {"Host": "evil.example"},
            {
                "Host": "evil.example",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Proto": "https",
            },
            {"X-Forwarded-Host": "evil.example:8443"},
        ]
        expected = {
            "/subscribe/": "/subscribe",
            "/subscribe/?email=a%40b.example": "/subscribe?email=a%40b.example",
            "/": "/subscribe",
            "/archive": "/archive/",
            "/confirm/abc%0d%0aSet-Cookie:%20x=1/": "/confirm/abc%0D%0ASet-Cookie:%20x=1",
            "/unsubscribe/t%C3%A9/": "/unsubscribe/t%C3%A9",
            "//evil.example/": None,  # no route: a 404, not a redirect off the site
        }
        for headers in forged:
            for path, target in expected.items():
                answer = raw_request(
                    site.server.port,
                    f"GET {path} HTTP/1.1\r\nConnection: close\r\n".encode()
                    + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                    + (b"" if "Host" in headers else b"Host: 127.0.0.1\r\n")
                    + b"\r\n",
                )
                location = re.search(rb"\r\nlocation: ([^\r]*)\r\n", answer, re.IGNORECASE)
                if target is None:
                    assert status_of(answer) == 404 and location is None, answer
                    continue
                assert status_of(answer) in (301, 302, 307), (path, answer)
                assert location is not None
                assert location.group(1).decode() == site.url + target, (path, headers)
        # And followed, each lands on a working page of this site.
        final = requests.get(site.url + "/subscribe/", headers={"Host": "evil.example"}, timeout=10)
        assert final.status_code == 200 and final.url == site.url + "/subscribe"


def test_a_redirect_without_a_readable_config_is_503(example_project: Path) -> None:
    with running_site(example_project) as site:
        good = site.config.read_text()
        site.config.write_text(good.replace("[newsletter]", "[newsletter\n", 1))
        for path in ("/", "/subscribe/", "/archive"):
            response = requests.get(site.url + path, allow_redirects=False, timeout=10)
            assert response.status_code == 503 and "location" not in response.headers, path
        site.config.write_text(good)
        response = requests.get(site.url + "/", allow_redirects=False, timeout=10)
        assert response.headers["location"] == site.url + "/subscribe"


def test_on_site_keeps_path_query_and_the_site_prefix() -> None:
    base = "https://news.example.org/weekly/"
    assert on_site("http://evil.example/subscribe?x=1#f", request_path="/", site_url=base) == (
        "https://news.example.org/weekly/subscribe?x=1#f"
    )
    assert on_site("//evil.example/a", request_path="/", site_url=base) == base + "a"
    assert on_site("/archive/", request_path="/archive", site_url=base) == base + "archive/"
    assert on_site("next", request_path="/archive/2026/", site_url=base) == (
        base + "archive/2026/next"
    )
    assert on_site("http://[::1/x", request_path="/", site_url=base) == base
    assert on_site("/a b\r\nX: y", request_path="/", site_url=base) == base + "a%20bX:%20y"


# --- connection deadlines -----------------------------------------------------------------------


@pytest.fixture
def bounded(example_project: Path, link_secret: None) -> Iterator[ServerThread]:
    """The public site with a 2 s header deadline and a 1 s keep-alive, at most 6 connections."""
    app = create_public_app(
        example_project, trusted_proxies=load_config(example_project).web.trusted_proxies
    )
    with ServerThread(app, header_timeout=2.0, keep_alive=1, max_connections=6) as server:
        yield server


GET = b"GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
SLACK = 1.5


def closed_after(sock: socket.socket, *, dribble: bytes = b"", every: float = 1.0) -> float:
    """Seconds until the server closes ``sock``, sending ``dribble`` a byte every ``every`` s."""
    start = time.monotonic()
    sock.settimeout(every)
    for byte in [dribble[i : i + 1] for i in range(len(dribble))] or [b""] * 30:
        if byte:
            try:
                sock.sendall(byte)
            except OSError:  # reset: closed
                return time.monotonic() - start
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
        raise AssertionError(f"unexpected answer {data[:100]!r}")
    raise AssertionError("the connection was never closed")


def test_half_a_header_then_silence_is_cut_off(bounded: ServerThread) -> None:
    with closing(socket.create_connection(("127.0.0.1", bounded.port))) as sock:
        sock.sendall(b"GET /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
        assert 1.5 < closed_after(sock) < 2.0 + SLACK
    with closing(socket.create_connection(("127.0.0.1", bounded.port))) as sock:
        assert 1.5 < closed_after(sock) < 2.0 + SLACK  # not a byte, ever
    assert requests.get(bounded.url + "/subscribe", timeout=10).status_code == 200


def test_a_header_dribbled_a_byte_a_second_is_cut_off(bounded: ServerThread) -> None:
    with closing(socket.create_connection(("127.0.0.1", bounded.port))) as sock:
        elapsed = closed_after(sock, dribble=GET * 3, every=0.5)
    assert 1.5 < elapsed < 2.0 + SLACK
    with closing(socket.create_connection(("127.0.0.1", bounded.port))) as sock:
        elapsed = closed_after(sock, dribble=b"GET /subscribe HTTP/1.1\r\nX: " + b"y" * 40)
    assert 1.5 < elapsed < 2.0 + SLACK
    assert requests.get(bounded.url + "/subscribe", timeout=10).status_code == 200


def test_keep_alive_connections_serve_then_close_when_idle_or_dribbling(
    bounded: ServerThread,
) -> None:
    with closing(socket.create_connection(("127.0.0.1", bounded.port), timeout=10)) as sock:
        for _ in range(3):  # several requests on one connection, each answered
            sock.sendall(GET)
            answer = sock.recv(65536)
            while b"</html>" not in answer:
                answer += sock.recv(65536)
            assert status_of(answer) == 200
        assert closed_after(sock) < 1.0 + SLACK  # idle: the keep-alive timeout
    with closing(socket.create_connection(("127.0.0.1", bounded.port), timeout=10)) as sock:
        sock.sendall(GET)
        answer = sock.recv(65536)
        assert status_of(answer) == 200
        while b"</html>" not in answer:
            answer += sock.recv(65536)
        # A byte at a time after the answer restarts uvicorn's keep-alive timer each time,
        # but the next request's headers are due 2 s after the previous answer.
        assert 1.5 < closed_after(sock, dribble=GET, every=0.5) < 2.0 + SLACK


def test_connections_past_the_limit_get_503_until_some_close(bounded: ServerThread) -> None:
    idle = [socket.create_connection(("127.0.0.1", bounded.port)) for _ in range(6)]
    try:
        time.sleep(0.2)
        assert (
            status_of(
                raw_request(
                    bounded.port, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                )
            )
            == 503
        )
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert requests.get(bounded.url + "/subscribe", timeout=10).status_code == 200
