"""Run an app of ours under uvicorn.

The listening socket is bound here, before uvicorn starts, so that a port already in use is
one clear ``NewsletterError`` (uvicorn would log and exit the process), and so that port 0
gives the caller the port actually chosen (the tests run servers that way).

Owns: binding, uvicorn's settings, telling the app when the server shuts down (so that
long-lived responses such as event streams end at once instead of holding the shutdown up).
Does not own the app (``web.app``).
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from starlette.applications import Starlette

from newsletter.exceptions import NewsletterError

log = logging.getLogger(__name__)

# Seconds an open request may still take once the server is asked to stop; event streams
# end by themselves as soon as the app is told (see ``Server.shutdown``).
GRACEFUL_SECONDS = 3


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


def make_server(app: Starlette, *, stopping: threading.Event) -> Server:
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[bind(host, port)])``.

    uvicorn leaves the logging setup alone (the CLI made it) and logs no access lines.
    """
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        # uvicorn's own X-Forwarded-* handling stays off: the public site applies the headers
        # itself, from the proxies [web] trusts (web.proxy); the preview is never proxied.
        proxy_headers=False,
    )
    return Server(config, stopping=stopping)
