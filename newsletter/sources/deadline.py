"""A total deadline per fetch (connect, headers and body together), enforced by a watchdog.

``requests`` has only per-operation timeouts: each ``recv`` may wait ``timeout`` seconds, and a
server that sends one byte per second never lets one expire. Checking the clock between body
chunks does not help either, because ``Session.get`` returns only once the status line and
every header have arrived, and a server can dribble those too. So the deadline is enforced from
outside the fetching thread: one watchdog thread keeps a heap of the running fetches' deadlines
and, when one passes, shuts down the sockets that fetch is using. The blocked ``recv`` then
returns at once (an end of stream or an error) and the fetch fails; the caller asks
``Deadline.expired`` to tell that failure from any other.

The watchdog reaches the sockets through the connection classes of ``DeadlineAdapter``, which
``mount`` puts on a ``requests.Session``: each connection registers itself with the deadline of
the ``limit`` block running on its thread when it connects and before each request it sends, so
redirect hops and reused keep-alive connections count against the same deadline. Connecting
(including the TLS handshake) happens before there is a socket to shut; that phase is bounded by
giving the socket a timeout no longer than what is left, which CPython applies to
``connect`` and ``do_handshake`` as a whole, not per packet.

The watchdog only shuts sockets down; it never closes them. Closing belongs to the thread using
the connection (urllib3 closes a connection that failed): a TLS socket's file descriptor is read
by OpenSSL by number, and closing it from another thread could let a new socket take the number
while OpenSSL still reads from it.

Owns: the deadline, the watchdog thread, the adapter. Does not own: turning a passed deadline
into an error message (each caller names its source), per-read timeouts (still passed to
``requests`` as usual), name resolution (``getaddrinfo`` cannot be interrupted; it is not
bounded here).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
import urllib3.response

log = logging.getLogger(__name__)

__all__ = ["Deadline", "DeadlineAdapter", "limit", "mount"]

_LONGEST_WAIT = 60.0


class Deadline:
    """The deadline of one ``limit`` block. ``expired`` turns true once, when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        # Sockets, not connections: http.client hands a "Connection: close" socket over to the
        # response and forgets it (``connection.sock`` becomes None) before reading the body.
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._active = True

    @property
    def expired(self) -> bool:
        return self._expired

    @property
    def passed(self) -> bool:
        """The deadline has passed, whether or not the watchdog has acted on it yet."""
        return self._expired or self.remaining() <= 0

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        """Raise ``TimeoutError`` (which urllib3 reports as a timeout) if the deadline passed."""
        if self.passed:
            self._expired = True
            raise TimeoutError(f"the total deadline of {self.seconds:g}s has passed")

    def attach(self, sock: socket.socket | None) -> None:
        """Let the watchdog shut ``sock`` when the deadline passes; raise ``TimeoutError`` if it
        has passed already."""
        with self._lock:
            self.check()
            if sock is not None and not any(s is sock for s in self._sockets):
                self._sockets.append(sock)

    def _expire(self) -> None:
        """Called by the watchdog: mark the deadline passed and cut every attached socket."""
        with self._lock:
            if not self._active:
                return
            self._expired = True
            for sock in self._sockets:
                _shut(sock)

    def _finish(self) -> None:
        # Under the lock, so the watchdog never shuts a socket that has gone back to the pool
        # (and may be serving another fetch) after this block ended.
        with self._lock:
            self._active = False
            self._sockets.clear()


def _shut(sock: socket.socket | ssl.SSLSocket | None) -> None:
    if sock is None:
        return
    # Already closed, or not connected yet: then nothing is blocked on it.
    with contextlib.suppress(OSError):
        # socket.socket.shutdown, even for an SSLSocket: SSLSocket.shutdown also drops its
        # SSL object, which the fetching thread may be using at this very moment.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that expires deadlines in order; it runs only while there are any."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fetch-deadline-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def remove(self, deadline: Deadline) -> None:
        deadline._finish()
        with self._cond:
            self._heap = [entry for entry in self._heap if entry[2] is not deadline]
            heapq.heapify(self._heap)
            self._cond.notify()

    def _after_fork(self) -> None:
        # A forked child has none of the parent's threads: neither its fetches nor this one.
        self._cond = threading.Condition()
        self._heap = []
        self._thread = None

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # Also after an unexpected error, so the next ``add`` starts a new thread.
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._heap and (wait := self._heap[0][0] - time.monotonic()) > 0:
                    # In slices: Condition.wait refuses timeouts beyond threading.TIMEOUT_MAX.
                    self._cond.wait(min(wait, _LONGEST_WAIT))
                if not self._heap:
                    # Nothing left to watch: end the thread; the next ``add`` starts another.
                    self._thread = None
                    return
                _, _, due = heapq.heappop(self._heap)
            log.debug("fetch deadline of %gs passed: shutting its connections", due.seconds)
            due._expire()


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog._after_fork)
_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "fetch_deadline", default=None
)


@contextmanager
def limit(seconds: float) -> Iterator[Deadline]:
    """Run the block under a total deadline of ``seconds``.

    Every request the block makes on this thread through a session that ``mount`` prepared
    (redirects included) is cut off when the deadline passes. The block then sees whatever error
    the cut connection raised, or a response that ended early: it checks ``expired`` to know.
    """
    deadline = Deadline(seconds)
    token = _current.set(deadline)
    _watchdog.add(deadline)
    try:
        yield deadline
    finally:
        _watchdog.remove(deadline)
        _current.reset(token)


# --- the requests side ---------------------------------------------------------------------------


def _before_connect(connection: urllib3.connection.HTTPConnection) -> None:
    deadline = _current.get()
    if deadline is None:
        return
    deadline.check()
    # No socket to shut yet: bound connect + TLS handshake by a socket timeout instead.
    left = max(deadline.remaining(), 0.001)
    current = connection.timeout
    connection.timeout = min(current, left) if isinstance(current, int | float) else left


def _attach(connection: urllib3.connection.HTTPConnection) -> None:
    # After connecting (the watchdog may have fired while there was no socket to shut, or only
    # the raw socket of a TLS handshake), before each request (a reused keep-alive connection
    # connects no more) and before reading each response (the socket is the final one then).
    deadline = _current.get()
    if deadline is not None:
        deadline.attach(connection.sock)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        _before_connect(self)
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)

    # urllib3 narrows http.client's return type the same way (and ignores the same complaint).
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _attach(self)
        return super().getresponse()


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        _before_connect(self)
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)

    # urllib3 narrows http.client's return type the same way (and ignores the same complaint).
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _attach(self)
        return super().getresponse()


class _HTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """``HTTPAdapter`` whose connections answer to the ``limit`` block they run in.

    Outside a ``limit`` block it behaves exactly like ``HTTPAdapter``. (Connections through a
    SOCKS proxy use urllib3's SOCKS classes and are not covered.)"""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        manager: urllib3.PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def mount(session: requests.Session) -> requests.Session:
    """Make ``session``'s http and https requests obey ``limit`` blocks. Idempotent; returns
    ``session``. Keeps the adapters' other settings (retries, pool sizes) at their defaults, as
    a fresh session has them."""
    for prefix in ("https://", "http://"):
        if not isinstance(session.get_adapter(prefix), DeadlineAdapter):
            session.mount(prefix, DeadlineAdapter())
    return session
