"""The exception tree. Every error the library raises on purpose is a ``NewsletterError``.

::

    NewsletterError
    ├── ConfigError        a config file or value is wrong: carries file, key path, line
    ├── SourceError        a source could not be fetched or parsed: carries name, URL, status
    ├── StorageError       the database could not be opened, migrated or written
    ├── OutputError        a file we write (feeds, archive) could not be written: carries the path
    ├── RenderError        a template or the CSS inliner failed: carries the template name
    ├── SubscriberError    an address or subscriber operation was refused: carries the address, line
    └── MailError          a mail backend failed: carries backend, status, the provider's message,
                           and whether the batch may be retried, must stop the send, or is
                           uncertain (perhaps accepted)

Third-party exceptions (requests, feedparser, sqlalchemy, smtplib, jinja2, premailer) are
wrapped once, at the boundary that calls them, with ``raise ... from e``; nothing else catches
them. Each class renders a ``__str__`` that tells a user what went wrong and where.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from newsletter.types import DeliveryResult


class NewsletterError(Exception):
    """Root of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(NewsletterError):
    """The configuration is invalid. ``key`` is a dotted path such as ``sources[2].url``."""

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.file = Path(file) if file is not None else None
        self.key = key
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        return f"{where}: {self.message}" if where else self.message


class SourceError(NewsletterError):
    """One source failed. The other sources are not affected."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.url = url
        self.status = status

    def __str__(self) -> str:
        where = f"source {self.source!r}"
        if self.url:
            where += f" ({self.url})"
        return f"{where}: {self.message}"


class StorageError(NewsletterError):
    """The database could not be opened, migrated, read or written."""


class NoteChanged(StorageError):
    """The editor's note a digest was rendered with was replaced or cleared before the digest
    was stored: nothing was stored; render again with the note as it is now."""


class OutputError(NewsletterError):
    """A file could not be written (a full disk, a read-only or missing folder): an error of
    the machine, not of the data. Carries the path and the operating system's reason."""

    def __init__(self, message: str, *, path: Path | str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.message}: cannot write {self.path}: {self.reason}"


def os_reason(error: OSError) -> str:
    """The operating system's words for ``error`` ("No space left on device")."""
    return error.strerror or str(error) or type(error).__name__


class RenderError(NewsletterError):
    """A template could not be rendered, or the rendered digest could not be inlined."""

    def __init__(self, message: str, *, template: str | None = None) -> None:
        super().__init__(message)
        self.template = template

    def __str__(self) -> str:
        return f"template {self.template}: {self.message}" if self.template else self.message


class SubscriberError(NewsletterError):
    """An address was refused, or a subscriber operation could not be done."""

    def __init__(
        self, message: str, *, address: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.address = address
        self.line = line

    def __str__(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.address is not None:
            parts.append(repr(self.address))
        return f"{', '.join(parts)}: {self.message}" if parts else self.message


class MailError(NewsletterError):
    """A mail backend failed as a whole (not one recipient: those are ``DeliveryResult`` values)."""

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        status: int | None = None,
        provider_message: str | None = None,
        retryable: bool = False,
        fatal: bool = False,
        uncertain: bool = False,
        delivered: Sequence[DeliveryResult] = (),
    ) -> None:
        super().__init__(message)
        self.backend = backend
        # Recipients of the batch that were delivered before the batch failed (a backend that
        # sends one by one, such as the outbox): recorded as such, the rest stay pending.
        self.delivered = tuple(delivered)
        self.status = status
        self.provider_message = provider_message
        # How the send loop treats the batch that raised this:
        self.retryable = retryable  # not accepted, try later (429, 5xx after retries, outage)
        self.fatal = fatal  # no batch can succeed (bad credentials, bad config): stop sending
        self.uncertain = uncertain  # may have been accepted (timeout after the request went out)

    def __str__(self) -> str:
        text = f"{self.backend}: {self.message}"
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.provider_message:
            text += f": {self.provider_message}"
        return text
