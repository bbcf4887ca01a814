"""What every provider's webhook shares: the request it reads, what it finds, how it refuses.

A provider's webhook module lives next to its backend (``postmark_webhook.py`` beside
``postmark.py``) and holds one ``Webhook`` subclass: how the provider proves a request is its
own (checked before the body is trusted) and which of its events suppress an address. It is
pure: no web framework and no database. ``newsletter.web.webhooks`` serves them all at
``POST /webhooks/<backend name>``, hands each a ``WebhookRequest`` and a ``ReplayGuard``
(backed by the database, shared by every ``serve`` process), and applies the
``Suppression``s it returns.

Which webhooks exist follows from the backend registry (``newsletter.mail.BACKENDS``): a
backend class names its webhook in its header (``webhook="module:Class"``, kept as its
``webhook`` attribute and imported only when asked for); ``webhook_class(name)`` finds it.

Status codes a webhook raises through ``Refused``: 400 for a body it cannot read, 401/403 for
a missing or bad credential or signature. A secret that is not available is a ``ConfigError``
from ``from_config`` (the web layer answers 503). A request that passes is answered 200 even
when it held no event we act on (so the provider does not retry it).
"""

from __future__ import annotations

import abc
import base64
import binascii
import functools
import hmac
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from newsletter.jsonsafe import BadBody, parse_json
from newsletter.mail import BACKENDS, backend_class
from newsletter.types import SubscriberStatus

if TYPE_CHECKING:
    from newsletter.config import Config

MAX_AGE_SECONDS = 600  # how far a signed timestamp may be from now, either way
MAX_REASON_CHARS = 500  # of a provider's text kept with a suppression
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # seconds since 1970: 12 digits last past year 30000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

BOUNCED, COMPLAINED = SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED


@dataclass(frozen=True)
class Suppression:
    """One address a provider says must not be written to again, and why."""

    email: str
    status: SubscriberStatus  # BOUNCED or COMPLAINED
    reason: str


class Refused(Exception):
    """The request is not the provider's (or not readable): answered ``status_code``."""

    def __init__(self, status_code: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class WebhookRequest:
    """One request as a webhook sees it: header names lower-cased, the raw body (signatures
    are computed over its bytes), and the time it arrived (aware UTC, from ``clock``)."""

    headers: Mapping[str, str]
    body: bytes
    now: datetime

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON (``newsletter.jsonsafe.parse_json``); ``Refused`` (400) with the
        reason when it is not UTF-8, not JSON, nests too deep or holds a lone surrogate."""
        try:
            return parse_json(self.body)
        except BadBody as e:
            raise Refused(400, e.reason) from e


class ReplayGuard(Protocol):
    """Remembers tokens (a nonce, a message id) for every ``serve`` process on the database."""

    def claim(self, token: str, *, keep: timedelta) -> bool:
        """True the first time ``token`` is claimed within ``keep``; False for a replay. When
        the request then fails on our side, the web layer releases its claims so the
        provider's retry is accepted."""
        ...


class Webhook(abc.ABC):
    """One provider's webhook. Subclasses set ``provider`` (the backend name) and implement
    ``from_config`` and ``handle``."""

    provider: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> Self | None:
        """The webhook as configured, or None when it is not (then it is not served: 404).
        Raises ``ConfigError`` naming the key when a variable it names is unset or unusable;
        ``newsletter serve`` builds every webhook at start, so this is found before requests."""

    @abc.abstractmethod
    def handle(self, request: WebhookRequest, guard: ReplayGuard) -> list[Suppression]:
        """Authenticate ``request``, then read its events. Raises ``Refused``."""


@functools.cache
def webhook_class(name: str) -> type[Webhook] | None:
    """The webhook of the backend registered as ``name``, or None when there is no such
    backend or it has no webhook. Imports the backend's module (and the webhook's) on first
    use. Raises ``TypeError`` for a registry entry that does not name a ``Webhook`` of that
    provider (a programming error, not a config one)."""
    if name not in BACKENDS:
        return None
    path = backend_class(name).webhook
    if path is None:
        return None
    module_name, _, attribute = path.partition(":")
    found = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(found, type) and issubclass(found, Webhook)) or found.provider != name:
        raise TypeError(f"{path} is not the Webhook of {name!r}")
    return found


def registered_webhooks() -> dict[str, type[Webhook]]:
    """The webhook of every registered backend that has one, by backend name, in registry
    order."""
    found = {name: webhook_class(name) for name in BACKENDS}
    return {name: hook for name, hook in found.items() if hook is not None}


# --- shared helpers -----------------------------------------------------------------------------


def secret(config: Config, provider: str, key: str) -> str | None:
    """The value of the environment variable that ``[mail.<provider>] <key>`` names: None when
    the key is not set (that webhook is off), ``ConfigError`` naming the key when the variable
    is unset (``MailBackend.secret``, as for the backend's own token). Never logged."""
    if getattr(config.mail.provider(provider), key, None) is None:
        return None
    return backend_class(provider).secret(config, key)


def suppression(email: Any, status: SubscriberStatus, reason: str) -> list[Suppression]:
    """``[Suppression]`` for a non-empty address string, else ``[]``."""
    if not isinstance(email, str) or not email.strip():
        return []
    # The reason is the provider's text, stored and shown to the operator: one line, bounded
    # (PostgreSQL refuses a NUL outright).
    text = _CONTROL.sub(" ", reason).strip().rstrip(":")[:MAX_REASON_CHARS]
    return [Suppression(email.strip(), status, text)]


def check_basic_auth(header: str | None, user: str, password: str) -> None:
    """Raise ``Refused`` (401) unless ``header`` is HTTP Basic with these credentials."""
    challenge = {"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'}
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise Refused(401, "credentials required", **challenge)
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise Refused(401, "malformed credentials", **challenge) from e
    given_user, _, given_password = given.partition(":")
    # Both compared, always: the time taken does not tell which one was wrong.
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    if not (ok_user and ok_password):
        raise Refused(401, "wrong credentials", **challenge)


def check_age(timestamp: Any, now: datetime, *, max_age: float = MAX_AGE_SECONDS) -> int:
    """The signed Unix ``timestamp`` as an int; ``Refused`` (403) when it is malformed or more
    than ``max_age`` seconds away from ``now``, so a captured request cannot be replayed later."""
    # Checked as text first: int() takes signs, underscores and other scripts' digits, and a
    # 400-digit number cannot be compared with a float.
    text = str(timestamp).strip()
    if not _TIMESTAMP.fullmatch(text):
        raise Refused(403, "missing or malformed timestamp")
    when = int(text)
    if abs(now.timestamp() - when) > max_age:
        raise Refused(403, "stale timestamp")
    return when
