"""What does extracting an article from a page cost? Per page, beside parsing it alone.

For each test page (tests/data/fulltext, plus a long page built from the story: 40 paragraphs
and a heavy menu, sidebar and comment thread around them), in the same run:

- ``parse``: lxml parsing the HTML alone, the floor any extraction pays;
- ``trafilatura``: ``bare_extraction`` with the options ``extract_article`` uses;
- ``extract_article``: the whole of ours (trafilatura, the figure and its caption, the lead
  image, the repeated heading, courlan on the links, the nh3 sanitizer).

Prints figures; asserts nothing. Usage:
    .venv/bin/python benchmarks/extract.py [--repeat 30]

Lines printed (stable, so runs can be compared):
    RESULT page=<name> kb=<size> step=<parse|trafilatura|extract_article> ms=<median> ms_p90=<p90>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lxml.html  # noqa: E402
from trafilatura import bare_extraction  # noqa: E402

from newsletter.sources.extract import extract_article  # noqa: E402

PAGES = ROOT / "tests" / "data" / "fulltext"
URL = "https://news.example/2026/03/tidal-barrier"


def long_page(story: str) -> str:
    """The story with 40 paragraphs, inside 200 menu links, a 50-link sidebar and 60 comments."""
    paragraphs = "".join(
        f"<p>Engineers from the national flood agency will survey section {i} of the harbour "
        f"floor in week {i + 10}, measuring how the channel has moved since the last survey, "
        "and the council will publish their report before the final design is agreed.</p>\n"
        for i in range(40)
    )
    menu = "".join(f'<li><a href="/section/{i}">Section {i}</a></li>' for i in range(200))
    sidebar = "".join(f'<li><a href="/read/{i}">Most read story {i}</a></li>' for i in range(50))
    comments = "".join(
        f'<div class="comment"><p>Reader {i} says this is long overdue for the town.</p></div>'
        for i in range(60)
    )
    page = story.replace("<nav><ul>", f"<nav><ul>{menu}")
    page = page.replace("</article>", paragraphs + "</article>")
    page = page.replace('<aside class="sidebar"><h2>Most read</h2><ul>', f"<aside><ul>{sidebar}")
    return page.replace("<h2>Comments</h2>", f"<h2>Comments</h2>{comments}")


def timed(work: Callable[[], object], repeat: int) -> tuple[float, float]:
    work()  # warm caches (lxml, trafilatura's compiled XPaths, htmldate's regexes)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    story = (PAGES / "story.html").read_text()
    pages = {
        "story": story,
        "hostile": (PAGES / "hostile.html").read_text(),
        "long": long_page(story),
    }
    for name, html in pages.items():
        steps: dict[str, Callable[[], object]] = {
            "parse": lambda html=html: lxml.html.document_fromstring(html),
            "trafilatura": lambda html=html: bare_extraction(
                html,
                url=URL,
                with_metadata=True,
                include_comments=False,
                include_images=True,
                include_links=True,
                include_formatting=True,
                output_format="html",
            ),
            "extract_article": lambda html=html: extract_article(html, URL),
        }
        kb = len(html.encode()) / 1024
        for step, work in steps.items():
            median, p90 = timed(work, args.repeat)
            print(
                f"RESULT page={name} kb={kb:.1f} step={step} ms={median:.2f} ms_p90={p90:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
