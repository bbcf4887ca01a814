"""Mail backends, found through one registry: ``BACKENDS`` names each one's class.

A backend is a module beside this one holding a ``MailBackend`` subclass whose class header
names its own settings class (``settings=``, a frozen dataclass that parses and validates the
``[mail.<name>]`` table; ``Settings`` on the class) and, when the provider reports bounces and
complaints, the import path of its webhook (``webhook=``). Adding
one is that module and one line in ``BACKENDS``; ``config``, ``serve`` and the CLI find it
here. Modules are imported only when their backend is chosen or configured.

Backends never query the database: the send loop (``base.MailBackend.send``) is handed batches
of recipients by a ``Ledger`` and reports to it, and the core wires that to ``Storage``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from newsletter.exceptions import ConfigError
from newsletter.mail.base import BackendSettings, MailBackend

if TYPE_CHECKING:
    from newsletter.config import Config

__all__ = ["BACKENDS", "MailBackend", "backend_class", "make_backend", "settings_class"]

# name -> "module:class"; the one line a new backend adds.
BACKENDS: dict[str, str] = {
    "outbox": "newsletter.mail.outbox:OutboxBackend",
    "postmark": "newsletter.mail.postmark:PostmarkBackend",
    "sendgrid": "newsletter.mail.sendgrid:SendGridBackend",
    "mailgun": "newsletter.mail.mailgun:MailgunBackend",
    "resend": "newsletter.mail.resend:ResendBackend",
    "ses": "newsletter.mail.ses:SESBackend",
    "smtp": "newsletter.mail.smtp:SMTPBackend",
}


def backend_class(name: str) -> type[MailBackend]:
    """The class registered as ``name`` (``KeyError`` when there is none)."""
    module_name, _, class_name = BACKENDS[name].partition(":")
    found: type[MailBackend] = getattr(importlib.import_module(module_name), class_name)
    return found


def settings_class(name: str) -> type[BackendSettings]:
    """The class that parses ``[mail.<name>]``."""
    return backend_class(name).Settings


def make_backend(config: Config) -> MailBackend:
    """The backend ``[mail] backend`` names, configured. Raises ``ConfigError``."""
    name = config.mail.backend
    if name not in BACKENDS:
        raise ConfigError(
            f"unknown mail backend {name!r} (known: {', '.join(BACKENDS)})",
            file=config.file,
            key="mail.backend",
        )
    return backend_class(name).from_config(config)
