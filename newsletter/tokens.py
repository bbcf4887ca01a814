"""Signed per-subscriber tokens for unsubscribe links (itsdangerous ``Signer``, HMAC-SHA256).

A token is ``<subscriber id>.<address tag>.<signature>``: it names one subscriber of one list
and carries a short hash of their address, so it is verifiable without a database lookup,
cannot be guessed, and cannot be replayed for another address or list (the list id is the
signing salt). A bare ``Signer`` rather than a serializer: no JSON and no zlib attempt per
token, which matters when one is made for every recipient of a large list.

Owns signing and checking only; what an unsubscribe *does* belongs to the web app and Storage.
"""

from __future__ import annotations

import hashlib
import re

from itsdangerous import BadSignature, Signer

from newsletter.exceptions import NewsletterError

_PAYLOAD = re.compile(r"([0-9]+)\.([0-9a-f]{12})")


class TokenError(NewsletterError):
    """A token was forged, altered, or made for another list."""


def _address_tag(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:12]


class UnsubscribeTokens:
    def __init__(self, secret: str, list_id: str) -> None:
        self._signer = Signer(
            secret,
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
