"""The outbox backend: every message is written to disk as an ``.eml`` file instead of sent.

For previews, tests and dry runs. Like Django's file-based backend it is a test double that
still validates: each message is built and checked by ``mail.message`` exactly as a real
backend would, so a digest that passes here has well-formed mail. Files go to
``<directory>/<digest_id>/<subscriber_id>-<address>.eml``, written atomically; writing the same
recipient again replaces the file, so re-sending a batch after a crash is harmless.

A file that cannot be written (a full disk, a read-only folder) is the machine's fault, not the
recipient's: the send stops (``MailError`` with ``fatal``) naming the path and the reason, the
recipients written so far are recorded, and the rest stay pending for the next run.

Does not own: the send loop (``MailBackend.send``) or anything about who receives what.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from newsletter import clock
from newsletter.exceptions import MailError, os_reason
from newsletter.files import atomic_write, remove_leftover_temp_files
from newsletter.mail.base import (
    BackendSettings,
    Batch,
    MailBackend,
    PreparedContent,
    failed_result,
    sent_result,
)
from newsletter.mail.message import build_message
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config, Table

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
_MAX_NAME = 100  # of the address part; well under any file system's limit


@dataclass(frozen=True)
class OutboxSettings(BackendSettings):
    """``[mail.outbox]``."""

    outbox_dir: Path = Path("outbox")  # relative to the config file's folder

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        t.allow("outbox_dir")
        return cls(outbox_dir=t.dir_value("outbox_dir", "outbox"))


class OutboxBackend(MailBackend, settings=OutboxSettings):
    name = "outbox"
    max_batch_size = 1000
    idempotent = True  # a rewrite of the same file is harmless

    def __init__(self, directory: Path, *, batch_size: int | None = 100, **options: Any) -> None:
        super().__init__(batch_size=batch_size or 100, **options)
        self.directory = directory

    def describe(self) -> str:
        return f"outbox ({self.directory})"

    def open(self) -> bool:
        # A send killed mid-write left a temporary file; its writer is gone, so it goes.
        # Those of a send running beside this one are kept (``remove_leftover_temp_files``).
        remove_leftover_temp_files(self.directory)
        return False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        cls.check_batch_size(config)
        settings: OutboxSettings = cls.settings(config)
        return cls(settings.outbox_dir, **cls.common_options(config))

    def path_for(self, digest_id: int, recipient: Recipient) -> Path:
        """Where the message of ``digest_id`` for ``recipient`` is written."""
        safe = _UNSAFE.sub("_", recipient.email)[:_MAX_NAME]
        return self.directory / str(digest_id) / f"{recipient.subscriber_id}-{safe}.eml"

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        date = clock.now()
        results: list[DeliveryResult] = []
        for recipient in batch.recipients:
            results.append(self._write(content, recipient, date, results))
        return results

    def _write(
        self,
        content: PreparedContent,
        recipient: Recipient,
        date: datetime,
        done: list[DeliveryResult],
    ) -> DeliveryResult:
        """One recipient; a message that fails validation is FAILED. A file that cannot be
        written stops the send (see the module docstring); ``done`` is what the batch wrote
        before it."""
        try:
            msg = build_message(content, recipient, date=date, backend=self.name)
        except MailError as e:
            log.warning("not written: %s", e)
            return failed_result(recipient, str(e))
        path = self.path_for(content.content.digest_id, recipient)
        try:
            # The message's own policy: CRLF line ends (RFC 5322), long raw headers unfolded.
            # Not fsynced: the delivery ledger (SQLite, synchronous=NORMAL) does not fsync each
            # commit either, and a killed process loses neither; a power cut may lose both.
            atomic_write(path, msg.as_bytes(), durable=False)
        except OSError as e:
            # e.filename is None for a failed write() (ENOSPC): the path is ours to name.
            raise MailError(
                f"cannot write {path}: {os_reason(e)}",
                backend=self.name,
                fatal=True,
                delivered=done,
            ) from e
        log.debug("wrote %s", path)
        return sent_result(recipient, str(msg["Message-ID"]))
