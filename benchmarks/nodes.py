"""Several nodes sending one digest together, on one PostgreSQL, against a local server that
acknowledges as SendGrid does and counts what each recipient received.

    .venv/bin/python benchmarks/nodes.py                          # 200,000 subscribers, 1-3 nodes
    .venv/bin/python benchmarks/nodes.py --subscribers 20000 --nodes 1,2

For each k in ``--nodes``, a fresh database gets the subscribers and the articles, then k
`newsletter send` processes start at once: the first to get there creates the digest, the
others join it, and each takes batches nobody holds. One line per k:

    RESULT nodes=<k> subscribers=<n> msgs_per_s=<x> duplicates=<d> lost=<l> seconds=<s>

``msgs_per_s`` is subscribers over the wall time from starting the nodes to the last one's
exit (process start-up and digest creation included); ``duplicates`` and ``lost`` are counted
where the messages arrive (the acknowledging server, in its own process). Beside them, in the
same run, the bare baseline: a plain ``requests`` loop posting the same bytes, the same
number of times, to the same server (``RESULT baseline ...``).

A throwaway PostgreSQL is started from Debian's package, as the tests do (tests/_postgres.py,
which honours ``$NEWSLETTER_TEST_POSTGRES``); each k gets a new database on it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks._ack_server import serve  # noqa: E402
from benchmarks.send import CONFIG, articles  # noqa: E402

TOKEN = "bench-token"


def prepare(config: Path, subscribers: int) -> None:
    from newsletter.config import load_config
    from newsletter.core import make_publisher
    from newsletter.gather import store_articles

    with make_publisher(load_config(config)) as publisher:
        now = datetime.now(UTC)
        publisher.storage.sync_source("bench", None)
        store_articles(publisher.storage, "bench", articles(), now)  # type: ignore[arg-type]
        publisher.storage.add_subscribers(
            ((f"reader{i:07d}@example.com", f"Reader {i}") for i in range(subscribers)), now
        )


def run_nodes(config: Path, k: int) -> tuple[float, list[str]]:
    env = {**os.environ, "BENCH_TOKEN": TOKEN, "NEWSLETTER_SECRET": "bench-secret"}
    t0 = time.perf_counter()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "newsletter", "--config", str(config), "send"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for _ in range(k)
    ]
    outputs = [node.communicate()[0] for node in nodes]
    elapsed = time.perf_counter() - t0
    for node, output in zip(nodes, outputs, strict=True):
        if node.returncode != 0:
            raise SystemExit(f"a node failed ({node.returncode}):\n{output}")
    return elapsed, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200_000)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight per node")
    args = parser.parse_args()

    from tests._postgres import PostgresServer

    postgres = PostgresServer()
    postgres.start()
    parent, child = multiprocessing.Pipe()
    ack = multiprocessing.Process(target=serve, args=("sendgrid", child), daemon=True)
    ack.start()
    port = parent.recv()
    base = f"http://127.0.0.1:{port}"
    try:
        for k in (int(x) for x in args.nodes.split(",")):
            url = postgres.create_database()
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "newsletter.toml"
                text = CONFIG.format(
                    backend="sendgrid", port=port, concurrency=args.concurrency, extra=""
                ).replace('[storage]\npath = "bench.db"', f'[storage]\nurl = "{url}"')
                config.write_text(text)
                prepare(config, args.subscribers)
                requests.post(f"{base}/_reset", timeout=10)
                elapsed, outputs = run_nodes(config, k)
                stats = requests.get(f"{base}/_stats", timeout=10).json()
            lost = args.subscribers - stats["distinct"]
            print(
                f"RESULT nodes={k} subscribers={args.subscribers} "
                f"msgs_per_s={args.subscribers / elapsed:.0f} "
                f"duplicates={stats['duplicates']} lost={lost} seconds={elapsed:.1f}",
                flush=True,
            )
            for output in outputs:
                for line in output.splitlines():
                    if line.startswith("digest"):
                        print(f"  node: {line}", flush=True)
            postgres.drop_database(url.rsplit("/", 1)[1])
        # The baseline: the same requests, bare, to the same server, in the same run.
        sample = requests.get(f"{base}/_sample", timeout=10)
        requests.post(f"{base}/_reset", timeout=10)
        session = requests.Session()
        session.trust_env = False
        count = stats["requests"]
        t0 = time.perf_counter()
        for _ in range(count):
            session.post(
                f"{base}/baseline",
                data=sample.content,
                headers={"Content-Type": sample.headers["X-Sample-Type"]},
                timeout=30,
            )
        baseline = time.perf_counter() - t0
        print(
            f"RESULT baseline requests={count} subscribers={args.subscribers} "
            f"msgs_per_s={args.subscribers / baseline:.0f}",
            flush=True,
        )
    finally:
        ack.terminate()
        postgres.stop()


if __name__ == "__main__":
    main()
