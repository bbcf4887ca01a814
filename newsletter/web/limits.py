"""Bounds on what a request may send before any endpoint reads it, and a JSON reader that
refuses what would break the code after it.

- ``BodyLimits`` (ASGI middleware): a body longer than ``max_bytes`` is refused with 413 (at
  once when ``Content-Length`` says so, else as soon as the count passes it), and a body that
  takes longer than ``timeout`` seconds to arrive is refused with 408; both close the
  connection, so the rest of the body is never read. A body within bounds is read whole and
  handed on, so the endpoints' own (smaller) limits and parsers see it unchanged. Requests
  without a body pass straight through.
- ``parse_json``: the body as JSON, or ``BadBody`` with a reason a client can act on: not
  UTF-8, nested deeper than ``MAX_JSON_DEPTH`` (counted on the raw text before parsing, since
  Python's parser recurses and a few thousand brackets end it with ``RecursionError``), not
  JSON, ``NaN``/``Infinity`` (not JSON either), or a string holding a lone surrogate (which
  no database or mail header can take).

Owns: the numbers and the reasons. Does not own which endpoint parses JSON (``web.subscription``,
``web.webhooks``) nor the endpoints' own smaller limits.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 5 * 1024 * 1024  # the largest body any public endpoint takes (a webhook batch)
BODY_TIMEOUT_SECONDS = 30.0  # a body must have arrived whole this long after its headers
MAX_JSON_DEPTH = 32  # the providers' payloads nest 4 or 5 deep; ours 1

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadBody(ValueError):
    """A body that cannot be read as the endpoint expects; ``reason`` says why, for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_depth(body: bytes, *, stop_after: int) -> int:
    """How deep the arrays and objects in ``body`` nest, counting no further than
    ``stop_after + 1`` (enough to refuse). Brackets inside strings are not counted.

    Linear in the body: escapes go first (a backslash outside a string is invalid JSON
    anyway), after which every remaining quote opens or closes a string.
    """
    outside = b"".join(_ESCAPE.sub(b"", body).split(b'"')[::2])
    depth = deepest = 0
    for byte in outside.translate(None, _NOT_BRACKET):
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    break
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise BadBody(f"{name} is not a JSON number")


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``body`` parsed as JSON; raises ``BadBody`` (see the module docstring)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadBody("the body is not UTF-8") from e
    if json_depth(body, stop_after=max_depth) > max_depth:
        raise BadBody(f"the JSON nests more than {max_depth} levels deep")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except BadBody:
        raise
    except (ValueError, RecursionError) as e:
        # RecursionError only if the depth count above were wrong; never a 500 either way.
        raise BadBody("the body is not JSON") from e
    if _has_lone_surrogate(value):
        raise BadBody("the JSON holds an unpaired surrogate (\\ud800-\\udfff) in a string")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    # Iterative: the depth is bounded already, but a stack costs nothing.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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
