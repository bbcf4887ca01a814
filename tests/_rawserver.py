"""A raw TCP server on 127.0.0.1 for tests of misbehaving peers: each connection runs a script.

``http.server`` always answers whole lines at once; a server that dribbles its status line one
byte per second, or accepts and then says nothing, needs the socket itself. A script gets the
accepted socket (with the request already read) and ``Pace``, whose ``wait`` returns early once
the server is closing, so a test never waits for a script to run out.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType

Script = Callable[[socket.socket, "Pace"], None]


class Pace:
    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False once the server is closing (the script should return)."""
        return not self._stopping.wait(seconds)

    def drip(self, conn: socket.socket, data: bytes, every: float) -> None:
        """Send ``data`` one byte per ``every`` seconds, until done, the client leaves or the
        server closes."""
        for i in range(len(data)):
            try:
                conn.sendall(data[i : i + 1])
            except OSError:
                return  # the client cut the connection: what a deadline is for
            if not self.wait(every):
                return


class RawServer:
    """Accepts on ("127.0.0.1", 0); every connection runs ``script`` in its own thread."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._tls = tls
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, path: str = "/feed.xml") -> str:
        host, port = self._listener.getsockname()[:2]
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{port}{path}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = self._tls.wrap_socket(raw, server_side=True) if self._tls else raw
        except OSError:
            raw.close()
            return
        with conn:
            request = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
            with contextlib.suppress(OSError):
                self._script(conn, Pace(self._stopping))

    def close(self) -> None:
        self._stopping.set()
        self._accepting.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
