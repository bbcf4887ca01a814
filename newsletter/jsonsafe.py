"""A JSON reader that refuses what would break the code after it: ``parse_json`` gives the
body as JSON, or ``BadBody`` with a reason a client can act on: not UTF-8, nested deeper than
``MAX_JSON_DEPTH`` (counted on the raw text before parsing, since Python's parser recurses and
a few thousand brackets end it with ``RecursionError``), not JSON, ``NaN``/``Infinity`` (not
JSON either), or a string holding a lone surrogate (which no database or mail header can take).

Pure, so both the web layer (``web.subscription``) and the provider webhooks in ``mail``
(``mail.webhook.WebhookRequest.json``) read bodies with it.

Owns: the depth limit and the reasons. Does not own how large a body may be (``web.limits``).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "BadBody", "json_depth", "parse_json"]

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
