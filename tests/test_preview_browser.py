"""The editors' preview in a real browser: Debian's Chromium driven by Playwright.

The preview runs in-process on 127.0.0.1 (port 0) against a copy of the shipped example
project. Every wait is for a condition; nothing sleeps a fixed time.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Frame, Page

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.render.digest import default_templates_dir
from newsletter.web.preview import WARN_BYTES, emulate_color_scheme
from tests._browser import (
    DESKTOP,
    PHONE,
    ServerThread,
    digest_frame,
    horizontal_overflow,
    pixel_stats,
    preview_server,
    screenshot_digest,
)

LIGHT_PAGE, LIGHT_CONTAINER = "rgb(244, 244, 245)", "rgb(255, 255, 255)"
DARK_PAGE, DARK_CONTAINER = "rgb(17, 18, 20)", "rgb(28, 29, 33)"
RELOAD_SECONDS = 5.0  # the watcher polls every 0.5 s; allow a slow, busy machine


@pytest.fixture
def project(example_project: Path, fixed_clock: list[datetime]) -> Path:
    """The example project, gathered, with an (empty) templates folder of its own."""
    (example_project.parent / "my-templates").mkdir()
    example_project.write_text('templates = "my-templates"\n' + example_project.read_text())
    with make_publisher(load_config(example_project)) as publisher:
        publisher.gather()
    return example_project


@pytest.fixture
def preview(project: Path) -> Iterator[ServerThread]:
    with preview_server(project) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield page
    page.close()


def open_preview(page: Page, url: str) -> Frame:
    page.goto(url)
    return fitted_frame(page)


def click_through(page: Page, selector: str) -> None:
    """Follow a toggle (a plain link) and wait for the new page and its frame to load."""
    with page.expect_navigation():
        page.click(selector)
    page.wait_for_load_state("load")


def fitted_frame(page: Page) -> Frame:
    """The digest frame once loaded and grown to its content (so it has no scrollbar)."""
    frame = digest_frame(page)
    page.wait_for_function(
        "() => document.getElementById('digest-frame').style.height.endsWith('px')"
    )
    return frame


def computed(frame: Frame, selector: str, prop: str) -> str:
    return str(
        frame.evaluate(
            "([s, p]) => getComputedStyle(document.querySelector(s)).getPropertyValue(p)",
            [selector, prop],
        )
    )


def container_width(frame: Frame) -> float:
    return float(
        frame.evaluate("() => document.querySelector('.container').getBoundingClientRect().width")
    )


def viewport_width(frame: Frame) -> int:
    return int(frame.evaluate("() => window.innerWidth"))


def wait_for_text(page: Page, text: str, *, in_frame: bool) -> float:
    """Seconds until ``text`` shows (in the digest frame, or on the page)."""
    start = time.monotonic()
    scope = page.frame_locator("#digest-frame") if in_frame else page
    scope.get_by_text(text).first.wait_for(timeout=RELOAD_SECONDS * 1000)
    return time.monotonic() - start


# --- the toggles ---------------------------------------------------------------------------------


def test_width_and_scheme_toggles_change_the_frame(page: Page, preview: ServerThread) -> None:
    page.emulate_media(color_scheme="dark")  # the editor's own system prefers dark...
    frame = open_preview(page, preview.url + "/")
    # ...yet "light" shows the light digest, at desktop width
    assert viewport_width(frame) == DESKTOP
    assert container_width(frame) == 600
    assert computed(frame, "body", "background-color") == LIGHT_PAGE
    assert computed(frame, ".container", "background-color") == LIGHT_CONTAINER

    click_through(page, "#width-phone")
    frame = fitted_frame(page)
    assert page.get_attribute("#width-phone", "aria-current") == "true"
    assert viewport_width(frame) == PHONE
    assert container_width(frame) == PHONE
    assert horizontal_overflow(frame) == 0

    click_through(page, "#scheme-dark")
    frame = fitted_frame(page)
    assert viewport_width(frame) == PHONE  # the width chosen before is kept
    assert computed(frame, "body", "background-color") == DARK_PAGE
    assert computed(frame, ".container", "background-color") == DARK_CONTAINER
    assert computed(frame, ".item-title a", "color") == "rgb(230, 230, 233)"
    assert page.eval_on_selector("#digest-frame", "e => e.style.colorScheme") == "dark"

    page.emulate_media(color_scheme="light")  # and dark stays dark on a light system
    click_through(page, "#width-desktop")
    frame = fitted_frame(page)
    assert viewport_width(frame) == DESKTOP and container_width(frame) == 600
    assert computed(frame, ".container", "background-color") == DARK_CONTAINER


def test_media_queries_still_win_over_the_inlined_styles(page: Page, preview: ServerThread) -> None:
    frame = open_preview(page, preview.url + "/?width=phone")
    # The inlined style says 600px and 32px; the phone rules (with !important) win.
    inline = frame.get_attribute(".container", "style") or ""
    assert "width:600px" in inline
    assert container_width(frame) == PHONE
    assert computed(frame, ".cell", "padding-left") == "16px"
    assert computed(frame, ".title", "font-size") == "21px"
    assert horizontal_overflow(frame) == 0


def test_the_plain_text_tab_shows_the_text_part(page: Page, preview: ServerThread) -> None:
    page.goto(preview.url + "/")
    click_through(page, "#view-text")
    assert page.query_selector("#digest-frame") is None
    shown = page.inner_text("#text-part")
    with urllib.request.urlopen(preview.url + "/digest.txt", timeout=10) as response:
        served = response.read().decode()
    assert shown.strip() == served.strip()
    assert shown.startswith("The Example Weekly\n")
    assert "Hi Example,\n" in shown and "\nLinks:\n" in shown
    assert "* Release round-up: parsers, schedulers and a faster inliner [1]" in shown
    assert all(len(line) <= 72 or re.fullmatch(r"\[\d+\] \S+", line) for line in served.split("\n"))


def test_the_facts_match_the_digest_and_warn_near_the_clip_limit(
    page: Page, preview: ServerThread, project: Path
) -> None:
    page.goto(preview.url + "/")
    with make_publisher(load_config(project)) as publisher:
        rendered = publisher.render_next_digest(force=True)
    assert rendered is not None
    assert page.inner_text("#subject") == rendered.subject
    assert page.inner_text("#preheader") == rendered.preheader
    assert page.inner_text("#sender") == "The Example Weekly <weekly@news.example.org>"
    assert page.inner_text("#count") == "9"
    size = page.inner_text("#size")
    assert re.fullmatch(r"1\d\.\d KB of HTML", size), size  # about 13 KB, no warning

    # A footer padded to ~85 KB puts the digest near Gmail's limit: the page says so.
    filler = "<p>" + "padding " * 10_600 + "</p>"
    footer = (default_templates_dir() / "_footer.html").read_text()
    (project.parent / "my-templates" / "_footer.html").write_text(footer + filler)
    wait_for_text(page, "near Gmail's 102 KB clip limit", in_frame=False)
    kb = float(page.inner_text("#size").split()[0])
    assert kb * 1024 >= WARN_BYTES
    assert page.get_attribute("#size", "class") == "near"


# --- live reload ---------------------------------------------------------------------------------


def test_editing_a_template_reloads_the_page(
    page: Page, preview: ServerThread, project: Path
) -> None:
    open_preview(page, preview.url + "/?width=phone")
    override = project.parent / "my-templates" / "_footer.html"
    footer = (default_templates_dir() / "_footer.html").read_text()

    override.write_text(footer.replace("at any time.", "at any time. Edited once."))
    assert wait_for_text(page, "Edited once.", in_frame=True) < RELOAD_SECONDS
    assert page.get_attribute("#width-phone", "aria-current") == "true"  # state kept

    override.write_text(footer.replace("at any time.", "{% if %}"))  # a mistake...
    wait_for_text(page, "The digest cannot be rendered.", in_frame=False)
    assert "_footer.html" in page.inner_text("#error")  # ...named on the page

    override.write_text(footer.replace("at any time.", "at any time. Edited twice."))
    wait_for_text(page, "Edited twice.", in_frame=True)
    assert page.query_selector("#error") is None


def test_new_articles_and_config_edits_reload_the_page(
    page: Page, preview: ServerThread, project: Path
) -> None:
    open_preview(page, preview.url + "/")
    (project.parent / "articles" / "late.md").write_text(
        "---\ntitle: A late addition\ndate: 2026-11-22T07:30:00+00:00\n---\nJust in.\n"
    )
    with make_publisher(load_config(project)) as publisher:
        assert sum(r.new for r in publisher.gather()) == 1
    wait_for_text(page, "A late addition", in_frame=True)
    assert page.inner_text("#count") == "10"

    project.write_text(project.read_text().replace("The Example Weekly", "The Renamed Weekly"))
    wait_for_text(page, "The Renamed Weekly <weekly@news.example.org>", in_frame=False)
    assert digest_frame(page).get_by_text("The Renamed Weekly").first.is_visible()


# --- send test -----------------------------------------------------------------------------------


def test_the_send_test_form_delivers_one_message(
    page: Page, preview: ServerThread, project: Path
) -> None:
    open_preview(page, preview.url + "/?width=phone")
    outbox = project.parent / "outbox"
    page.fill("#address", "editor@example.com")
    with page.expect_navigation():
        page.click("#send-test button")
    result = page.inner_text("#send-result")
    assert result.startswith("sent a test to editor@example.com (<test")
    assert page.url == preview.url + "/?width=phone&scheme=light&view=html"  # reloads with GET
    files = list(outbox.rglob("*.eml"))
    assert [f.name for f in files] == ["0-editor@example.com.eml"]
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert msg["To"] == "editor@example.com"
    # Compared with whitespace collapsed: the email package folds a long non-ASCII subject
    # with a space too many ("and \r\n =?utf-8?q?a=E2=80=A6?="), which unfolds as two.
    assert " ".join(msg["Subject"].split()) == page.inner_text("#subject")

    page.fill("#address", "not an address")
    page.eval_on_selector("#address", "e => e.type = 'text'")  # past the browser's own check
    with page.expect_navigation():
        page.click("#send-test button")
    assert page.inner_text("#send-result").startswith("not sent:")
    assert page.get_attribute("#send-result", "class") == "alert error"
    assert len(list(outbox.rglob("*.eml"))) == 1


def test_requests_for_another_host_or_from_another_site_are_refused(
    preview: ServerThread,
) -> None:
    rebound = urllib.request.Request(preview.url + "/", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(rebound, timeout=10)
    info.value.close()
    assert info.value.code == 421
    cross = urllib.request.Request(
        preview.url + "/send-test",
        data=b"address=victim%40example.com",
        headers={"Origin": "https://attacker.example"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(cross, timeout=10)
    info.value.close()
    assert info.value.code == 403


# --- screenshots ---------------------------------------------------------------------------------


def test_screenshots_at_phone_and_desktop_widths(
    browser: Browser, preview: ServerThread, tmp_path: Path
) -> None:
    shots = {}
    for width in (PHONE, DESKTOP):
        path = tmp_path / f"digest-{width}.png"
        png = screenshot_digest(browser, preview.url, width=width, path=path)
        assert path.read_bytes() == png
        (w, h), variance = pixel_stats(png)
        assert w == width and h > 1000  # the whole digest, not one screen of it
        assert variance > 200, f"{path} looks blank (variance {variance:.0f})"
        shots[width] = png
    dark = screenshot_digest(
        browser, preview.url, width=PHONE, path=tmp_path / "digest-dark.png", scheme="dark"
    )
    assert pixel_stats(dark)[1] > 200
    assert dark != shots[PHONE]


# --- without a browser -------------------------------------------------------------------------


def test_emulate_color_scheme() -> None:
    html = (
        '<meta name="color-scheme" content="light dark">'
        "<style>a{color:red}@media (prefers-color-scheme: dark){a{color:blue}}"
        "@media screen and (prefers-color-scheme:light){b{x:y}}</style>"
        "<p>(prefers-color-scheme: dark) in the text is left alone</p>"
    )
    dark = emulate_color_scheme(html, "dark")
    assert '<meta name="color-scheme" content="dark">' in dark
    assert "@media (min-width: 0px){a{color:blue}}" in dark
    assert "@media screen and (max-width: 0px){b{x:y}}" in dark
    assert "<p>(prefers-color-scheme: dark) in the text" in dark
    light = emulate_color_scheme(html, "light")
    assert "@media (max-width: 0px){a{color:blue}}" in light
    assert "@media screen and (min-width: 0px){b{x:y}}" in light
    with pytest.raises(ValueError, match="sepia"):
        emulate_color_scheme(html, "sepia")
