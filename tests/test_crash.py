"""A sender killed with SIGKILL mid-delivery, then rerun: every subscriber gets exactly one message.

Runs the real command in a child process against a real SQLite file and the outbox backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.types import DeliveryStatus

N = 3000


def _send(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NEWSLETTER_SECRET": "test-secret"}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def test_kill_during_delivery_then_rerun_sends_each_remaining_once(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    text = example_project.read_text().replace(
        'backend = "outbox"', 'backend = "outbox"\nbatch_size = 25'
    )
    # The dead sender's batches come back once its lease runs out: 2 s instead of a minute.
    text = text.replace("[schedule]\n", "[schedule]\nlease_seconds = 2\n")
    example_project.write_text(text)
    config = load_config(example_project)
    publisher = make_publisher(config)
    publisher.storage.add_subscribers(
        ((f"reader{i:05d}@example.com", f"Reader {i}") for i in range(N)), fixed_clock[0]
    )
    publisher.gather()
    outbox = config.mail.provider("outbox").outbox_dir

    child = _send(example_project)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = len(list(outbox.glob("*/*.eml"))) if outbox.exists() else 0
        if written >= N // 5:
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)  # reaps the child and closes its pipes
    assert child.returncode == -signal.SIGKILL

    digest = publisher.storage.last_digest()
    assert digest is not None
    counts = publisher.storage.digest_counts(digest.id)
    assert counts.sent > 0 and counts.pending > 0, f"not killed mid-delivery: {counts}"
    # Those recorded as sent before the kill must not be written again.
    with publisher.storage.engine.connect() as conn:
        from newsletter.storage import schema

        sent_before = {
            str(row.subscriber_id)
            for row in conn.execute(
                schema.deliveries.select().where(
                    schema.deliveries.c.digest_id == digest.id,
                    schema.deliveries.c.status == DeliveryStatus.SENT,
                )
            )
        }
    before = {p.name: p.stat() for p in (outbox / str(digest.id)).glob("*.eml")}

    rerun = _send(example_project)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()

    counts = publisher.storage.digest_counts(digest.id)
    assert counts.sent == N and counts.open == counts.uncertain == counts.failed == 0
    files = sorted((outbox / str(digest.id)).glob("*.eml"))
    assert len(files) == N
    # one file per subscriber (files are named <subscriber id>-<address>.eml)
    assert len({f.name.split("-", 1)[0] for f in files}) == N
    untouched = 0
    for path in files:
        if path.name in before and path.name.split("-", 1)[0] in sent_before:
            assert path.stat().st_mtime_ns == before[path.name].st_mtime_ns
            untouched += 1
    assert untouched > 0
    assert "digest" in out.decode()
    publisher.close()
