"""E-mail address checks shared by the config (sender) and the subscriber list."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from newsletter.exceptions import SubscriberError


def validate_address(address: str) -> str:
    """Check an address's syntax, without DNS. Returns it normalized; raises ``SubscriberError``.

    Line breaks are refused outright: an address ends up in a ``To:`` header, and a newline
    there would let a subscriber inject headers.
    """
    if "\n" in address or "\r" in address:
        raise SubscriberError("an address must not contain a line break", address=address)
    try:
        info = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise SubscriberError(str(e), address=address) from e
    return str(info.normalized)
