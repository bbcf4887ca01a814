"""Requests per second of ``newsletter serve`` on loopback, endpoint by endpoint.

    .venv/bin/python benchmarks/serve.py
    .venv/bin/python benchmarks/serve.py --requests 20000 --writes 2000 --clients 16

The server is the real command (``python -m newsletter serve``) in a process of its own, on
a copy of the example project (gathered, feeds written, one digest sent); the clients are
threads of this process, each with its own ``requests.Session`` (keep-alive), so their CPU is
not counted as the server's. One line per endpoint, stable so runs can be compared:

    RESULT endpoint=<name> requests=<n> rps=<x> p50_ms=<y> p99_ms=<z> server_cpu_ms=<c>

``server_cpu_ms`` is the server process's CPU time per request (from ``/proc``, Linux only):
unlike the rate, it does not depend on what else the machine is doing.

- ``feeds-304``: conditional GETs of the three feeds (identity and gzip ETags): 304, no body;
- ``feeds-200-gzip``: full GETs of the feeds, gzip accepted (served from the cache);
- ``subscribe``: form POSTs of new addresses (each queues a confirmation mail, written to
  the outbox by the server's mail thread while the requests go on);
- ``unsubscribe``: RFC 8058 one-click POSTs for existing subscribers;
- ``healthz``: the health check (one database round trip).

Every answer is checked (status, and no body on a 304); one wrong answer stops the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import load_config  # noqa: E402
from newsletter.core import make_publisher  # noqa: E402

SECRET = "benchmark-secret"  # a throw-away value for a throw-away database

Job = Callable[[requests.Session], None]


def project(folder: Path) -> Path:
    """A copy of the example project in ``folder``, built; returns its config file."""
    shutil.copytree(ROOT / "examples", folder, ignore=shutil.ignore_patterns("*.db*"))
    config = folder / "newsletter.toml"
    text = config.read_text()
    text = text.replace('output_dir = "../feeds"', 'output_dir = "feeds-out"')
    text = text.replace('outbox_dir = "../outbox"', 'outbox_dir = "outbox"')
    config.write_text(text + "\n[web]\nsubscribe_rate_per_minute = 100000000\n")
    with make_publisher(load_config(config)) as publisher:
        publisher.gather()
        publisher.build_feeds()
        publisher.import_subscribers(folder / "subscribers.csv")
        publisher.send_digest()
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEWSLETTER_SECRET": SECRET}
    command = [sys.executable, "-m", "newsletter", "-q", "--config", str(config), "serve"]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return process
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start within 30 s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far, or None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, jobs: list[Job], clients: int, server: int) -> None:
    """Run ``jobs`` on ``clients`` threads (a session each) and print the RESULT line."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def call(job: Job) -> float:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            with lock:
                sessions.append(session)
        start = time.perf_counter()
        job(session)
        return time.perf_counter() - start

    cpu_before = cpu_seconds(server)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(call, jobs))
    elapsed = time.perf_counter() - start
    cpu_after = cpu_seconds(server)
    cpu = (
        f" server_cpu_ms={(cpu_after - cpu_before) * 1000 / len(jobs):.2f}"
        if cpu_before is not None and cpu_after is not None
        else ""
    )
    for session in sessions:
        session.close()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"RESULT endpoint={name} requests={len(jobs)} rps={len(jobs) / elapsed:.0f} "
        f"p50_ms={p50:.1f} p99_ms={p99:.1f}{cpu}",
        flush=True,
    )


def expect(response: requests.Response, status: int, *, empty: bool = False) -> None:
    if response.status_code != status or (empty and response.content):
        raise SystemExit(
            f"{response.request.method} {response.url}: {response.status_code}, expected {status}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=5000, help="feed requests per phase")
    parser.add_argument("--writes", type=int, default=500, help="subscribes and unsubscribes")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    args = parser.parse_args()

    os.environ["NEWSLETTER_SECRET"] = SECRET  # the server's too: the tokens made here work
    with tempfile.TemporaryDirectory() as tmp:
        config = project(Path(tmp) / "project")
        leaving: list[str] = []
        with make_publisher(load_config(config)) as publisher:
            for i in range(args.writes):
                sub, _ = publisher.add_subscriber(f"leaving{i}@example.com")
                leaving.append(publisher.tokens.make(sub.id, sub.email))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(config, port)
        try:
            validators: list[tuple[str, dict[str, str]]] = []
            for name in ("rss.xml", "atom.xml", "feed.json"):
                for encoding in ("identity", "gzip"):
                    first = requests.get(
                        f"{base}/feeds/{name}", headers={"Accept-Encoding": encoding}, timeout=10
                    )
                    expect(first, 200)
                    validators.append(
                        (
                            f"{base}/feeds/{name}",
                            {"Accept-Encoding": encoding, "If-None-Match": first.headers["etag"]},
                        )
                    )

            def conditional(url: str, headers: dict[str, str]) -> Job:
                return lambda s: expect(s.get(url, headers=headers, timeout=10), 304, empty=True)

            def full(url: str) -> Job:
                gz = {"Accept-Encoding": "gzip"}
                return lambda s: expect(s.get(url, headers=gz, timeout=10), 200)

            def join(address: str) -> Job:
                form = {"email": address}
                return lambda s: expect(s.post(f"{base}/subscribe", data=form, timeout=10), 200)

            def leave(token: str) -> Job:
                url, body = f"{base}/unsubscribe/{token}", "List-Unsubscribe=One-Click"
                return lambda s: expect(s.post(url, data=body, timeout=10), 200)

            n = args.requests
            measure(
                "feeds-304",
                [conditional(*validators[i % len(validators)]) for i in range(n)],
                args.clients,
                server.pid,
            )
            measure(
                "feeds-200-gzip",
                [full(validators[i % len(validators)][0]) for i in range(n)],
                args.clients,
                server.pid,
            )
            measure(
                "subscribe",
                [join(f"joining{i}@example.com") for i in range(args.writes)],
                args.clients,
                server.pid,
            )
            measure("unsubscribe", [leave(token) for token in leaving], args.clients, server.pid)
            health: Job = lambda s: expect(s.get(f"{base}/healthz", timeout=10), 200)  # noqa: E731
            measure("healthz", [health] * (n // 5), args.clients, server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
