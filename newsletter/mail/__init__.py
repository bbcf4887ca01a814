"""Mail backends. ``make_backend(config)`` picks one by ``[mail] backend``.

Backends never query the database: the send loop (``base.MailBackend.send``) is handed batches
of recipients by a ``Ledger`` and reports to it, and the core wires that to ``Storage``. Each
backend lives in its own module, imported only when chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from newsletter.exceptions import ConfigError
from newsletter.mail.base import MailBackend

if TYPE_CHECKING:
    from newsletter.config import Config

__all__ = ["BACKENDS", "MailBackend", "make_backend"]

# name -> "module:class"; a new backend adds a line here and a module beside this one.
BACKENDS: dict[str, str] = {
    "outbox": "newsletter.mail.outbox:OutboxBackend",
    "postmark": "newsletter.mail.postmark:PostmarkBackend",
    "sendgrid": "newsletter.mail.sendgrid:SendGridBackend",
    "mailgun": "newsletter.mail.mailgun:MailgunBackend",
    "resend": "newsletter.mail.resend:ResendBackend",
    "smtp": "newsletter.mail.smtp:SMTPBackend",
}


def make_backend(config: Config) -> MailBackend:
    """The backend ``[mail] backend`` names, configured. Raises ``ConfigError``."""
    name = config.mail.backend
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown mail backend {name!r} (known: {', '.join(BACKENDS)})",
            file=config.file,
            key="mail.backend",
        )
    module_name, _, class_name = BACKENDS[name].partition(":")
    backend_class: type[MailBackend] = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_config(config)
