"""A real HTTP server on 127.0.0.1 for tests, with routes set per test and every request recorded.

Tests assert on the wire: which paths were requested, with which headers. Nothing here knows
about feeds; ``conditional`` is the one helper that speaks HTTP validators, because serving a
304 correctly is the server's job.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """What the server answers. ``delay`` waits before answering; ``chunked`` omits the length;
    ``reason`` replaces the status line's reason phrase."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunked: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class Seen:
    """One request as the server received it. Header names are lower-cased."""

    method: str
    path: str
    headers: Mapping[str, str]


Route = Reply | Callable[[Seen], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test, a size cap) closes its end; that is expected.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """``ThreadingHTTPServer`` on ("127.0.0.1", 0) in a thread. Use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = 10  # an idle keep-alive connection does not outlive a test by much

            def do_GET(self) -> None:
                outer._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, reply: Route) -> str:
        """Answer GET ``path`` (query ignored) with ``reply``; returns the full URL."""
        with self._lock:
            self._routes[path] = reply
        return self.url(path)

    def seen(self, path: str | None = None) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if path is None or urlsplit(r.path).path == path]

    def close(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        seen = Seen(
            method=h.command,
            path=h.path,
            headers={k.lower(): v for k, v in h.headers.items()},
        )
        with self._lock:
            self.requests.append(seen)
            route = self._routes.get(urlsplit(h.path).path)
        if route is None:
            reply = Reply(404, b"not found", {"Content-Type": "text/plain"})
        else:
            reply = route(seen) if callable(route) else route
        if reply.delay and self._stopping.wait(reply.delay):
            h.close_connection = True
            return
        h.send_response(reply.status, reply.reason)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        if reply.chunked:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for i in range(0, len(reply.body), 4096):
                chunk = reply.body[i : i + 4096]
                h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
            return
        if not any(k.lower() == "content-length" for k in reply.headers):
            h.send_header("Content-Length", str(0 if reply.status == 304 else len(reply.body)))
        h.end_headers()
        if reply.status != 304:
            h.wfile.write(reply.body)


def conditional(
    body: bytes,
    content_type: str,
    *,
    etag: str | None = '"v1"',
    last_modified: str | None = "Sun, 22 Nov 2026 07:00:00 GMT",
) -> Callable[[Seen], Reply]:
    """A route serving ``body`` with validators, answering 304 when the request matches them."""
    headers = {"Content-Type": content_type}
    if etag:
        headers["ETag"] = etag
    if last_modified:
        headers["Last-Modified"] = last_modified

    def handler(request: Seen) -> Reply:
        if_none_match = request.headers.get("if-none-match")
        if_modified_since = request.headers.get("if-modified-since")
        # RFC 9110, 13.2.2: If-None-Match wins; If-Modified-Since counts only without it.
        if (if_none_match is not None and etag is not None and if_none_match == etag) or (
            if_none_match is None
            and if_modified_since is not None
            and if_modified_since == last_modified
        ):
            return Reply(304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        return Reply(200, body, headers)

    return handler


def redirect(status: int, location: str) -> Reply:
    return Reply(status, headers={"Location": location, "Content-Length": "0"})
