"""This process as one node of the cluster: its id, its heartbeat, and its stop request.

Every process that claims work (``run``, ``send``) is a node. Its id names it in leases and
run rows (``host:pid:random``, so a restarted process is a new node). While it runs, a
daemon thread renews every lease it holds each ``lease / 3``; when the process dies the
renewals stop, the leases run out, and other nodes take the work back.

``stopping`` is how a signal reaches the work: the send loop stops claiming, the scheduler
stops starting jobs, and what was claimed but not sent is given back.

Owns: the id, the heartbeat thread, the stop event. Does not own: what a lease covers
(``storage``), what to do with an expired one (``rules``, ``sending``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import timedelta

from newsletter import clock
from newsletter.exceptions import StorageError
from newsletter.storage import Storage
from newsletter.types import NodeInfo

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        storage: Storage,
        *,
        command: str,
        lease: timedelta,
        stopping: threading.Event | None = None,
    ) -> None:
        self.storage = storage
        self.command = command
        self.lease = lease
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stopping = stopping if stopping is not None else threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Announce the node and start renewing its leases. Idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            now = clock.now()
            self.storage.register_node(
                NodeInfo(self.id, self.host, os.getpid(), self.command, now, now)
            )
            self._thread = threading.Thread(
                target=self._beat, name=f"heartbeat-{self.id}", daemon=True
            )
            self._thread.start()
        log.debug("node %s started (%s)", self.id, self.command)

    def beat(self) -> int:
        """Renew every lease this node holds now. Returns the batches it holds."""
        return self.storage.heartbeat(self.id, self.lease, clock.now())

    def _beat(self) -> None:
        interval = max(0.2, self.lease.total_seconds() / 3)
        while not self._closed.wait(interval):
            try:
                self.beat()
            except StorageError as e:
                # Keep trying: if the database stays away past the lease, other nodes take
                # the work back, and this node's late results are refused by the fence.
                log.warning("node %s: heartbeat failed: %s", self.id, e)

    def close(self) -> None:
        """Stop the heartbeat and say goodbye. Leases still held run out on their own."""
        self._closed.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout=5)
        try:
            self.storage.unregister_node(self.id)
        except StorageError as e:
            log.warning("node %s: could not unregister: %s", self.id, e)
