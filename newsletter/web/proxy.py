"""Believe X-Forwarded-For, -Proto and -Host, but only from the reverse proxies we trust.

Behind nginx (or any reverse proxy) every request comes from the proxy's address, over plain
HTTP, with whatever Host the proxy chose. The proxy says who the client was and what it asked
for in ``X-Forwarded-*`` headers; anyone else could send the same headers, so they are read
only when the connection comes from an address or network in ``[web] trusted_proxies``.

- ``X-Forwarded-For``: the list is read from the right, skipping our own trusted proxies; the
  first address that is not one of them is the client (the per-IP rate limit counts it). An
  address further left was written by the client itself and proves nothing.
- ``X-Forwarded-Proto``: the last value, ``http`` or ``https``, becomes the request's scheme.
- ``X-Forwarded-Host``: the last value, if it is a plain host[:port], replaces ``Host`` (the
  same-origin check compares it with ``Origin``).

uvicorn's own ``--proxy-headers`` covers the first two only, and silently treats a malformed
entry in its allow list as a literal; this middleware covers all three, and the config check
refuses malformed entries (``config._web``). Links in mail and pages never come from these
headers: they are built from ``[newsletter] site_url``.

Owns: rewriting the ASGI scope's ``client``, ``scheme`` and ``host`` header. Does not own the
list of trusted proxies (the config) or anything done with the client's address.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class TrustedProxies:
    """ASGI middleware applying the forwarded headers of requests from ``trusted`` peers."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in trusted
        )
        # Asked for every request, mostly about the same few peers.
        self.trusts = functools.lru_cache(maxsize=4096)(self._trusts)

    def _trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a Unix socket path, or a name: not an address we listed
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.trusts(client[0]):
            self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: Scope) -> None:
        forwarded_for: list[str] = []
        proto: str | None = None
        host: str | None = None
        for name, raw in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for.extend(raw.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = raw.decode("latin-1").split(",")[-1].strip().lower()
            elif name == b"x-forwarded-host":
                host = raw.decode("latin-1").split(",")[-1].strip()
        if forwarded_for:
            client = self._client(
                [entry.strip() for entry in forwarded_for if entry.strip()], scope["client"]
            )
            scope["client"] = client
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        if host and _HOST.fullmatch(host):
            headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
            headers.append((b"host", host.encode("latin-1")))
            scope["headers"] = headers

    def _client(self, chain: list[str], peer: tuple[str, int]) -> tuple[str, int]:
        """The rightmost address in ``chain`` that is not a trusted proxy (else the leftmost)."""
        for entry in reversed(chain):
            address = _strip_port(entry)
            if not self.trusts(address):
                return address, 0
        return (_strip_port(chain[0]), 0) if chain else peer


def _strip_port(entry: str) -> str:
    """``1.2.3.4:5678`` -> ``1.2.3.4``; ``[::1]:80`` -> ``::1``; a bare IPv6 address as is."""
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.rsplit(":", 1)[0]
    return entry
