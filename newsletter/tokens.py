"""Signed per-subscriber tokens: unsubscribe links (itsdangerous ``Signer``, HMAC-SHA256), and
expiring confirmation links for double opt-in (``TimestampSigner``, its own salt).

A token is ``<subscriber id>.<address tag>.<signature>``: it names one subscriber of one list
and carries a short hash of their address, so it is verifiable without a database lookup,
cannot be guessed, and cannot be replayed for another address or list (the list id is the
signing salt). A bare ``Signer`` rather than a serializer: no JSON and no zlib attempt per
token, which matters when one is made for every recipient of a large list.

A confirmation token has the same payload plus the time it was made, and a different salt,
so an unsubscribe token never confirms anyone and a confirmation token never unsubscribes;
it expires ``max_age`` after it was made (``TokenExpired``), measured on ``clock.now()``.

Both sign with the current secret and accept a token signed with any of the ``previous`` ones
too (itsdangerous's key list), so that setting or rotating the secret breaks no link already
in an inbox.

Owns signing and checking only; what an unsubscribe or a confirmation *does* belongs to the
web app, ``Publisher`` and Storage.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner

from newsletter import clock
from newsletter.exceptions import NewsletterError

_PAYLOAD = re.compile(r"([0-9]+)\.([0-9a-f]{12})")


class TokenError(NewsletterError):
    """A token was forged, altered, or made for another list."""


class TokenExpired(TokenError):
    """A confirmation token was genuine but is older than its lifetime."""


def _address_tag(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:12]


def _key_list(secret: str, previous: Sequence[str]) -> list[str]:
    # itsdangerous signs with the last key and checks the list from the last to the first:
    # the current secret, then the previous ones in the order given.
    older = [key for key in dict.fromkeys(previous) if key and key != secret]
    return [*reversed(older), secret]


class UnsubscribeTokens:
    def __init__(self, secret: str, list_id: str, *, previous: Sequence[str] = ()) -> None:
        self._signer = Signer(
            _key_list(secret, previous),
            salt=f"unsubscribe:{list_id}",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )

    def make(self, subscriber_id: int, email: str) -> str:
        return self._signer.sign(f"{subscriber_id}.{_address_tag(email)}").decode()

    def verify(self, token: str) -> tuple[int, str]:
        """Return (subscriber_id, address tag); raise ``TokenError`` for a bad token."""
        try:
            payload = self._signer.unsign(token).decode()
        except (BadSignature, UnicodeError) as e:
            raise TokenError("this unsubscribe link is not valid") from e
        found = _PAYLOAD.fullmatch(payload)
        if found is None:
            raise TokenError("this unsubscribe link is not valid")
        return int(found.group(1)), found.group(2)

    def matches(self, token: str, email: str) -> bool:
        """Whether ``token`` is valid and was made for ``email``."""
        try:
            _, tag = self.verify(token)
        except TokenError:
            return False
        return tag == _address_tag(email)


class _ClockSigner(TimestampSigner):
    """A ``TimestampSigner`` that reads the time from ``clock.now()`` (tests can fix it)."""

    def get_timestamp(self) -> int:
        return int(clock.now().timestamp())


class ConfirmTokens:
    """Expiring tokens for confirmation links: ``<id>.<address tag>.<time>.<signature>``."""

    def __init__(
        self, secret: str, list_id: str, *, max_age: timedelta, previous: Sequence[str] = ()
    ) -> None:
        self.max_age = max_age
        self._signer = _ClockSigner(
            _key_list(secret, previous),
            salt=f"confirm:{list_id}",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )

    def make(self, subscriber_id: int, email: str) -> str:
        return self._signer.sign(f"{subscriber_id}.{_address_tag(email)}").decode()

    def verify(self, token: str) -> tuple[int, str]:
        """Return (subscriber_id, address tag). Raises ``TokenExpired`` for a genuine token
        past its lifetime and ``TokenError`` for any other bad token."""
        try:
            payload = self._signer.unsign(token, max_age=int(self.max_age.total_seconds()))
        except SignatureExpired as e:
            raise TokenExpired("this confirmation link has expired") from e
        except (BadSignature, UnicodeError) as e:
            raise TokenError("this confirmation link is not valid") from e
        found = _PAYLOAD.fullmatch(payload.decode())
        if found is None:
            raise TokenError("this confirmation link is not valid")
        return int(found.group(1)), found.group(2)

    @staticmethod
    def tag_matches(tag: str, email: str) -> bool:
        """Whether an address tag from ``verify`` was made for ``email``."""
        return hmac.compare_digest(tag, _address_tag(email))
