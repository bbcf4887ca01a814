"""Notice changes and tell open pages about them with server-sent events.

A ``Watcher`` polls a snapshot function in a background thread (every half second by
default) and counts how often the snapshot changed: its ``version``. A page embeds the version
it was rendered at and opens ``event_stream(since=that)``; the stream sends a ``change``
event as soon as the version differs, so a change made while the page was loading is not
missed. Polling, rather than inotify and friends, works the same on every OS and filesystem,
for files and for a database alike, and a snapshot of a few file times is cheap.

Owns: the polling thread, the version counter, the SSE wire format. Does not own what is
watched (the caller's snapshot) or what a page does with an event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0  # a comment line now and then keeps proxies from closing the stream


def files_stamp(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime in ns, size) of every file under ``paths`` (files or folders), sorted.

    A file added, removed, saved or renamed changes the result. Hidden files and folders (an
    editor's swap files, ``.git``) are left out; a path that does not exist counts as empty.
    """
    found: list[tuple[str, int, int]] = []
    for root in paths:
        if root.is_dir():
            candidates = [
                p
                for p in sorted(root.rglob("*"))
                if not any(part.startswith(".") for part in p.relative_to(root).parts)
            ]
        else:
            candidates = [root]
        for path in candidates:
            try:
                st = path.stat()
            except OSError:  # absent, or removed between the listing and the stat
                continue
            if path.is_file():
                found.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(found)


class Watcher:
    """Polls ``snapshot`` in a thread; ``version`` goes up by one at each change it sees.

    ``snapshot`` returns any hashable value describing the state watched. An exception from it
    is logged and counts as a state of its own (so fixing the cause is seen as a change).
    """

    def __init__(self, snapshot: Callable[[], Hashable], *, interval: float = POLL_SECONDS) -> None:
        self.snapshot = snapshot
        self.interval = interval
        self.version = 0
        self._last: Hashable = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._last = self._take()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="newsletter-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def check(self) -> bool:
        """Take one snapshot now; True (and a new version) when it differs from the last."""
        current = self._take()
        if current == self._last:
            return False
        self._last = current
        self.version += 1
        log.info("change noticed: preview version %d", self.version)
        return True

    def _take(self) -> Hashable:
        try:
            return self.snapshot()
        except Exception as e:
            # Whatever broke (a config being edited, a database locked for a moment) is shown
            # by the page itself; here it is one more state to compare.
            log.debug("snapshot failed: %s", e)
            return ("error", type(e).__name__, str(e))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()


def event_stream(
    request: Request, watcher: Watcher, *, since: int, stopping: threading.Event
) -> StreamingResponse:
    """A ``text/event-stream`` response: an ``event: change`` whenever ``watcher.version``
    differs from the version the client last saw (``since``, then each one sent).

    Ends when the client goes away or ``stopping`` is set (the server is shutting down).
    """

    async def events() -> AsyncIterator[str]:
        # The browser reconnects by itself after a dropped stream; a second is soon enough.
        yield "retry: 1000\n\n"
        seen = since
        quiet = 0.0
        while not stopping.is_set():
            version = watcher.version
            if version != seen:
                seen = version
                quiet = 0.0
                yield f"event: change\ndata: {version}\n\n"
            elif quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return
            await anyio.sleep(0.2)
            quiet += 0.2

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
