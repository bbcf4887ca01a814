"""Editors' writing is readable: a page per Markdown article (its link in the feeds and the
digest), whole articles in the digest within its size budget, and the editor's note that opens
one digest only."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import html5lib
import pytest
from playwright.sync_api import Browser

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import NoteChanged
from newsletter.render import archive
from newsletter.render.digest import HTML_MAX_BYTES, DigestRenderer, RenderedDigest
from newsletter.storage import SqlStorage
from newsletter.types import SubscriberStatus
from tests._browser import preview_server, wait_for
from tests._factories import make_article, make_config
from tests._project import add_article, command, set_table
from tests.test_storage_contract import NOW, db_url, race, storage
from tests.test_web_feeds import Running, running_site

__all__ = ["db_url", "storage"]

NS = {"h": "http://www.w3.org/1999/xhtml"}
LINKED = """---
title: Where the links go
date: 2026-11-21T10:00:00+01:00
author: Rosa Editor
---

Read [the style guide](https://docs.example.org/style) and [our archive](/archive/) first.
"""


@pytest.fixture
def project(example_project: Path, fixed_clock: list[datetime]) -> Path:
    (example_project.parent / "articles" / "where-links-go.md").write_text(LINKED)
    return example_project


@pytest.fixture
def publisher(project: Path) -> Iterator[Publisher]:
    pub = make_publisher(load_config(project))
    pub.gather()
    yield pub
    pub.close()


def _folder_articles(publisher: Publisher) -> dict[str, str]:
    """Title -> page URL of every article of the example's folder source."""
    return {
        a.title: archive.article_page_url(publisher.config.newsletter, a)
        for a in publisher.storage.recent_articles(100)
        if a.source == "Editorial"
    }


# --- a page per article -------------------------------------------------------------------------


def test_each_folder_article_gets_a_page_that_is_its_link_in_the_feeds(
    publisher: Publisher,
) -> None:
    publisher.build_feeds()
    pages = _folder_articles(publisher)
    assert len(pages) == 4
    folder = publisher.config.feeds.output_dir / "archive" / "articles"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        u.rsplit("/", 1)[1] for u in pages.values()
    )
    url = pages["Where the links go"]
    assert re.fullmatch(
        r"https://news\.example\.org/archive/articles/where-links-go-[0-9a-f]{8}\.html", url
    )
    # The page: the article whole, its links kept (a relative one made absolute), the feeds'
    # autodiscovery and a subscribe form to the site.
    text = (folder / url.rsplit("/", 1)[1]).read_text()
    doc = html5lib.HTMLParser(strict=True).parse(text)
    alternates = {
        link.get("type"): link.get("href")
        for link in doc.findall(".//h:head/h:link[@rel='alternate']", NS)
    }
    assert alternates == {
        "application/rss+xml": "https://news.example.org/feeds/rss.xml",
        "application/atom+xml": "https://news.example.org/feeds/atom.xml",
        "application/feed+json": "https://news.example.org/feeds/feed.json",
    }
    assert doc.find(".//h:h1", NS).text == "Where the links go"
    hrefs = [a.get("href") for a in doc.findall(".//h:div[@id='body']//h:a", NS)]
    assert hrefs == ["https://docs.example.org/style", "https://news.example.org/archive/"]
    form = doc.find(".//h:form[@id='subscribe']", NS)
    assert form.get("action") == "https://news.example.org/subscribe"
    # In all three feeds, the article's link is that page.
    out = publisher.config.feeds.output_dir
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((out / name).read_bytes())
        links = {e.title: e.link for e in parsed.entries if e.title in pages}
        assert links == pages, name
    items = json.loads((out / "feed.json").read_text())["items"]
    assert {i["title"]: i["url"] for i in items if i["title"] in pages} == pages


def test_an_article_page_keeps_its_name_when_its_title_changes(publisher: Publisher) -> None:
    before = _folder_articles(publisher)["Where the links go"]
    path = publisher.config.sources[0].options.path / "where-links-go.md"
    path.write_text(LINKED.replace("title: Where the links go", "title: Links, revised"))
    publisher.gather()
    assert _folder_articles(publisher)["Links, revised"] == before


def test_a_folder_article_with_its_own_url_gets_no_page(publisher: Publisher) -> None:
    path = publisher.config.sources[0].options.path / "where-links-go.md"
    path.write_text(LINKED.replace("author:", "url: https://elsewhere.example.com/links\nauthor:"))
    publisher.gather()
    publisher.build_feeds()
    folder = publisher.config.feeds.output_dir / "archive" / "articles"
    assert not any(p.name.startswith("where-links-go") for p in folder.iterdir())
    parsed = feedparser.parse((publisher.config.feeds.output_dir / "rss.xml").read_bytes())
    assert {e.title: e.link for e in parsed.entries}["Where the links go"] == (
        "https://elsewhere.example.com/links"
    )


def test_the_digest_shows_folder_articles_whole_with_their_links(publisher: Publisher) -> None:
    rendered = publisher.render_next_digest()
    assert rendered is not None
    pages = _folder_articles(publisher)
    whole = {a.title for a in rendered.articles if a.id in rendered.full}
    assert whole == set(pages)  # the folder's, and no feed's
    assert '<a href="https://docs.example.org/style"' in rendered.html
    assert f'<a href="{pages["Where the links go"]}"' in rendered.html  # the title's link
    # The text part: the body as text, its links numbered and listed.
    assert "Read the style guide [" in rendered.text
    assert re.search(r"^\[\d+\] https://docs\.example\.org/style$", rendered.text, re.M)


def _next_digest_with(
    project: Path, path: str, full_content: bool
) -> tuple[Publisher, RenderedDigest]:
    """The next digest once the source at ``path`` says ``full_content``; the publisher is
    closed by the caller."""
    setting = "true" if full_content else "false"
    line = f'path = "{path}"'
    project.write_text(project.read_text().replace(line, f"{line}\nfull_content = {setting}"))
    publisher = make_publisher(load_config(project))
    publisher.gather()
    rendered = publisher.render_next_digest()
    assert rendered is not None
    return publisher, rendered


def test_without_full_content_read_more_leads_to_the_page(project: Path) -> None:
    publisher, rendered = _next_digest_with(project, "articles", full_content=False)
    with publisher:
        assert not rendered.full
        url = _folder_articles(publisher)["Where the links go"]
        item = rendered.html.split(url, 1)[1]  # from the article's title on
        assert re.search(rf'<a href="{re.escape(url)}"[^>]*>Read more', item)
        assert "docs.example.org" not in rendered.html  # an excerpt, not the body


def test_a_feed_can_ask_for_full_content(project: Path) -> None:
    publisher, rendered = _next_digest_with(project, "sources/field-notes.rss", full_content=True)
    with publisher:
        sources = {a.source for a in rendered.articles if a.id in rendered.full}
        assert sources == {"Editorial", "Field Notes"}


def test_whole_articles_that_do_not_fit_become_excerpts_with_their_link(tmp_path: Path) -> None:
    config = make_config(tmp_path, '[[sources]]\nname = "Desk"\nkind = "folder"\npath = "desk"\n')
    renderer = DigestRenderer(config)
    body = "".join(f"<p>Paragraph {i} of a long essay, with words. </p>" for i in range(1200))
    articles = [
        make_article(n, source="Desk", content=body, url=f"https://news.example.org/a/{n}")
        for n in range(4)
    ]
    assert len(body) * 4 > 2 * HTML_MAX_BYTES
    rendered = renderer.render(articles, now=datetime(2026, 11, 29, tzinfo=UTC))
    assert rendered.size <= HTML_MAX_BYTES
    assert len(rendered.articles) == 4 and rendered.more == 0  # all there, some as excerpts
    assert rendered.full and len(rendered.full) < 4
    # The first ones stay whole; the later ones are excerpts with a link to the rest.
    assert rendered.full == {a.id for a in articles[: len(rendered.full)]}
    for article in articles[len(rendered.full) :]:
        assert re.search(rf'<a href="{article.url}"[^>]*>Read more', rendered.html)
    # Small enough: all whole.
    small = [replace(a, content="<p>Short.</p>") for a in articles]
    assert renderer.render(small, now=datetime(2026, 11, 29, tzinfo=UTC)).full == {
        a.id for a in small
    }


def test_an_article_page_works_in_a_browser_and_its_form_subscribes(
    browser: Browser, project: Path
) -> None:
    with running_site(project) as site:
        with site.publisher() as publisher:
            publisher.gather()
            publisher.build_feeds()
            url = _folder_articles(publisher)["Where the links go"]
        assert url.startswith(site.url + "/archive/articles/")
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            response = page.goto(url)
            assert response is not None and response.status == 200
            assert page.title() == "Where the links go · The Example Weekly"
            assert page.text_content("#title") == "Where the links go"
            feeds = page.eval_on_selector_all(
                "link[rel=alternate]", "ls => ls.map(l => [l.type, l.href])"
            )
            assert sorted(feeds) == sorted(
                [
                    ["application/rss+xml", f"{site.url}/feeds/rss.xml"],
                    ["application/atom+xml", f"{site.url}/feeds/atom.xml"],
                    ["application/feed+json", f"{site.url}/feeds/feed.json"],
                ]
            )
            assert page.request.get(f"{site.url}/feeds/rss.xml").status == 200
            # No issue has been sent yet: no link to an archive that does not exist.
            assert page.query_selector("#past-issues") is None
            link = page.get_attribute("#body a", "href")
            assert link == "https://docs.example.org/style"
            assert page.evaluate(
                "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
            )
            page.fill("#email", "reader@example.com")
            page.fill("#name", "Page Reader")
            with page.expect_navigation():
                page.click("#submit")
            assert page.text_content("#heading") == "Check your inbox"
        finally:
            page.close()
        assert _status(site, "reader@example.com") == SubscriberStatus.PENDING


def _status(site: Running, address: str) -> SubscriberStatus | None:
    with site.publisher() as publisher:
        found = publisher.storage.get_subscriber(address)
    return found.status if found else None


# --- the editor's note: storage, on both engines -----------------------------------------------


def test_one_note_waits_and_one_digest_takes_it(storage: SqlStorage) -> None:
    assert storage.pending_note() is None
    assert storage.set_note("first", NOW)
    assert storage.set_note("second", NOW)  # replaces
    note = storage.pending_note()
    assert note is not None and note.body == "second"
    digest, created = storage.create_digest(
        number=1, uid="u1", subject="s", preheader="p", html="h", text="t",
        article_ids=[], now=NOW, batch_size=10, note_id=note.id,
    )  # fmt: skip
    assert created
    assert storage.pending_note() is None
    taken = storage.digest_note(digest.id)
    assert taken is not None and taken.body == "second"
    # A digest that loses the race for its number takes nothing.
    storage.set_note("third", NOW)
    third = storage.pending_note()
    assert third is not None
    _, created = storage.create_digest(
        number=1, uid="u2", subject="s", preheader="p", html="h", text="t",
        article_ids=[], now=NOW, batch_size=10, note_id=third.id,
    )  # fmt: skip
    assert not created and storage.pending_note() == third
    assert storage.clear_note() and not storage.clear_note()


def test_a_digest_rendered_with_a_note_replaced_since_is_not_stored(storage: SqlStorage) -> None:
    storage.set_note("old", NOW)
    old = storage.pending_note()
    assert old is not None
    storage.set_note("new", NOW)
    with pytest.raises(NoteChanged):
        storage.create_digest(
            number=1, uid="u1", subject="s", preheader="p", html="h", text="t",
            article_ids=[], now=NOW, batch_size=10, note_id=old.id,
        )  # fmt: skip
    assert storage.last_digest() is None  # rolled back whole
    assert storage.pending_note() is not None


def test_a_note_file_is_stored_once_by_its_identity(storage: SqlStorage) -> None:
    assert storage.set_note("from a file", NOW, origin="file:abc:1")
    assert not storage.set_note("from a file", NOW, origin="file:abc:1")
    note = storage.pending_note()
    assert note is not None
    storage.create_digest(
        number=1, uid="u1", subject="s", preheader="p", html="h", text="t",
        article_ids=[], now=NOW, batch_size=10, note_id=note.id,
    )  # fmt: skip
    # Taken: the same file seen again (a crash before its rename) is not a new note.
    assert not storage.set_note("from a file", NOW, origin="file:abc:1")
    assert storage.pending_note() is None


def test_nodes_reading_the_same_note_file_at_once_store_it_once(
    db_url: str, storage: SqlStorage
) -> None:
    stored = race(db_url, 4, lambda own, i: own.set_note("From the file.", NOW, origin="file:x:1"))
    assert sorted(stored) == [False, False, False, True]
    note = storage.pending_note()
    assert note is not None and note.body == "From the file."


# --- the editor's note through the publisher and the CLI ----------------------------------------


def _messages(outbox: Path, digest_id: int) -> list[str]:
    return [p.read_text() for p in sorted((outbox / str(digest_id)).glob("*.eml"))]


def test_the_note_opens_one_digest_only(project: Path, fixed_clock: list[datetime]) -> None:
    with make_publisher(load_config(project)) as publisher:
        publisher.import_subscribers(project.parent / "subscribers.csv")
        publisher.gather()
        publisher.set_note("**Hello** from the desk: see [the plan](https://plan.example.org/).")
        preview = publisher.render_next_digest()
        assert preview is not None and 'id="editors-note"' in preview.html
        first = publisher.send_digest()
        assert first.sent == 4
        digest = publisher.storage.get_digest(first.digest_id or 0)
        assert digest is not None
        assert 'href="https://plan.example.org/"' in digest.html
        assert "<strong>Hello</strong>" in digest.html
        assert "Hello from the desk: see the plan [" in digest.text
        outbox = publisher.config.mail.provider("outbox").outbox_dir
        assert all("plan.example.org" in m for m in _messages(outbox, digest.id))
        assert publisher.next_note() == ""

        fixed_clock[0] += timedelta(days=1)
        add_article(project, "later", "A later story", fixed_clock[0])
        publisher.gather()
        second = publisher.send_digest()
        assert second.sent == 4 and second.digest_id != first.digest_id
        later = publisher.storage.get_digest(second.digest_id or 0)
        assert later is not None and "editors-note" not in later.html
        assert not any("plan.example.org" in m for m in _messages(outbox, later.id))


def test_a_note_file_opens_the_next_digest_and_is_renamed(
    project: Path, fixed_clock: list[datetime]
) -> None:
    set_table(
        project,
        "digest",
        'lookback_hours = 100000\nmax_items = 30\nsection_by = "source"\nnote_file = "note.md"',
    )
    note = project.parent / "note.md"
    note.write_text("Back from the **holidays**.\n")
    kept = project.parent / "note-copy.md"
    shutil.copy2(note, kept)
    with make_publisher(load_config(project)) as publisher:
        publisher.import_subscribers(project.parent / "subscribers.csv")
        publisher.gather()
        assert publisher.next_note() == "Back from the **holidays**."
        assert note.exists()  # previewing takes nothing
        first = publisher.send_digest()
        digest = publisher.storage.get_digest(first.digest_id or 0)
        assert digest is not None and "<strong>holidays</strong>" in digest.html
        assert not note.exists()
        assert [p.name for p in project.parent.glob("note.md.sent-*")] == [
            f"note.md.sent-{fixed_clock[0].astimezone(UTC):%Y%m%dT%H%M%S}"
        ]
        # A crash after storing the note and before the rename leaves the same file (same
        # bytes, same mtime): the next digest must not show it again.
        shutil.copy2(kept, note)
        st = kept.stat()
        os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns))
        fixed_clock[0] += timedelta(days=1)
        add_article(project, "later", "A later story", fixed_clock[0])
        publisher.gather()
        second = publisher.send_digest()
        later = publisher.storage.get_digest(second.digest_id or 0)
        assert later is not None and "holidays" not in later.html
        assert not note.exists()  # renamed all the same


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    child = command(config, *args)
    out, err = child.communicate(timeout=60)
    return child.returncode, out, err


def test_the_note_command(project: Path, tmp_path: Path) -> None:
    code, out, _ = _run(project, "note", "Welcome, *new readers*.")
    assert code == 0 and "note set" in out
    with make_publisher(load_config(project)) as publisher:
        assert publisher.next_note() == "Welcome, *new readers*."
        publisher.gather()
    text = tmp_path / "from-file.md"
    text.write_text("# Issue notes\n\nFrom a file.\n")
    assert _run(project, "note", "--file", str(text))[0] == 0  # replaces the waiting one
    assert _run(project, "note", "--show")[1].strip() == "# Issue notes\n\nFrom a file."
    code, out, _ = _run(project, "digest")
    assert code == 0 and "opens with the editor's note:\n  # Issue notes" in out
    code, out, _ = _run(project, "note", "--clear")
    assert code == 0 and out.strip() == "note dropped"
    with make_publisher(load_config(project)) as publisher:
        assert publisher.next_note() == ""
    code, _, err = _run(project, "note", "x", "--clear")
    assert code == 2 and "one of TEXT" in err
    code, _, err = _run(project, "note", "   ")
    assert code != 0 and "the note is empty" in err


def test_the_preview_shows_the_note_as_it_will_be_sent(project: Path) -> None:
    with make_publisher(load_config(project)) as publisher:
        publisher.gather()
    with preview_server(project) as server:

        def frame() -> str:
            with urllib.request.urlopen(server.url + "/digest.html", timeout=10) as response:
                return str(response.read().decode())

        assert "editors-note" not in frame()
        with make_publisher(load_config(project)) as publisher:
            publisher.set_note("Hello from the **Osprey** desk.")
        # The preview watches the note as it watches articles: it renders again by itself.
        shown = wait_for(lambda: "Osprey" in (page := frame()) and page, timeout=10)
        assert "<strong>Osprey</strong>" in shown and 'id="editors-note"' in shown
        with make_publisher(load_config(project)) as publisher:
            assert publisher.next_note() == "Hello from the **Osprey** desk."  # not taken
