"""The editor's note: one waiting note at most, taken by the digest that opens with it.

A note is written by ``newsletter note`` or read from ``[digest] note_file``; the digest
created next shows it and takes it in the same transaction that stores the digest
(``DeliveriesMixin.create_digest`` calls ``take_note``), so two nodes, or a crash and a rerun,
never show it twice and never lose it.

Owns: the SQL for notes. Does not own rendering the Markdown or reading the file (``core``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, text, update

from newsletter.exceptions import NoteChanged
from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase
from newsletter.types import EditorNote

_n = s.editor_notes
_NOTES_LOCK = 0x6E6C5F6E6F7465  # pg_advisory_xact_lock key: "nl_note"


class NotesMixin(StorageBase):
    def set_note(self, body: str, now: datetime, *, origin: str | None = None) -> bool:
        with self._tx() as conn:
            if self.dialect == "postgresql":
                # Writers of the note take turns (SQLite's BEGIN IMMEDIATE does the same):
                # two nodes reading the same note file at once, the second sees the first's
                # note and adds nothing, rather than replacing it or failing on its origin.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _NOTES_LOCK})
            if origin is not None:
                seen = conn.execute(select(_n.c.id).where(_n.c.origin == origin)).first()
                if seen is not None:
                    return False
            conn.execute(delete(_n).where(_n.c.pending.is_(True)))
            conn.execute(_n.insert().values(body=body, created_at=now, origin=origin, pending=True))
        return True

    def pending_note(self) -> EditorNote | None:
        with self._read() as conn:
            row = conn.execute(select(_n).where(_n.c.pending.is_(True))).first()
        return _note(row) if row is not None else None

    def clear_note(self) -> bool:
        with self._tx() as conn:
            gone = conn.execute(delete(_n).where(_n.c.pending.is_(True)).returning(_n.c.id))
            return gone.first() is not None

    def digest_note(self, digest_id: int) -> EditorNote | None:
        with self._read() as conn:
            row = conn.execute(select(_n).where(_n.c.digest_id == digest_id)).first()
        return _note(row) if row is not None else None


def take_note(conn: Connection, note_id: int, digest_id: int) -> None:
    """Inside ``create_digest``'s transaction: the waiting note ``note_id`` is the digest's
    now. Raises ``NoteChanged`` (rolling the digest back) when it is no longer waiting."""
    taken = conn.execute(
        update(_n)
        .where(_n.c.id == note_id, _n.c.pending.is_(True))
        .values(pending=None, digest_id=digest_id)
        .returning(_n.c.id)
    ).first()
    if taken is None:
        raise NoteChanged("the editor's note changed while the digest was being rendered")


def _note(row: Any) -> EditorNote:
    return EditorNote(id=row.id, body=row.body, created_at=row.created_at, origin=row.origin)
