"""How much does a digest cost per subscriber? Render once + personalize, versus the naive path.

Prints figures; asserts nothing. Usage:
    .venv/bin/python benchmarks/render.py [--articles 20] [--recipients 20000] [--naive 30]

Lines printed (stable, so runs can be compared):
    RESULT step=render_once articles=<n> ms=<x> html_kb=<y>
    RESULT step=personalize_and_build recipients=<n> msgs_per_s=<x> us_per_msg=<y>
    RESULT step=naive_render_per_recipient recipients=<n> msgs_per_s=<x> us_per_msg=<y>
    RESULT speedup=<personalized/naive>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import parse_config  # noqa: E402
from newsletter.mail.base import PreparedContent  # noqa: E402
from newsletter.mail.message import build_message  # noqa: E402
from newsletter.render.digest import DigestRenderer, RenderedDigest  # noqa: E402
from newsletter.tokens import UnsubscribeTokens  # noqa: E402
from newsletter.types import Article, MessageContent, Recipient  # noqa: E402

CONFIG = """
[newsletter]
title = "Benchmark Weekly"
site_url = "https://bench.example.org/"
sender = "Benchmark Weekly <weekly@bench.example.org>"
postal_address = "1 Bench Street, Example City"

[digest]
# Every article here has the same text; grouped, they would be one story. The benchmark
# measures a digest of distinct articles.
group = false
"""

PARAGRAPH = (
    "<p>Measured work beats guessed work: profile first, then change one thing at a time and "
    "measure again. <a href='https://example.org/more'>More on this</a>.</p>"
)


def articles(n: int) -> list[Article]:
    base = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    return [
        Article(
            id=i + 1,
            uid=f"urn:uuid:00000000-0000-0000-0000-{i:012d}",
            source=f"Source {i % 4}",
            key=f"k{i}",
            title=f"Article number {i}: a headline of a realistic length for a digest",
            url=f"https://example.org/articles/{i}",
            author="A. Writer",
            published=base - timedelta(hours=i),
            updated=base - timedelta(hours=i),
            first_seen=base,
            summary=PARAGRAPH,
            content=PARAGRAPH * 12,
            tags=("performance",),
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--naive", type=int, default=30, help="recipients for the naive path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(CONFIG, Path(tmp) / "newsletter.toml")
    renderer = DigestRenderer(config)
    items = articles(args.articles)
    now = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)

    t0 = time.perf_counter()
    rendered = renderer.render(items, now=now)
    once_ms = (time.perf_counter() - t0) * 1000
    print(
        f"RESULT step=render_once articles={args.articles} ms={once_ms:.1f} "
        f"html_kb={len(rendered.html.encode()) / 1024:.1f}"
    )

    nl = config.newsletter

    def prepared(digest: RenderedDigest) -> PreparedContent:
        return PreparedContent(
            MessageContent(
                digest_id=1,
                digest_uid="benchmark",
                subject=digest.subject,
                from_addr=nl.sender,
                html=digest.html,
                text=digest.text,
                list_id=nl.list_id,
                message_id_domain=nl.domain,
            )
        )

    content = prepared(rendered)
    tokens = UnsubscribeTokens("benchmark-secret", nl.list_id)

    def recipient(i: int) -> Recipient:
        address = f"reader{i}@example.com"
        return Recipient(
            i,
            address,
            f"Reader {i}",
            {
                "email": address,
                "name": f"Reader {i}",
                "first_name": "Reader",
                "unsubscribe_url": f"{nl.site_url}unsubscribe/{tokens.make(i, address)}",
            },
        )

    t0 = time.perf_counter()
    for i in range(args.recipients):
        build_message(content, recipient(i), date=now).as_bytes()
    per = (time.perf_counter() - t0) / args.recipients
    print(
        f"RESULT step=personalize_and_build recipients={args.recipients} "
        f"msgs_per_s={1 / per:.0f} us_per_msg={per * 1e6:.0f}"
    )

    t0 = time.perf_counter()
    for i in range(args.naive):
        again = renderer.render(items, now=now)
        one = prepared(again)
        build_message(one, recipient(i), date=now).as_bytes()
    naive = (time.perf_counter() - t0) / args.naive
    print(
        f"RESULT step=naive_render_per_recipient recipients={args.naive} "
        f"msgs_per_s={1 / naive:.1f} us_per_msg={naive * 1e6:.0f}"
    )
    print(f"RESULT speedup={naive / per:.0f}x")


if __name__ == "__main__":
    main()
