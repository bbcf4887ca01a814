"""Reading a subscriber list exported from another newsletter service.

Owns: the delimiter (sniffed: Excel writes ``;`` in German and French locales, some tools write
tabs), whether the first row is a header, which columns hold the address and the name, and the
per-row reading problems (bytes that are not UTF-8, malformed CSV records). Does not own
what an address or a name may be (``addresses``, ``core``), nor storing them.

Recognized headers, compared case-insensitively with spaces and hyphens read as underscores:

- Mailchimp audience export: ``Email Address``, ``First Name``, ``Last Name``.
- listmonk export: ``uuid,email,name,attributes,status,...``; its import format ``email,name``.
- Substack export: ``email,active_subscription,expiry,plan,...`` (no name column).
- Buttondown export: ``email_address`` (older exports: ``email``), ``notes``, ``tags``, ...
- Ghost members export: ``id,email,name,note,subscribed_to_emails,...``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from newsletter.exceptions import SubscriberError

# In order of preference: Mailchimp's postal "Address" column must not win over its
# "Email Address".
EMAIL_HEADERS = (
    "email",
    "email_address",
    "e_mail",
    "e_mail_address",
    "emailaddress",
    "mail",
    "address",
)
NAME_HEADERS = ("name", "full_name", "fullname", "display_name")
FIRST_NAME_HEADERS = ("first_name", "firstname", "given_name", "fname", "first")
LAST_NAME_HEADERS = ("last_name", "lastname", "family_name", "surname", "lname", "last")
DELIMITERS = ",;\t|"
_SNIFF_BYTES = 64 * 1024

# What the "surrogateescape" error handler makes of an undecodable byte (PEP 383).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class ImportRow:
    """One data row: its line number, the address as written, the name (first and last names
    joined), and why it could not be read (then ``email`` is shown with escapes)."""

    line: int
    email: str
    name: str | None
    problem: str | None = None


@dataclass(frozen=True)
class _Columns:
    email: int
    name: int | None = None
    first: int | None = None
    last: int | None = None


def _normalize(header: str) -> str:
    return re.sub(r"[\s\-]+", "_", header.strip().strip('"').lower())


def _column(spec: str, header: list[str] | None, what: str, option: str) -> tuple[int, bool]:
    """The index ``spec`` names: a 1-based position, or a header's name. Returns (index,
    named): a named column means the first row is a header."""
    if spec.isdigit() and int(spec) > 0:
        return int(spec) - 1, False
    if header is not None:
        wanted = _normalize(spec)
        for i, cell in enumerate(header):
            if _normalize(cell) == wanted:
                return i, True
    raise SubscriberError(
        f"{option} {spec!r}: no {what} column of that name in the first row "
        f"({_shown(header or [])})"
    )


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    """The first column named by the first of ``names`` that the header has."""
    normalized = [_normalize(c) for c in header]
    return next((normalized.index(n) for n in names if n in normalized), None)


def _columns(
    first_row: list[str] | None, email_column: str | None, name_column: str | None
) -> tuple[_Columns, bool]:
    """Which columns to read, and whether the first row is a header: it is when it has a
    recognized address column's name or a column named by an option."""
    header = first_row or []
    email = name = None
    named = False
    if email_column is not None:
        email, by_name = _column(email_column, first_row, "address", "--email-column")
        named = named or by_name
    if name_column is not None:
        name, by_name = _column(name_column, first_row, "name", "--name-column")
        named = named or by_name
    recognized = _find(header, EMAIL_HEADERS)
    if email is None:
        email = recognized
    if not named and recognized is None:
        if _find(header, NAME_HEADERS) is not None:
            raise SubscriberError(
                f"the first row is a header without an address column ({_shown(header)}); "
                "name it with --email-column"
            )
        # No header: the historical `email[,name]` rows.
        return _Columns(0 if email is None else email, 1 if name is None else name), False
    if email is None:
        raise SubscriberError(
            f"no address column in the header ({_shown(header)}); name it with --email-column"
        )
    if name is None:
        name = _find(header, NAME_HEADERS)
    first = last = None
    if name is None:
        first = _find(header, FIRST_NAME_HEADERS)
        last = _find(header, LAST_NAME_HEADERS)
    return _Columns(email, name, first, last), True


def _shown(header: list[str]) -> str:
    return ", ".join(repr(c.strip()) for c in header)


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


def _delimiter(sample: str) -> str:
    """The sniffed delimiter. Only the delimiter: every exporter quotes with ``"`` as Excel
    does, and a sniffed quote character would strip the apostrophes of ``'Bob'``."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or too little to tell: a comma file
        return ","


def read_rows(
    path: Path, *, email_column: str | None = None, name_column: str | None = None
) -> Iterator[ImportRow]:
    """Yield each data row of a subscribers CSV, one bad row never stopping the others.

    ``email_column`` and ``name_column`` name a header's column or give a 1-based position;
    without them the header is recognized (see the module docstring), else rows are
    ``email[,name]``. Raises ``SubscriberError`` when the file cannot be read at all or a named
    column is not in the header.
    """
    try:
        # surrogateescape: an undecodable byte becomes a marker in its own row instead of an
        # exception that would end the whole import.
        handle = path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise SubscriberError(f"cannot read {path}: {e.strerror}") from e
    with handle:
        try:
            delimiter = _delimiter(handle.read(_SNIFF_BYTES))
            handle.seek(0)
        except OSError as e:
            raise SubscriberError(f"cannot read {path}: {e.strerror}") from e
        reader = csv.reader(handle, delimiter=delimiter)
        columns: _Columns | None = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                # The reader starts afresh on the next record after an error.
                yield ImportRow(reader.line_num, "", None, f"not a readable CSV row: {e}")
                continue
            except OSError as e:
                raise SubscriberError(f"cannot read {path}: {e.strerror}") from e
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            undecodable = next((m for c in row if (m := _UNDECODABLE.search(c))), None)
            if columns is None:
                first = None if undecodable is not None else row
                columns, is_header = _columns(first, email_column, name_column)
                if is_header:
                    continue
            if undecodable is not None:
                byte = ord(undecodable.group()) - 0xDC00
                shown = _cell(row, columns.email).encode("utf-8", "surrogateescape")
                yield ImportRow(
                    line,
                    shown.decode("utf-8", "backslashreplace"),
                    None,
                    f"not valid UTF-8 (byte 0x{byte:02x})",
                )
                continue
            if columns.name is not None:
                name = _cell(row, columns.name)
            else:
                name = " ".join(
                    p for p in (_cell(row, columns.first), _cell(row, columns.last)) if p
                )
            yield ImportRow(line, _cell(row, columns.email), name or None)
