"""One story, told once: the grouping rule on the labelled set, its boilerplate, window and
source rules, its config keys, and what the digest and the feeds make of a group."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest

from newsletter.config import load_config
from newsletter.exceptions import ConfigError
from newsletter.grouping import (
    GroupSettings,
    RelatedHistory,
    Stories,
    group_stories,
    related_links,
    shingles,
    words,
)
from newsletter.render.digest import DigestRenderer
from newsletter.render.feeds import write_feeds
from newsletter.types import Article
from tests import feedcheck
from tests._factories import BASE_TIME, make_config
from tests._grouping_set import LabelledSet, load_set, paragraphs_html, story

from .test_config import MINIMAL

ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture(scope="module")
def labelled() -> LabelledSet:
    return load_set()


def together(stories: Stories, a: Article, b: Article) -> bool:
    return b.id in stories.group_of(a.id)


# --- the rule -----------------------------------------------------------------------------------


def test_normalized_words_drop_tags_case_and_punctuation() -> None:
    assert words("<p>The <b>Tram</b>’s  route—approved!</p><p>Next: 2029.</p>") == [
        "the",
        "tram",
        "s",
        "route",
        "approved",
        "next",
        "2029",
    ]
    assert shingles(["a", "b", "c", "d", "e", "f"]) == {"a b c d e", "b c d e f"}
    assert shingles(["short", "text"]) == {"short text"}
    assert shingles([]) == frozenset()


def test_every_labelled_pair_is_decided_right(labelled: LabelledSet) -> None:
    articles = labelled.articles
    stories = group_stories(articles.values(), GroupSettings())
    wrongly_apart = [p for p in labelled.must_group if not together(stories, *map(articles.get, p))]  # type: ignore[arg-type]
    wrongly_together = [
        p
        for p in labelled.must_not_group
        if together(stories, *map(articles.get, p))  # type: ignore[arg-type]
    ]
    assert wrongly_apart == [] and wrongly_together == []
    # The set is not trivial: every story on its topic, and each group is exactly its story.
    names = {a.id: name for name, a in articles.items()}
    groups = sorted(sorted(names[i] for i in g) for g in set(stories.groups.values()))
    assert groups == [
        ["library_changed_headline", "library_reopening"],
        ["tram_council", "tram_republished", "tram_summary"],
        ["tram_other_city", "tram_other_summary"],
        ["water_release", "water_release_edited"],
    ]
    assert stories.count == 4


def test_thresholds_are_what_decides(labelled: LabelledSet) -> None:
    """The edited press release shares about 57 % of its shingles: a stricter overlap keeps
    it apart; a summary shares 69 shingles, so a stricter minimum count does too."""
    a = labelled.articles
    strict = group_stories(a.values(), GroupSettings(min_overlap=0.6))
    assert not together(strict, a["water_release"], a["water_release_edited"])
    assert together(strict, a["tram_council"], a["tram_summary"])
    counted = group_stories(a.values(), GroupSettings(min_shared=70))
    assert not together(counted, a["tram_council"], a["tram_summary"])
    assert together(counted, a["tram_council"], a["tram_republished"])
    off = group_stories(a.values(), GroupSettings(enabled=False))
    assert off.groups == {}


def _filler(n: int, rng: random.Random, tail: str) -> Article:
    """A press release of 450 words of its own, ending with ``tail`` (HTML)."""
    text = " ".join(f"w{rng.randrange(200_000)}" for _ in range(450))
    when = BASE_TIME - timedelta(hours=100) + timedelta(minutes=n)
    return story(999 + n, source=f"Company {n}", when=when, content=f"<p>{text}</p>{tail}")


def test_boilerplate_in_many_articles_counts_for_nothing(labelled: LabelledSet) -> None:
    """Two companies' results share 75 shingles, nearly all from stock phrases (the legal
    disclaimer, the conference call). With a loose overlap they would group; once those
    phrases have been seen in more than ``max_df`` articles they are boilerplate, and the two
    stay apart."""
    alder, birch = labelled.articles["earnings_alder"], labelled.articles["earnings_birch"]
    # The conference-call line and the disclaimer, both stock phrases of a results release.
    stock = alder.content[alder.content.rindex("<p>Alder will host") :]
    shared = shingles(words(alder.content)) & shingles(words(birch.content))
    assert len(shared) == 75
    assert len(shared - shingles(words(stock))) < 10  # what the two really have in common
    loose = GroupSettings(min_overlap=0.2)
    assert together(group_stories([alder, birch], loose), alder, birch)
    rng = random.Random(11)
    fillers = [_filler(n, rng, stock) for n in range(60)]
    with_fillers = group_stories([*fillers, alder, birch], loose)
    assert not together(with_fillers, alder, birch)
    assert with_fillers.groups == {}  # the fillers are 450 words each: none grouped either


def test_only_articles_within_the_window_are_compared(labelled: LabelledSet) -> None:
    council, summary = labelled.articles["tram_council"], labelled.articles["tram_summary"]
    later = replace(summary, first_seen=council.first_seen + timedelta(hours=169))
    assert not together(group_stories([council, later], GroupSettings()), council, later)
    wide = GroupSettings(window_hours=200)
    assert together(group_stories([council, later], wide), council, later)


def test_articles_of_one_source_are_not_grouped_with_each_other(labelled: LabelledSet) -> None:
    council = labelled.articles["tram_council"]
    again = replace(council, id=99, uid="urn:again", key="again")
    assert group_stories([council, again], GroupSettings()).groups == {}


def test_a_group_found_once_stays_when_more_articles_arrive(labelled: LabelledSet) -> None:
    """The decision about an article uses only what arrived before it: the archive pages of
    the feeds (and their related links) do not change when the history grows."""
    ordered = sorted(labelled.articles.values(), key=lambda a: a.first_seen)
    rng = random.Random(5)
    tail = "<p>" + " ".join(words(labelled.articles["tram_council"].content)[:40]) + "</p>"
    more = [
        replace(_filler(n, rng, tail), first_seen=ordered[-1].first_seen + timedelta(minutes=n))
        for n in range(80)
    ]
    before = group_stories(ordered, GroupSettings())
    after = group_stories([*ordered, *more], GroupSettings())
    for a in ordered:
        assert [i for i in after.group_of(a.id) if i < 1000] == list(before.group_of(a.id))


def test_related_links_read_the_history_once(labelled: LabelledSet) -> None:
    a = labelled.articles
    history = iter(sorted(a.values(), key=lambda x: x.first_seen))
    links = related_links(history, GroupSettings())
    assert {r.url for r in links[a["tram_council"].id]} == {
        a["tram_summary"].url,
        a["tram_republished"].url,
    }
    assert [r.uid for r in links[a["water_release"].id]] == [a["water_release_edited"].uid]
    assert a["library_cuts"].id not in links
    assert related_links(a.values(), GroupSettings(enabled=False)) == {}


# --- config --------------------------------------------------------------------------------------


def test_grouping_keys_are_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text(
        MINIMAL + "\n[digest]\ngroup_min_overlap = 0.5\ngroup_min_shared = 20\n"
        "group_max_df = 80\ngroup_window_hours = 48\n"
    )
    assert load_config(config).digest.group == GroupSettings(
        enabled=True, min_overlap=0.5, min_shared=20, max_df=80, window_hours=48
    )
    config.write_text(MINIMAL + "\n[digest]\ngroup = false\n")
    assert load_config(config).digest.group.enabled is False
    assert load_config(_write(tmp_path, MINIMAL)).digest.group == GroupSettings()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("group_min_overlap = 1.5", "group_min_overlap: must be at most 1, got 1.5"),
        ("group_min_overlap = 0", "group_min_overlap: must be at least 0.01"),
        ("group_min_shared = 0", "group_min_shared: must be at least 1, got 0"),
        ("group_min_shared = 2.5", "group_min_shared: expected a whole number"),
        ("group_max_df = 1", "group_max_df: must be at least 2, got 1"),
        ("group_window_hours = inf", "group_window_hours: expected a finite number"),
        ('group = "yes"', "group: expected"),
        ("group_threshold = 0.3", "group_threshold"),
    ],
)
def test_bad_grouping_keys_name_file_and_line(tmp_path: Path, extra: str, reason: str) -> None:
    text = MINIMAL + "\n[digest]\n" + extra + "\n"
    config = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    line = len(text.splitlines())
    message = str(info.value)
    assert message.startswith(f"{config.resolve()}:{line}: digest."), message
    assert reason in message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text)
    return path


# --- the digest ----------------------------------------------------------------------------------


def _digest_articles(labelled: LabelledSet) -> list[Article]:
    """Newest first, as a digest gets them: the summary is the newest of the tram story."""
    a = labelled.articles
    picked = [a["tram_summary"], a["library_cuts"], a["tram_council"], a["tram_republished"]]
    return [
        replace(x, published=BASE_TIME - timedelta(hours=n), summary=x.content[:400] + "</p>")
        for n, x in enumerate(picked)
    ]


def test_the_digest_shows_a_story_once_with_its_other_sources(
    tmp_path: Path, labelled: LabelledSet
) -> None:
    articles = _digest_articles(labelled)
    summary, cuts, council, republished = articles
    rendered = DigestRenderer(make_config(tmp_path)).render(articles, now=BASE_TIME)
    # Every article is accounted for: the other versions are linked from the digest.
    assert [a.id for a in rendered.articles] == [a.id for a in articles]
    # The fullest version leads, at the place of the newest; the others follow it.
    assert rendered.groups == ((republished.id, summary.id, council.id),)
    assert rendered.grouped == 3
    assert [(lead.id, [o.id for o in others]) for lead, others in rendered.stories()] == [
        (republished.id, [summary.id, council.id]),
        (cuts.id, []),
    ]
    html = rendered.html
    assert f">{republished.title}</a>" in html
    assert summary.title not in html and council.title not in html
    assert html.index(republished.title, html.index("<body")) < html.index(cuts.title)
    also = html[html.index('class="also"') :]
    also = also[: also.index("</p>")]
    assert also.count("<a ") == 2
    assert f'href="{summary.url}"' in also and ">Regional Wire</a>" in also
    assert f'href="{council.url}"' in also and ">Northfield Gazette</a>" in also
    assert "Also in:" in also and " · " in also
    # Two stories: the subject counts one other, not three.
    assert rendered.subject.endswith("(+1 more)")
    text = rendered.text
    assert "Also in: Regional Wire [2] · Northfield Gazette [3]" in text
    assert f"[2] {summary.url}" in text and f"[3] {council.url}" in text
    assert summary.title not in text


def test_grouping_can_be_turned_off(tmp_path: Path, labelled: LabelledSet) -> None:
    articles = _digest_articles(labelled)
    config = make_config(tmp_path, "[digest]\ngroup = false\n")
    rendered = DigestRenderer(config).render(articles, now=BASE_TIME)
    assert rendered.groups == () and "Also in" not in rendered.html
    assert all(a.title in rendered.html for a in articles)


def test_a_story_left_out_for_size_counts_all_its_versions(tmp_path: Path) -> None:
    """Past the size budget whole stories are left out, from the end; the "more" link counts
    every version of them, and the digest still accounts for each article once."""
    templates = tmp_path / "templates"
    templates.mkdir()
    # An item template that shows the whole content: every story is about 6 KB of HTML.
    (templates / "_item.html").write_text(
        '<div class="item"><h3>{{ article.title }}</h3>{{ article.content | safe }}</div>\n'
    )
    config = make_config(tmp_path, top='templates = "templates"\n')
    rng = random.Random(3)
    articles = []
    for n in range(30):
        text = " ".join(f"w{rng.randrange(100_000)}" for _ in range(800))
        when = BASE_TIME - timedelta(hours=n)
        for k, source in enumerate(("Wire", "Daily")):
            articles.append(story(2 * n + k, source=source, when=when, content=f"<p>{text}</p>"))
    rendered = DigestRenderer(config).render(articles, now=BASE_TIME)
    assert rendered.size <= 100_000
    kept = len(rendered.groups)
    assert 0 < kept < 30
    assert len(rendered.articles) == 2 * kept
    assert rendered.more == 2 * (30 - kept)
    assert [a.id for a in rendered.articles] == [a.id for a in articles[: 2 * kept]]


# --- the feeds -----------------------------------------------------------------------------------


def test_feeds_keep_every_item_and_relate_a_story(tmp_path: Path, labelled: LabelledSet) -> None:
    config = make_config(tmp_path, f'[feeds]\noutput_dir = "{tmp_path / "out"}"\n')
    history = sorted(labelled.articles.values(), key=lambda a: a.first_seen)
    related = related_links(history, config.digest.group)
    write_feeds(history, config.newsletter, config.feeds, related=related)
    out = config.feeds.output_dir
    for name in ("rss.xml", "atom.xml", "feed.json"):
        assert feedcheck.check_file(out / name) == [], name
    a = labelled.articles
    expected = {
        a["tram_council"].uid: {a["tram_summary"].url, a["tram_republished"].url},
        a["tram_summary"].uid: {a["tram_council"].url, a["tram_republished"].url},
        a["water_release_edited"].uid: {a["water_release"].url},
        a["library_cuts"].uid: set(),
    }
    atom = ET.parse(out / "atom.xml").getroot()
    entries = {e.findtext(f"{ATOM}id"): e for e in atom.iter(f"{ATOM}entry")}
    assert len(entries) == len(history)
    for uid, urls in expected.items():
        links = entries[uid].findall(f"{ATOM}link[@rel='related']")
        assert {link.get("href") for link in links} == urls
        assert all(link.get("type") == "text/html" for link in links)
    rss = feedparser.parse((out / "rss.xml").read_bytes())
    assert not rss.bozo and len(rss.entries) == len(history)
    for entry in rss.entries:
        if entry.id in expected:
            got = {link.href for link in entry.links if link.rel == "related"}
            assert got == expected[entry.id]
    feed = json.loads((out / "feed.json").read_text())
    items = {i["id"]: i for i in feed["items"]}
    assert len(items) == len(history)
    council = items[a["tram_council"].uid]["_newsletter"]
    assert {(r["id"], r["url"]) for r in council["related"]} == {
        (a["tram_summary"].uid, a["tram_summary"].url),
        (a["tram_republished"].uid, a["tram_republished"].url),
    }
    assert "_newsletter" not in items[a["library_cuts"].uid]
    # Rebuilding from the same history writes the same bytes.
    again = write_feeds(history, config.newsletter, config.feeds, related=related)
    assert again.paths == ()


def test_a_related_version_without_a_web_address_is_listed_by_id_only(
    tmp_path: Path, labelled: LabelledSet
) -> None:
    config = make_config(tmp_path, f'[feeds]\noutput_dir = "{tmp_path / "out"}"\n')
    a = labelled.articles
    release = a["water_release"]
    edited = replace(a["water_release_edited"], url=None)
    history = [release, edited]
    related = related_links(history, config.digest.group)
    write_feeds(history, config.newsletter, config.feeds, related=related)
    out = config.feeds.output_dir
    for name in ("rss.xml", "atom.xml", "feed.json"):
        assert feedcheck.check_file(out / name) == [], name
    atom = ET.parse(out / "atom.xml").getroot()
    hrefs = {
        e.findtext(f"{ATOM}id"): [x.get("href") for x in e.findall(f"{ATOM}link[@rel='related']")]
        for e in atom.iter(f"{ATOM}entry")
    }
    assert hrefs == {release.uid: [], edited.uid: [release.url]}  # no href to give
    items = {i["id"]: i for i in json.loads((out / "feed.json").read_text())["items"]}
    assert items[release.uid]["_newsletter"]["related"] == [{"id": edited.uid}]
    assert items[edited.uid]["_newsletter"]["related"] == [{"id": release.uid, "url": release.url}]


def test_paragraphs_helper_escapes() -> None:
    assert paragraphs_html("a < b\n\n c ") == "<p>a &lt; b</p><p>c</p>"


# --- a history that grows ------------------------------------------------------------------------


def _related_now(history: list[Article]) -> dict[int, set[int]]:
    by_uid = {a.uid: a.id for a in history}
    full = related_links(sorted(history, key=lambda a: (a.first_seen, a.published, a.id)), GS)
    return {k: {by_uid[r.uid] for r in v} for k, v in full.items()}


GS = GroupSettings()


def test_a_growing_history_is_read_once_per_article_and_matches_a_full_read(
    labelled: LabelledSet,
) -> None:
    ordered = sorted(labelled.articles.values(), key=lambda a: a.first_seen)
    kept = RelatedHistory(GS)
    reads: list[int] = []

    def reading(history: list[Article]) -> Callable[[], Iterator[Article]]:
        def run() -> Iterator[Article]:
            reads.append(len(history))
            yield from history

        return run

    by_uid = {a.uid: a.id for a in ordered}
    for end in (5, 9, len(ordered)):
        got = kept.update(reading(ordered[:end]))
        assert {k: {by_uid[r.uid] for r in v} for k, v in got.items()} == _related_now(
            ordered[:end]
        )
    assert reads == [5, 9, len(ordered)]  # one pass each: nothing was read over
    # An article that arrives before the last one read (another node's clock) and a
    # deleted one both start the reading over, and the result is still a full read's.
    early = replace(labelled.articles["tram_summary"], id=500, uid="urn:early", source="Elsewhere")
    early = replace(early, first_seen=ordered[0].first_seen - timedelta(minutes=1))
    grown = [early, *ordered]
    got = kept.update(reading(grown))
    assert {k: {r.uid for r in v} for k, v in got.items()}[early.id] == {
        labelled.articles[n].uid for n in ("tram_council", "tram_summary", "tram_republished")
    }
    assert reads[-2:] == [len(grown), len(grown)]
    shrunk = [a for a in ordered if a is not labelled.articles["tram_summary"]]
    got = kept.update(reading(shrunk))
    assert {k: {by_uid[r.uid] for r in v} for k, v in got.items()} == _related_now(shrunk)
    assert labelled.articles["tram_summary"].id not in got
