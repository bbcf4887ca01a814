"""Run an app of ours under uvicorn.

The listening socket is bound here, before uvicorn starts, so that a port already in use is
one clear ``NewsletterError`` (uvicorn would log and exit the process), and so that port 0
gives the caller the port actually chosen (the tests run servers that way).

Connections are bounded too. uvicorn closes a keep-alive connection that stays silent for
``timeout_keep_alive``, but restarts that timer on every byte, and arms none before the first
request: a client sending half a header, or one byte a second, held a connection for ever. So
uvicorn's h11 protocol (pinned: the one installed, and the one whose states the wrapper reads)
is wrapped by ``bounded_h11``: a request's headers must be complete within ``header_timeout``
seconds of the connection's start or of the end of the previous response, else the connection
is closed. The body's own deadline is the app's (``web.limits.BodyLimits``). At most
``MAX_CONNECTIONS`` connections and requests at once; past that uvicorn answers 503.

Owns: binding, uvicorn's settings, the connection deadlines, telling the app when the server
shuts down (so that long-lived responses such as event streams end at once instead of holding
the shutdown up). Does not own the app (``web.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

import h11
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from newsletter.exceptions import NewsletterError

log = logging.getLogger(__name__)

# Seconds an open request may still take once the server is asked to stop; event streams
# end by themselves as soon as the app is told (see ``Server.shutdown``).
GRACEFUL_SECONDS = 3
HEADER_TIMEOUT_SECONDS = 10.0  # for a request's headers to arrive whole
KEEP_ALIVE_SECONDS = 5  # an idle connection (no byte at all) is closed after this
MAX_CONNECTIONS = 500  # open connections and running requests; past this, 503


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port). Raises NewsletterError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise NewsletterError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise NewsletterError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, which sets ``stopping`` first when it shuts down."""

    def __init__(self, config: uvicorn.Config, *, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.set()
        await super().shutdown(sockets)


class _BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (see the module
    docstring); ``header_timeout`` is set by ``bounded_h11``."""

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    _header_timer: asyncio.TimerHandle | None = None
    # The request/response cycle that was current when the timer was armed: a new cycle
    # means a new request's headers have been read.
    _armed_for: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._armed_for:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()
        # A pipelined request already read (a new cycle) has its headers: no deadline.
        if not self.transport.is_closing() and self.cycle is finished:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._armed_for = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.debug("closing a connection whose request headers took over %gs", self.header_timeout)
        if self.conn.our_state != h11.ERROR:
            with contextlib.suppress(h11.LocalProtocolError):  # mid-response: just close
                self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def bounded_h11(header_timeout: float = HEADER_TIMEOUT_SECONDS) -> type[H11Protocol]:
    """uvicorn's h11 protocol closing connections whose headers take over ``header_timeout``."""
    return type("BoundedH11", (_BoundedH11,), {"header_timeout": header_timeout})


def make_server(
    app: Starlette,
    *,
    stopping: threading.Event,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    keep_alive: int = KEEP_ALIVE_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> Server:
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[bind(host, port)])``.

    uvicorn leaves the logging setup alone (the CLI made it) and logs no access lines.
    """
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        http=bounded_h11(header_timeout),
        ws="none",  # no endpoint takes a WebSocket (the preview's live updates are SSE)
        timeout_keep_alive=keep_alive,
        limit_concurrency=max_connections,
        # uvicorn's own X-Forwarded-* handling stays off: the public site applies the headers
        # itself, from the proxies [web] trusts (web.proxy); the preview is never proxied.
        proxy_headers=False,
    )
    return Server(config, stopping=stopping)
