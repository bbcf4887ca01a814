"""Bounds on what a request may send before any endpoint reads it.

- ``BodyLimits`` (ASGI middleware): a body longer than ``max_bytes`` is refused with 413 (at
  once when ``Content-Length`` says so, else as soon as the count passes it), and a body that
  takes longer than ``timeout`` seconds to arrive is refused with 408; both close the
  connection, so the rest of the body is never read. A body within bounds is read whole and
  handed on, so the endpoints' own (smaller) limits and parsers see it unchanged. Requests
  without a body pass straight through.
- ``parse_json`` and ``BadBody`` live in ``newsletter.jsonsafe`` (the provider webhooks in
  ``mail`` read bodies with them too) and are re-exported here.

Owns: the size and time bounds. Does not own which endpoint parses JSON (``web.subscription``,
``web.webhooks``) nor the endpoints' own smaller limits.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.jsonsafe import MAX_JSON_DEPTH, BadBody, json_depth, parse_json

__all__ = [
    "BODY_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "BadBody",
    "BodyLimits",
    "json_depth",
    "parse_json",
]

MAX_BODY_BYTES = 5 * 1024 * 1024  # the largest body any public endpoint takes (a webhook batch)
BODY_TIMEOUT_SECONDS = 30.0  # a body must have arrived whole this long after its headers


class BodyLimits:
    """ASGI middleware bounding every request body's size and arrival time (see above)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int = MAX_BODY_BYTES,
        timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, 413, f"the request body is over {self.max_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._refuse(
                            send, 413, f"the request body is over {self.max_bytes} bytes"
                        )
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(
                send, 408, f"the request body did not arrive within {self.timeout:g} seconds"
            )
            return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send, status: int, reason: str) -> None:
        payload = json.dumps({"error": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    # The rest of the body is never read: the connection cannot carry another
                    # request after it.
                    (b"connection", b"close"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.strip()
            # h11 has checked it is digits; a length past any limit needs no exact value.
            return int(text) if text.isdigit() and len(text) < 19 else 2**63
    return None
