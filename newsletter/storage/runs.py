"""Runs of scheduled jobs, nodes and their heartbeat, small kept values (meta), the run lock.

A scheduled fire is a row keyed by (job, fire key); the node whose INSERT creates it runs
the job, the others skip it. A running row is leased like a batch: the node's heartbeat
extends it, and a node that finds it expired (its node died mid-job) takes it over. Which
fires are due, missed or coalesced is decided by ``schedule``; this module stores it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select, update

from newsletter.exceptions import StorageError
from newsletter.storage import schema as s
from newsletter.storage._base import StorageBase, safe_url
from newsletter.types import BatchStatus, NodeInfo, RunRecord, RunStatus

_r = s.runs
_FORGET = timedelta(days=1)


class RunsMixin(StorageBase):
    # --- meta ------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).first()
        return None if row is None else str(row.value)

    def get_or_create_meta(self, key: str, factory: Callable[[], object]) -> str:
        found = self.get_meta(key)
        if found is not None:
            return found
        with self._tx() as conn:
            row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).first()
            if row is None:
                self._insert_row(conn, s.meta, ["key"], {"key": key, "value": str(factory())})
                row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).one()
        return str(row.value)

    # --- runs ------------------------------------------------------------------------------------

    def claim_run(
        self,
        job: str,
        fire: str,
        scheduled_at: datetime,
        node: str,
        lease: timedelta,
        now: datetime,
    ) -> bool:
        with self._tx() as conn:
            until = self._lease_now(conn) + lease
            inserted = self._insert_row(
                conn,
                _r,
                ["job", "fire"],
                {
                    "job": job,
                    "fire": fire,
                    "scheduled_at": scheduled_at,
                    "status": RunStatus.RUNNING,
                    "node": node,
                    "started_at": now,
                    "lease_until": until,
                    "attempts": 1,
                },
            )
        return inserted

    def take_over_run(
        self, job: str, fire: str, node: str, lease: timedelta, now: datetime
    ) -> bool:
        with self._tx() as conn:
            lease_now = self._lease_now(conn)
            taken = conn.execute(
                update(_r)
                .where(
                    _r.c.job == job,
                    _r.c.fire == fire,
                    _r.c.status == RunStatus.RUNNING,
                    _r.c.lease_until < lease_now,
                )
                .values(
                    node=node,
                    started_at=now,
                    lease_until=lease_now + lease,
                    attempts=_r.c.attempts + 1,
                )
            )
        return bool(taken.rowcount)

    def record_fire(
        self,
        job: str,
        fire: str,
        scheduled_at: datetime,
        status: RunStatus,
        now: datetime,
        *,
        node: str | None = None,
        detail: str | None = None,
    ) -> bool:
        with self._tx() as conn:
            inserted = self._insert_row(
                conn,
                _r,
                ["job", "fire"],
                {
                    "job": job,
                    "fire": fire,
                    "scheduled_at": scheduled_at,
                    "status": status,
                    "node": node,
                    "finished_at": now,
                    "detail": detail,
                },
            )
        return inserted

    def finish_run(
        self,
        job: str,
        fire: str,
        node: str,
        status: RunStatus,
        now: datetime,
        *,
        detail: str | None = None,
    ) -> bool:
        with self._tx() as conn:
            done = conn.execute(
                update(_r)
                .where(
                    _r.c.job == job,
                    _r.c.fire == fire,
                    _r.c.node == node,
                    _r.c.status == RunStatus.RUNNING,
                )
                .values(status=status, finished_at=now, lease_until=None, detail=detail)
            )
        return bool(done.rowcount)

    def runs_of(self, job: str, fires: Sequence[str]) -> dict[str, RunRecord]:
        found: dict[str, RunRecord] = {}
        with self._read() as conn:
            for start in range(0, len(fires), 500):
                rows = conn.execute(
                    select(_r).where(
                        _r.c.job == job, _r.c.fire.in_(list(fires[start : start + 500]))
                    )
                ).all()
                found.update((r.fire, _run(r)) for r in rows)
        return found

    def latest_runs(self, job: str, *, limit: int = 1) -> list[RunRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(_r).where(_r.c.job == job).order_by(_r.c.scheduled_at.desc()).limit(limit)
            ).all()
        return [_run(r) for r in rows]

    def stale_runs(self) -> list[RunRecord]:
        with self._read() as conn:
            now = self._lease_now(conn)
            rows = conn.execute(
                select(_r)
                .where(_r.c.status == RunStatus.RUNNING, _r.c.lease_until < now)
                .order_by(_r.c.scheduled_at)
            ).all()
        return [_run(r) for r in rows]

    # --- nodes -----------------------------------------------------------------------------------

    def register_node(self, node: NodeInfo) -> None:
        with self._tx() as conn:
            # Nodes silent for a day are long gone (kill -9 leaves its row): forget them.
            conn.execute(s.nodes.delete().where(s.nodes.c.last_seen < node.started_at - _FORGET))
            self._insert_row(
                conn,
                s.nodes,
                ["id"],
                {
                    "id": node.id,
                    "host": node.host,
                    "pid": node.pid,
                    "command": node.command,
                    "started_at": node.started_at,
                    "last_seen": node.last_seen,
                },
            )

    def heartbeat(self, node_id: str, lease: timedelta, now: datetime) -> int:
        with self._tx() as conn:
            conn.execute(update(s.nodes).where(s.nodes.c.id == node_id).values(last_seen=now))
            return _move_leases(conn, node_id, self._lease_now(conn) + lease)

    def expire_leases(self, node_id: str) -> int:
        with self._tx() as conn:
            return _move_leases(conn, node_id, datetime(1970, 1, 1, tzinfo=UTC))

    def unregister_node(self, node_id: str) -> None:
        with self._tx() as conn:
            conn.execute(s.nodes.delete().where(s.nodes.c.id == node_id))

    def nodes_seen_since(self, since: datetime) -> list[NodeInfo]:
        with self._read() as conn:
            rows = conn.execute(
                select(s.nodes).where(s.nodes.c.last_seen >= since).order_by(s.nodes.c.id)
            ).all()
        return [NodeInfo(r.id, r.host, r.pid, r.command, r.started_at, r.last_seen) for r in rows]

    # --- the run lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def scheduler_lock(self) -> Iterator[None]:
        """On SQLite, hold an exclusive lock file beside the database for as long as the
        scheduler runs (the kernel drops it when the process dies, ``kill -9`` included).
        PostgreSQL takes any number of schedulers: runs and leases keep them apart."""
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            yield
            return
        path = Path(database + ".run.lock")
        handle = _lock_file(path, self.url)
        try:
            yield
        finally:
            handle.close()


def _move_leases(conn: Any, node_id: str, until: datetime) -> int:
    """Set the end of every lease ``node_id`` holds (its running fires, its batches).
    Returns the batches it holds."""
    conn.execute(
        update(_r)
        .where(_r.c.node == node_id, _r.c.status == RunStatus.RUNNING)
        .values(lease_until=until)
    )
    held = conn.execute(
        update(s.batches)
        .where(s.batches.c.owner == node_id, s.batches.c.status == BatchStatus.LEASED)
        .values(lease_until=until)
    )
    return int(held.rowcount)


def _lock_file(path: Path, url: str) -> IO[str]:
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StorageError(
            f"another `newsletter run` (PID {holder}) is already running on {safe_url(url)}; "
            "SQLite takes one scheduler (the run lock is "
            f"{path}). Stop it first, or move to PostgreSQL to run several nodes"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _run(row: Any) -> RunRecord:
    return RunRecord(
        job=row.job,
        fire=row.fire,
        scheduled_at=row.scheduled_at,
        status=RunStatus(row.status),
        node=row.node,
        started_at=row.started_at,
        finished_at=row.finished_at,
        detail=row.detail,
    )
