"""What every part of the web app shares: the config file and a ``Publisher`` for it.

The config is read again when its file changes (the preview follows an editor's edits), so a
``Site`` hands out the ``Publisher`` of the current config and closes the previous one. The
lifecycle hooks (``on_start``, ``on_stop``) let a part run background work, such as the
preview's change watcher, for as long as the app runs.

Owns: reloading the config, one Publisher per config version, start and stop hooks, the
"stopping" flag long-lived responses watch. Does not own routes (one module per concern) or
the server (``web.server``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher

log = logging.getLogger(__name__)


class Site:
    """The shared state of one web app, bound to one config file. Thread-safe."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.stopping = threading.Event()  # set when the server shuts down
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._publisher: Publisher | None = None
        self._start: list[Callable[[], None]] = []
        self._stop: list[Callable[[], None]] = []

    def config_stamp(self) -> tuple[int, int]:
        """The config file's (mtime in ns, size): changes whenever the file is saved."""
        st = self.config_file.stat()
        return st.st_mtime_ns, st.st_size

    def publisher(self) -> Publisher:
        """The Publisher for the config as it is now on disk.

        Raises ``ConfigError`` (or ``StorageError``) when the config cannot be used; the next
        call tries again, so fixing the file is enough.
        """
        with self._lock:
            try:
                stamp = self.config_stamp()
            except OSError:
                stamp = (-1, -1)  # load_config names the problem
            if self._publisher is None or stamp != self._stamp:
                publisher = make_publisher(load_config(self.config_file))
                if self._publisher is not None:
                    log.info("%s changed: reloaded", self.config_file)
                    self._publisher.close()
                self._publisher, self._stamp = publisher, stamp
            return self._publisher

    def on_start(self, hook: Callable[[], None]) -> None:
        self._start.append(hook)

    def on_stop(self, hook: Callable[[], None]) -> None:
        self._stop.append(hook)

    def start(self) -> None:
        self.stopping.clear()
        for hook in self._start:
            hook()

    def close(self) -> None:
        """Run the stop hooks (last registered first) and close the Publisher."""
        self.stopping.set()
        for hook in reversed(self._stop):
            hook()
        with self._lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
