"""The engine, transactions and the few SQL helpers every domain module shares.

Owns: opening (and migrating) the database, turning SQLAlchemy errors into ``StorageError``,
the dialect differences (insert-or-ignore, the lease clock, row locks), and SQLite's
settings. No business rules and no table of its own.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from newsletter.exceptions import StorageError
from newsletter.storage import schema as s

log = logging.getLogger(__name__)

# How long a write waits for another writer's lock on SQLite before "database is locked". A
# gather or a send holds it for one short transaction at a time, so this is generous; reads
# never wait for it (see ``StorageBase._read``).
_BUSY_TIMEOUT_MS = 30000
# Execution option that marks a SQLite connection's transaction as read-only: deferred BEGIN.
_READ_ONLY = "newsletter_read_only"

_POSTGRES_HINT = "install the PostgreSQL driver: pip install 'newsletter[postgres]' (psycopg 3)"


def normalize_url(url: str) -> str:
    """``postgres://`` and a driverless ``postgresql://`` mean psycopg 3, our only driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<unparseable database URL>"


def _reason(error: Exception) -> str:
    """The driver's own message ("connection failed: ... no password supplied"), without
    SQLAlchemy's wrapper class name and its "Background on this error" link."""
    original = getattr(error, "orig", None)
    return " ".join(str(original or error).split("\n(Background on this error")[0].split())


class StorageBase:
    """Open (and migrate) the database at ``url``. Raises ``StorageError`` when it cannot."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        shown = safe_url(self.url)
        try:
            self.engine: Engine = create_engine(self.url, pool_pre_ping=True)
        except ModuleNotFoundError as e:
            hint = _POSTGRES_HINT if self.url.startswith("postgresql") else f"{e}; install it"
            raise StorageError(f"cannot open database {shown}: {hint}") from e
        except NoSuchModuleError as e:
            kind = self.url.partition(":")[0]
            raise StorageError(
                f"cannot open database {shown}: {kind!r} is not a kind of database we know; use "
                "sqlite:///FILE or postgresql://USER@HOST/DB (and install the driver: "
                "pip install 'newsletter[postgres]')"
            ) from e
        except ArgumentError as e:
            raise StorageError(f"cannot open database {shown}: not a database URL: {e}") from e
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        try:
            before, after = self._open_schema()
        except (SQLAlchemyError, RuntimeError) as e:
            self.engine.dispose()
            raise StorageError(f"cannot open database {shown}: {_reason(e)}") from e
        if before != after:
            log.info("database %s: schema version %d -> %d", shown, before, after)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def _open_schema(self) -> tuple[int, int]:
        """Migrate when the schema is behind; a database already up to date is only read, so
        opening it (every ``status``, every web worker) never waits for a writer."""
        with self.engine.connect() as conn:
            conn.execution_options(**self._read_options())
            with conn.begin():
                current = s.current_version(conn)
        if current == s.VERSION:
            return current, current
        with self.engine.begin() as conn:
            return s.migrate(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A read-write transaction: on SQLite it takes the write lock at once (waiting up to
        the busy timeout for another writer), so a read-then-write cannot be overtaken."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {_reason(e)}") from e

    @contextmanager
    def _read(self, *, timeout: float | None = None) -> Iterator[Connection]:
        """A read-only transaction that never waits for a writer: a deferred ``BEGIN`` on
        SQLite (under WAL a reader sees the last commit while a writer works), ``READ ONLY``
        on PostgreSQL (whose readers never wait for row locks). One transaction, so the reads
        in it see one state. ``timeout`` (seconds) bounds it where a caller must answer
        quickly (the health check): SQLite's busy timeout for this transaction (a reader
        waits only in rare cases such as a WAL recovery), PostgreSQL's statement timeout."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**self._read_options())
                if timeout is not None and self.dialect == "sqlite":
                    _sqlite_busy_timeout(conn, int(timeout * 1000))
                try:
                    with conn.begin():
                        if timeout is not None and self.dialect == "postgresql":
                            conn.exec_driver_sql(
                                f"SET LOCAL statement_timeout = {int(timeout * 1000)}"
                            )
                        yield conn
                finally:
                    if timeout is not None and self.dialect == "sqlite":
                        _sqlite_busy_timeout(conn, _BUSY_TIMEOUT_MS)
        except SQLAlchemyError as e:
            raise StorageError(f"database error: {_reason(e)}") from e

    def _read_options(self) -> dict[str, Any]:
        if self.dialect == "postgresql":
            return {"postgresql_readonly": True}
        return {_READ_ONLY: True}

    def ping(self, *, timeout: float | None = None) -> None:
        with self._read(timeout=timeout) as conn:
            conn.execute(select(literal(1))).one()

    def _insert_ignore(self, table: Table, keys: list[str] | None) -> Any:
        """``INSERT ... ON CONFLICT (keys) DO NOTHING`` for the engine's dialect; with ``keys``
        None, a conflict on any unique constraint is ignored."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing(index_elements=keys)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)

    def _insert_row(
        self, conn: Connection, table: Table, keys: list[str] | None, row: dict[str, Any]
    ) -> bool:
        """Insert one row unless it conflicts (see ``_insert_ignore``). True when inserted.

        Told by ``RETURNING`` (SQLite 3.35+, PostgreSQL), not by the rowcount, which
        SQLAlchemy's psycopg dialect reports as -1 for an ``INSERT ... ON CONFLICT``."""
        statement = self._insert_ignore(table, keys).values(**row)
        marker = next(iter(table.primary_key.columns))
        return conn.execute(statement.returning(marker)).first() is not None

    def _lease_now(self, conn: Connection) -> datetime:
        """The time leases are measured by: the database server's clock on PostgreSQL, so
        nodes whose clocks disagree still agree on when a lease ends; the system clock on
        SQLite (one machine). Never the ``clock`` seam: a lease is real time."""
        if self.dialect == "postgresql":
            value: datetime = conn.execute(select(func.clock_timestamp())).scalar_one()
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.now(UTC)


def _sqlite_busy_timeout(conn: Connection, milliseconds: int) -> None:
    """Set the busy timeout of the pooled connection itself, outside any transaction (through
    SQLAlchemy the statement would begin one)."""
    driver: Any = conn.connection.driver_connection
    driver.execute(f"PRAGMA busy_timeout={milliseconds}")


def _use_wal(cursor: Any, *, patience: float = 30.0) -> None:
    """Put the file in WAL mode, unless it is already (WAL is a property of the file).

    The switch wants the file to itself and does not wait for the busy timeout: processes
    opening a new database at the same moment get "database is locked" at once. So it is
    tried again, for up to ``patience`` seconds, until this process or another has made it.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout, and real BEGINs (pysqlite's own are unreliable).

    The BEGIN handling follows SQLAlchemy's documented recipe for "Serializable isolation /
    Savepoints / Transactional DDL" with pysqlite. ``BEGIN IMMEDIATE`` takes the write lock at
    once, which is what makes a claim (read, then mark) atomic between processes. A read-only
    transaction (``StorageBase._read``) begins deferred instead: it takes no write lock, so
    under WAL it never waits for a writer.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # The busy timeout first, so that every statement after it waits for other writers.
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        _use_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
