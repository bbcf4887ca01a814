"""How well and how fast are stories told by several sources grouped?

Prints figures; asserts nothing. Usage:
    .venv/bin/python benchmarks/grouping.py [--articles 2000] [--seed 7]

1. The labelled set of tests/data/grouping/ (texts written for this project): precision and
   recall over its labelled pairs (must group / must not group), and the closest calls: the
   lowest overlap among the pairs that must group, the highest among those that must not.
2. A synthetic corpus of ``--articles`` articles, ten minutes apart (400-700 words drawn
   from a Zipf-like vocabulary; 25 sources, eight of which end every article with the same
   35-word syndication notice, so that boilerplate crosses sources; about 8 % of the
   articles are another source's version of an earlier one: a summary, a copy with
   inserted comments, or a lightly edited copy): seconds per 1,000 articles for tokenizing
   alone (the bare baseline: HTML to words), for tokenizing and shingling, and for the
   whole grouping; and precision/recall of the groups against the planted pairs.

Lines printed (stable, so runs can be compared):
    RESULT set=labelled pairs=<n> precision=<p> recall=<r> tp=<n> fp=<n> fn=<n>
    RESULT set=labelled closest_must=<overlap> closest_must_not=<overlap>
    RESULT set=synthetic articles=<n> step=tokenize s_per_1000=<x>
    RESULT set=synthetic articles=<n> step=shingle s_per_1000=<x>
    RESULT set=synthetic articles=<n> step=group s_per_1000=<x> groups=<n>
    RESULT set=synthetic planted=<n> grouped_pairs=<n> precision=<p> recall=<r>
    RESULT set=synthetic max_df=off grouped_pairs=<n>
    RESULT set=synthetic articles=<n> step=feeds_without_groups s_per_1000=<x>
    RESULT set=synthetic articles=<n> step=feeds_with_groups s_per_1000=<x> related=<n>

The last two put the cost in context: every feeds build reads the whole history (it rewrites
only what changed, but renders every page), and grouping adds one more pass over it.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import parse_config  # noqa: E402
from newsletter.grouping import (  # noqa: E402
    GroupSettings,
    Stories,
    body,
    group_stories,
    related_links,
    shingles,
    words,
)
from newsletter.render.feeds import write_feeds  # noqa: E402
from newsletter.types import Article  # noqa: E402
from tests._grouping_set import load_set, story  # noqa: E402

START = datetime(2026, 3, 1, tzinfo=UTC)


def overlap(a: Article, b: Article) -> float:
    x, y = shingles(words(body(a))), shingles(words(body(b)))
    return len(x & y) / min(len(x), len(y))


def labelled() -> None:
    data = load_set()
    arts = data.articles
    stories = group_stories(arts.values(), GroupSettings())
    tp = sum(arts[b].id in stories.group_of(arts[a].id) for a, b in data.must_group)
    fp = sum(arts[b].id in stories.group_of(arts[a].id) for a, b in data.must_not_group)
    fn = len(data.must_group) - tp
    pairs = len(data.must_group) + len(data.must_not_group)
    print(
        f"RESULT set=labelled pairs={pairs} precision={_ratio(tp, tp + fp)} "
        f"recall={_ratio(tp, tp + fn)} tp={tp} fp={fp} fn={fn}"
    )
    must = min(overlap(arts[a], arts[b]) for a, b in data.must_group)
    must_not = max(overlap(arts[a], arts[b]) for a, b in data.must_not_group)
    print(f"RESULT set=labelled closest_must={must:.3f} closest_must_not={must_not:.3f}")


def _ratio(n: int, d: int) -> str:
    return f"{n / d:.3f}" if d else "n/a"


def _vocabulary(rng: random.Random, size: int = 20_000) -> tuple[list[str], list[float]]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(size)})
    weights = [1 / (rank + 1) for rank in range(len(vocab))]  # Zipf's law, roughly
    rng.shuffle(vocab)
    return vocab, weights


def _paragraphs(rng: random.Random, vocab: list[str], weights: list[float], n: int) -> list[str]:
    out = []
    left = n
    while left > 0:
        k = min(left, rng.randint(40, 90))
        out.append(" ".join(rng.choices(vocab, weights, k=k)).capitalize() + ".")
        left -= k
    return out


def synthetic(n: int, seed: int) -> tuple[list[Article], set[frozenset[int]]]:
    """``n`` articles, and the planted pairs (an original and another source's version)."""
    rng = random.Random(seed)
    vocab, weights = _vocabulary(rng)
    footer = (
        "This story was distributed by the Regional News Exchange, a cooperative of local "
        "newspapers that share their reporting; to republish it, follow the exchange's "
        "guidelines and credit the original newspaper and its reporter by name"
    )
    articles: list[Article] = []
    planted: set[frozenset[int]] = set()
    for i in range(n):
        when = START + timedelta(minutes=10 * i)
        source = f"Source {rng.randrange(25)}"
        originals = [a for a in articles[-300:] if a.source != source]
        if originals and rng.random() < 0.08:
            original = rng.choice(originals)
            paras = [p[3:-4] for p in original.content.split("</p>") if p.startswith("<p>")]
            kind = rng.choice(("summary", "comments", "edited"))
            if kind == "summary":
                paras = paras[:1]
            elif kind == "comments":
                for _ in range(2):
                    extra = "Comment: " + _paragraphs(rng, vocab, weights, 40)[0]
                    paras.insert(rng.randrange(len(paras) + 1), extra)
            else:
                paras = [" ".join(w for w in p.split() if rng.random() > 0.05) for p in paras]
                paras.insert(0, _paragraphs(rng, vocab, weights, 50)[0])
            planted.add(frozenset((original.id, i + 1)))
        else:
            paras = _paragraphs(rng, vocab, weights, rng.randint(400, 700))
        if int(source.split()[1]) < 8:
            paras.append(footer)
        content = "".join(f"<p>{p}</p>" for p in paras)
        url = f"https://example.com/{i}"
        articles.append(story(i, source=source, when=when, content=content, url=url))
    return articles, planted


def timed(label: str, n: int, run: object) -> float:
    start = time.perf_counter()
    result = run() if callable(run) else None
    seconds = time.perf_counter() - start
    extra = f" groups={result.count}" if isinstance(result, Stories) else ""
    print(
        f"RESULT set=synthetic articles={n} step={label} s_per_1000={seconds / n * 1000:.3f}{extra}"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    labelled()
    articles, planted = synthetic(args.articles, args.seed)
    n = len(articles)
    timed("tokenize", n, lambda: [words(body(a)) for a in articles])
    timed("shingle", n, lambda: [shingles(words(body(a))) for a in articles])
    settings = GroupSettings()
    stories = group_stories(articles, settings)
    timed("group", n, lambda: group_stories(articles, settings))
    found = _pairs(stories)
    # A planted pair counts as found when its two articles end up in one group; a grouped
    # pair that was not planted (nor joined through a planted chain) is a false merge.
    chained = {
        frozenset(p)
        for group in _planted_groups(planted)
        for p in itertools.combinations(sorted(group), 2)
    }
    tp = len(found & chained)
    print(
        f"RESULT set=synthetic planted={len(planted)} grouped_pairs={len(found)} "
        f"precision={_ratio(tp, len(found))} recall={_ratio(len(planted & found), len(planted))}"
    )
    # The same without the boilerplate rule: what the shared notice alone would merge.
    unbounded = _pairs(group_stories(articles, replace(settings, max_df=len(articles) + 1)))
    print(f"RESULT set=synthetic max_df=off grouped_pairs={len(unbounded)}")
    feeds(articles)


def feeds(articles: list[Article]) -> None:
    """A full feeds build of the corpus (every page rendered), without and with grouping."""
    n = len(articles)
    with tempfile.TemporaryDirectory() as folder:
        config = parse_config(
            '[newsletter]\ntitle = "Bench"\nsite_url = "https://bench.example.org/"\n'
            'sender = "Bench <b@bench.example.org>"\npostal_address = "1 Bench Street"\n'
            f'[feeds]\noutput_dir = "{folder}"\n'
        )
        for label, group in (("feeds_without_groups", False), ("feeds_with_groups", True)):
            start = time.perf_counter()
            related = related_links(articles, config.digest.group) if group else {}
            write_feeds(articles, config.newsletter, config.feeds, related=related)
            seconds = time.perf_counter() - start
            extra = f" related={len(related)}" if group else ""
            print(
                f"RESULT set=synthetic articles={n} step={label} "
                f"s_per_1000={seconds / n * 1000:.3f}{extra}"
            )


def _pairs(stories: Stories) -> set[frozenset[int]]:
    return {
        frozenset(p)
        for group in set(stories.groups.values())
        for p in itertools.combinations(group, 2)
    }


def _planted_groups(planted: set[frozenset[int]]) -> list[set[int]]:
    """The planted pairs joined into groups (a version of a version is the same story)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for pair in planted:
        a, b = sorted(pair)
        parent[find(b)] = find(a)
    groups: dict[int, set[int]] = {}
    for x in parent:
        groups.setdefault(find(x), set()).add(x)
    return list(groups.values())


if __name__ == "__main__":
    main()
