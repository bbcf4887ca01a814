"""Signed per-subscriber tokens for unsubscribe links (itsdangerous, HMAC-SHA1 by default).

A token names one subscriber of one list and carries a short hash of their address, so it is
verifiable without a database lookup, cannot be guessed, and cannot be replayed for another
address or list (the list id is the signing salt). Owns signing and checking only; what an
unsubscribe *does* belongs to the web app and the Storage.
"""

from __future__ import annotations

import hashlib

from itsdangerous import BadSignature, URLSafeSerializer

from newsletter.exceptions import NewsletterError


class TokenError(NewsletterError):
    """A token was forged, altered, or made for another list."""


def _address_tag(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:12]


class UnsubscribeTokens:
    def __init__(self, secret: str, list_id: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt=f"unsubscribe:{list_id}")

    def make(self, subscriber_id: int, email: str) -> str:
        return str(self._serializer.dumps([subscriber_id, _address_tag(email)]))

    def verify(self, token: str) -> tuple[int, str]:
        """Return (subscriber_id, address tag); raise ``TokenError`` for a bad token."""
        try:
            payload = self._serializer.loads(token)
        except BadSignature as e:
            raise TokenError("this unsubscribe link is not valid") from e
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not isinstance(payload[0], int)
            or not isinstance(payload[1], str)
        ):
            raise TokenError("this unsubscribe link is not valid")
        return payload[0], payload[1]

    def matches(self, token: str, email: str) -> bool:
        """Whether ``token`` is valid and was made for ``email``."""
        try:
            _, tag = self.verify(token)
        except TokenError:
            return False
        return tag == _address_tag(email)
