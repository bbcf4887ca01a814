"""Shared helpers for tests (and docs/make_screenshots.py) that drive a real browser.

The browser is Debian's ``chromium`` driven by Playwright through ``executable_path``;
Playwright's own browser download is never used (there is no network for it). A missing
browser is a test failure with a message saying how to install it, never a skip.

Servers run in-process: our Starlette app under uvicorn in a thread, on 127.0.0.1 and a port
the OS picks.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageStat
from playwright.sync_api import Browser, Frame, Page, Playwright
from starlette.applications import Starlette

from newsletter.web import create_app
from newsletter.web import preview as preview_module
from newsletter.web.server import bind, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PHONE = 375
DESKTOP = 800


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """Debian's chromium, or ``BrowserMissing`` saying how to get it."""
    if not CHROMIUM.is_file():
        raise BrowserMissing(
            f"{CHROMIUM} not found: the browser tests drive Debian's chromium. Install it with "
            "`apt-get update && apt-get install -y chromium` (`make test` does this), "
            "never with `playwright install`."
        )
    return str(CHROMIUM)


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


class ServerThread:
    """A Starlette app under uvicorn in a thread, on 127.0.0.1 and a free port.

    Use as a context manager; ``url`` is the base URL (no trailing slash). ``options`` go to
    ``make_server`` (its connection deadlines and limits).
    """

    def __init__(self, app: Starlette, **options: Any) -> None:
        self.app = app
        self.sock = bind("127.0.0.1", 0)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(app, stopping=app.state.site.stopping, **options)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), timeout=15)
        if not self.server.started:
            raise RuntimeError("the server did not start (see the log above)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("the server did not stop within 15 s")


@contextmanager
def preview_server(config_file: Path) -> Iterator[ServerThread]:
    """The preview app (``newsletter preview``) for ``config_file``, running."""
    app = create_app(config_file, concerns=[preview_module.routes])
    with ServerThread(app) as server:
        yield server


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true; return that. Fails after
    ``timeout`` seconds with ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def digest_frame(page: Page) -> Frame:
    """The preview page's digest frame, loaded."""
    handle = page.wait_for_selector("#digest-frame")
    assert handle is not None
    frame = handle.content_frame()
    assert frame is not None
    frame.wait_for_load_state()
    return frame


def horizontal_overflow(target: Page | Frame) -> int:
    """How many pixels the document is wider than its viewport (0: no horizontal scrolling)."""
    result = target.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return int(result)


def screenshot_digest(
    browser: Browser, base_url: str, *, width: int, path: Path, scheme: str = "light"
) -> bytes:
    """A full-length screenshot of the digest (as the preview serves it) ``width`` px wide,
    saved to ``path``. Also checks that nothing scrolls sideways at that width."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(f"{base_url}/digest.html?scheme={scheme}")
        page.wait_for_load_state("load")
        overflow = horizontal_overflow(page)
        if overflow > 0:
            raise AssertionError(f"the digest scrolls sideways by {overflow}px at {width}px")
        png = page.screenshot(path=str(path), full_page=True)
    finally:
        page.close()
    return png


def pixel_stats(png: bytes) -> tuple[tuple[int, int], float]:
    """(width, height) of a PNG and the variance of its grey levels (0: a blank image)."""
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        return grey.size, float(ImageStat.Stat(grey).var[0])
