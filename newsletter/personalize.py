"""Per-recipient values in a digest rendered once.

The digest is rendered and inlined once with *placeholders* where per-recipient values go
(``nlvar:first_name``, ``nlvar:unsubscribe_url``, ...). A placeholder looks like a URL with its
own scheme so that premailer's ``base_url`` rewriting (``urljoin``) leaves it alone inside
``href`` attributes, and it holds only characters that neither Jinja nor lxml escape.

``Template`` splits a body once at its placeholders; ``fill`` is then a join, cheap enough to
run for every recipient. Backends whose provider substitutes values itself (SendGrid, Mailgun)
use ``Template.convert`` to rewrite the placeholders into the provider's syntax once per digest.

This module sits at the package top level, not in ``render/``: the renderer writes the
placeholders and the mail backends fill them, and mail must not import render (the
import-linter contract in ``pyproject.toml``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping

PREFIX = "nlvar:"
NAMES = ("email", "first_name", "name", "unsubscribe_url")
_PATTERN = re.compile(r"nlvar:(" + "|".join(sorted(NAMES, key=len, reverse=True)) + r")")


def placeholder(name: str) -> str:
    """The placeholder text for ``name`` (what templates see as ``recipient.<name>``)."""
    if name not in NAMES:
        raise KeyError(f"unknown per-recipient value {name!r}; known: {', '.join(NAMES)}")
    return PREFIX + name


class Placeholders:
    """What templates get as ``recipient`` while the shared digest is rendered."""

    def __getattr__(self, name: str) -> str:
        try:
            return placeholder(name)
        except KeyError as e:
            raise AttributeError(str(e)) from None


class Template:
    """A body split at its placeholders. ``is_html`` decides how values are escaped."""

    def __init__(self, body: str, *, is_html: bool) -> None:
        parts = _PATTERN.split(body)
        self.literals = parts[0::2]
        self.names = parts[1::2]
        self.is_html = is_html

    @property
    def used(self) -> frozenset[str]:
        return frozenset(self.names)

    def fill(self, values: Mapping[str, str]) -> str:
        """The body with every placeholder replaced by the recipient's value (escaped for HTML)."""
        escape: Callable[[str], str] = html.escape if self.is_html else str
        return self._join([escape(values.get(name, "")) for name in self.names])

    def convert(self, syntax: Callable[[str], str]) -> str:
        """The body with placeholders in a provider's syntax (``lambda n: f"%recipient.{n}%"``)."""
        return self._join([syntax(name) for name in self.names])

    def _join(self, values: list[str]) -> str:
        out = [self.literals[0]]
        for value, literal in zip(values, self.literals[1:], strict=True):
            out.append(value)
            out.append(literal)
        return "".join(out)
