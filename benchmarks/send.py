"""Send one digest to N stored subscribers through each HTTP backend, against a local server
that only reads and acknowledges, and compare with a bare ``requests`` loop posting the same
bytes to the same server.

    .venv/bin/python benchmarks/send.py                      # 100,000 subscribers
    .venv/bin/python benchmarks/send.py --subscribers 1000000
    .venv/bin/python benchmarks/send.py --backends postmark --subscribers 20000

One line per backend, stable so runs can be compared:
    RESULT backend=<name> subscribers=<n> msgs_per_s=<x> baseline_ratio=<ours/baseline>
           bytes_per_msg=<y> peak_rss_mb=<z>
plus the naive path (Jinja render + premailer for each subscriber) on a small N:
    RESULT path=naive_render subscribers=<n> msgs_per_s=<x>

Each backend runs in a fresh child process (so peak RSS is that send's alone), with the
acknowledging server in another process (so its CPU and memory are not counted as ours).
Our figure includes everything a real send does: claiming batches, personalizing, signing
unsubscribe tokens, building payloads, HTTP, and recording every delivery in SQLite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BACKENDS = ("postmark", "sendgrid", "mailgun", "resend", "ses")
EXTRA = {"mailgun": 'domain = "mg.bench.example.org"\n'}
# How each backend authenticates: a token, or (SES) the AWS keys set in run_one's environment.
CREDENTIALS = {"ses": 'region = "us-east-1"\n'}
TOKEN = 'token_env = "BENCH_TOKEN"\n'

CONFIG = """
[newsletter]
title = "Benchmark Weekly"
site_url = "https://bench.example.org/"
sender = "Benchmark Weekly <weekly@bench.example.org>"
postal_address = "1 Bench Street, Example City"

[digest]
max_items = 20
lookback_hours = 1000

[mail]
backend = "{backend}"
concurrency = {concurrency}

[mail.{backend}]
{credentials}base_url = "http://127.0.0.1:{port}"
{extra}
[storage]
path = "bench.db"
"""

PARAGRAPH = (
    "Measured work beats guessed work: profile first, then change one thing at a time and "
    "measure again, and write down what you saw before you decide what it means. "
)


def articles() -> list[object]:
    from newsletter.types import ArticleData

    base = datetime.now(UTC) - timedelta(hours=1)
    return [
        ArticleData(
            source="bench",
            key=f"article-{i}",
            title=f"Article {i}: a headline of the length headlines in a digest usually have",
            url=f"https://example.org/articles/{i}",
            author="A. Writer",
            published=base - timedelta(minutes=i),
            updated=None,
            summary=f"<p>{PARAGRAPH * 6}</p>",
            content=f"<p>{PARAGRAPH * 30}</p>",
            tags=("performance",),
        )
        for i in range(20)
    ]


def run_one(backend: str, subscribers: int, concurrency: int) -> dict[str, float]:
    """In a child process: one full send through ``backend``; returns its figures."""
    import requests

    from benchmarks._ack_server import serve
    from newsletter.config import load_config
    from newsletter.core import make_publisher
    from newsletter.gather import store_articles

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(backend, child), daemon=True)
    server.start()
    port = parent.recv()
    os.environ["BENCH_TOKEN"] = "bench-token"
    os.environ["NEWSLETTER_SECRET"] = "bench-secret"
    with tempfile.TemporaryDirectory() as tmp:
        # SES signs each request (SigV4) with these; the acknowledging server does not check.
        empty = Path(tmp) / "aws-empty"
        empty.write_text("")
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "AKIABENCH",
                "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
                "AWS_CONFIG_FILE": str(empty),
                "AWS_SHARED_CREDENTIALS_FILE": str(empty),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        cfg = Path(tmp) / "newsletter.toml"
        cfg.write_text(
            CONFIG.format(
                backend=backend,
                port=port,
                concurrency=concurrency,
                extra=EXTRA.get(backend, ""),
                credentials=CREDENTIALS.get(backend, TOKEN),
            )
        )
        publisher = make_publisher(load_config(cfg))
        now = datetime.now(UTC)
        publisher.storage.sync_source("bench", None)
        store_articles(publisher.storage, "bench", articles(), now)  # type: ignore[arg-type]
        publisher.storage.add_subscribers(
            ((f"reader{i:07d}@example.com", f"Reader {i}") for i in range(subscribers)), now
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        report = publisher.send_digest()
        elapsed = time.perf_counter() - t0
        assert report.sent == subscribers, report
        html_kb = len((publisher.storage.last_digest().html).encode()) / 1024  # type: ignore[union-attr]
        publisher.close()

    base = f"http://127.0.0.1:{port}"
    stats = requests.get(f"{base}/_stats", timeout=10).json()
    sample = requests.get(f"{base}/_sample", timeout=10)
    body, ctype = sample.content, sample.headers["X-Sample-Type"]
    requests.post(f"{base}/_reset", timeout=10)
    # The baseline: the same number of requests with the same bytes, plain requests, no work.
    session = requests.Session()
    session.trust_env = False
    url = f"{base}/baseline"
    t0 = time.perf_counter()
    for _ in range(stats["requests"]):
        session.post(url, data=body, headers={"Content-Type": ctype}, timeout=30)
    baseline = time.perf_counter() - t0
    server.terminate()
    return {
        "msgs_per_s": subscribers / elapsed,
        "baseline_msgs_per_s": subscribers / baseline,
        "bytes_per_msg": stats["bytes"] / subscribers,
        "peak_rss_mb": max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "html_kb": html_kb,
        "requests": stats["requests"],
    }


def naive(subscribers: int) -> float:
    """Jinja render + premailer for every subscriber: what rendering once avoids."""
    from newsletter.config import parse_config
    from newsletter.render.digest import DigestRenderer
    from newsletter.types import Article

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            CONFIG.format(
                backend="outbox", port=1, concurrency=1, extra="", credentials=""
            ).replace('base_url = "http://127.0.0.1:1"\n', ""),
            Path(tmp) / "newsletter.toml",
        )
    now = datetime.now(UTC)
    items = [
        Article(
            id=i,
            uid=f"urn:uuid:{i}",
            source=a.source,
            key=a.key,
            title=a.title,  # type: ignore[attr-defined]
            url=a.url,
            author=a.author,
            published=a.published,
            updated=a.published,  # type: ignore[attr-defined]
            first_seen=now,
            summary=a.summary,
            content=a.content,
            tags=a.tags,
        )  # type: ignore[attr-defined]
        for i, a in enumerate(articles(), 1)
    ]
    renderer = DigestRenderer(config)
    t0 = time.perf_counter()
    for _ in range(subscribers):
        renderer.render(items, now=now)
    return subscribers / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--naive-subscribers", type=int, default=50)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one backend, print JSON
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_one(args.one, args.subscribers, args.concurrency)))
        return
    for backend in args.backends.split(","):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                backend,
                "--subscribers",
                str(args.subscribers),
                "--concurrency",
                str(args.concurrency),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"RESULT backend={backend} error={out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"RESULT backend={backend} subscribers={args.subscribers} "
            f"msgs_per_s={r['msgs_per_s']:.0f} "
            f"baseline_ratio={r['msgs_per_s'] / r['baseline_msgs_per_s']:.2f} "
            f"bytes_per_msg={r['bytes_per_msg']:.0f} peak_rss_mb={r['peak_rss_mb']:.0f}",
            flush=True,
        )
    print(
        f"RESULT path=naive_render subscribers={args.naive_subscribers} "
        f"msgs_per_s={naive(args.naive_subscribers):.1f}"
    )


if __name__ == "__main__":
    main()
