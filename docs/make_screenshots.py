"""Make the README's screenshots of the digest with the browser tests' own tooling.

    .venv/bin/python docs/make_screenshots.py

Copies the shipped example project to a temporary folder, gathers it with the clock fixed
(so the date in the digest does not change from one run to the next), serves the preview in
process and has Debian's Chromium photograph the digest as the preview serves it: 375 px
wide (docs/digest-phone.png) and 800 px wide (docs/digest-desktop.png).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from newsletter import clock  # noqa: E402
from newsletter.config import load_config  # noqa: E402
from newsletter.core import make_publisher  # noqa: E402
from tests._browser import (  # noqa: E402
    DESKTOP,
    PHONE,
    launch,
    pixel_stats,
    preview_server,
    screenshot_digest,
)

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)  # the tests' fixed clock
SHOTS = {PHONE: ROOT / "docs" / "digest-phone.png", DESKTOP: ROOT / "docs" / "digest-desktop.png"}


def main() -> None:
    clock.set_now(lambda: NOW)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        shutil.copytree(ROOT / "examples", project, ignore=shutil.ignore_patterns("*.db*"))
        config = project / "newsletter.toml"
        text = config.read_text().replace('output_dir = "../feeds"', 'output_dir = "feeds"')
        config.write_text(text.replace('outbox_dir = "../outbox"', 'outbox_dir = "outbox"'))
        with make_publisher(load_config(config)) as publisher:
            publisher.gather()
        with preview_server(config) as server, sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                for width, path in SHOTS.items():
                    png = screenshot_digest(browser, server.url, width=width, path=path)
                    (w, h), variance = pixel_stats(png)
                    print(f"wrote {path.relative_to(ROOT)}: {w}x{h}, grey variance {variance:.0f}")
            finally:
                browser.close()


if __name__ == "__main__":
    main()
