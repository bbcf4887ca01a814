"""E-mail address checks shared by the config (sender) and the subscriber list."""

from __future__ import annotations

import re

from email_validator import EmailNotValidError, validate_email

from newsletter.exceptions import SubscriberError

# An RFC 2047 encoded-word ("=?charset?q?text?="). Legal characters in a local part, but mail
# software decodes it as a header would, so the address that arrives is not the one given: a
# subscription to it could never be confirmed.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bq]\?[^?]*\?=", re.IGNORECASE)


def validate_address(address: str) -> str:
    """Check an address's syntax, without DNS. Returns it normalized; raises ``SubscriberError``.

    Line breaks are refused outright: an address ends up in a ``To:`` header, and a newline
    there would let a subscriber inject headers.
    """
    if "\n" in address or "\r" in address:
        raise SubscriberError("an address must not contain a line break", address=address)
    if _ENCODED_WORD.search(address):
        raise SubscriberError(
            "an address must not contain an RFC 2047 encoded-word (=?charset?q?...?=)",
            address=address,
        )
    try:
        info = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise SubscriberError(str(e), address=address) from e
    # An internationalized domain is stored in its ASCII (IDNA) form, which every mail system
    # takes. A non-ASCII local part needs SMTPUTF8 end to end, which we cannot promise.
    if info.ascii_email is None:
        raise SubscriberError(
            "addresses with non-ASCII characters before the @ need SMTPUTF8, "
            "which not every mail provider supports",
            address=address,
        )
    return str(info.ascii_email)
