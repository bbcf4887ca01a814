"""Mail backends. ``make_backend(config)`` picks one by ``[mail] backend``.

Backends never query the database: the send loop (``base.MailBackend.send``) is handed batches
of recipients and a ``Ledger`` to report to, and the core wires both to ``Storage``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from newsletter.exceptions import ConfigError
from newsletter.mail.base import MailBackend
from newsletter.mail.outbox import OutboxBackend

if TYPE_CHECKING:
    from newsletter.config import Config

__all__ = ["MailBackend", "OutboxBackend", "make_backend"]


def make_backend(config: Config) -> MailBackend:
    """The backend ``[mail] backend`` names. Raises ``ConfigError`` for an unknown name."""
    name = config.mail.backend
    if name == OutboxBackend.name:
        return OutboxBackend(config.mail.outbox_dir, config.mail.batch_size)
    raise ConfigError(
        f"unknown mail backend {name!r} (known: {OutboxBackend.name})",
        file=config.file,
        key="mail.backend",
    )
