"""SIGKILL in the middle of a send through a real provider API (its loopback emulator), then
rerun: nobody recorded as sent is sent again, pending recipients are sent once, and the
batches the dead node held (its leases run out) are re-sent only where the provider
de-duplicates them (Resend's Idempotency-Key); elsewhere (Postmark, Amazon SES) they are
uncertain until ``send --resend-uncertain``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.storage import schema
from newsletter.types import DeliveryStatus
from tests.emulators import (
    AWS_VARIABLES,
    TOKEN,
    Emulator,
    PostmarkEmulator,
    ResendEmulator,
    SESEmulator,
    aws_environment,
)

N = 1200
BATCH = 40


@pytest.fixture(params=["postmark", "resend", "ses"])
def emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    cls = {"postmark": PostmarkEmulator, "resend": ResendEmulator, "ses": SESEmulator}[
        request.param
    ]
    with cls() as server:
        # Every answer comes 0.2 s after the batch was accepted: a kill lands between the
        # provider accepting batches and us hearing about it, the case that matters.
        server.slow(0.2, times=10_000)
        yield server


def _send(config: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NEWSLETTER_SECRET": "crash-secret", "MAIL_TOKEN": TOKEN}
    # SES signs with AWS credentials: the emulator's, from a hermetic chain.
    env = {k: v for k, v in env.items() if k not in AWS_VARIABLES}
    env |= aws_environment(config.parent)
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def _statuses(config: Path) -> dict[str, str]:
    """Each address's delivery status; "leased" for a pending one whose batch a node holds."""
    publisher = make_publisher(load_config(config))
    d, b = schema.deliveries, schema.batches
    joined = d.join(b, (b.c.digest_id == d.c.digest_id) & (b.c.key == d.c.batch))
    with publisher.storage.engine.connect() as conn:
        rows = conn.execute(select(d.c.email, d.c.status, b.c.status).select_from(joined)).all()
    publisher.close()
    return {
        email: "leased" if (status, batch) == ("pending", "leased") else status
        for email, status, batch in rows
    }


def test_kill_then_rerun_never_sends_twice(
    emulator: Emulator, example_project: Path, fixed_clock: list[datetime]
) -> None:
    name = type(emulator).__name__.removesuffix("Emulator").lower()
    credentials = 'region = "us-east-1"' if name == "ses" else 'token_env = "MAIL_TOKEN"'
    text = example_project.read_text().replace(
        'backend = "outbox"',
        f'backend = "{name}"\nbatch_size = {BATCH}\nconcurrency = 3\n\n'
        f'[mail.{name}]\n{credentials}\nbase_url = "{emulator.base_url}"\n',
    )
    text = text.replace("[schedule]\n", "[schedule]\nlease_seconds = 2\n")
    text = re.sub(r"(?m)^outbox_dir = .*\n", "", text)
    example_project.write_text(text)
    publisher = make_publisher(load_config(example_project))
    publisher.storage.add_subscribers(
        ((f"reader{i:05d}@example.com", None) for i in range(N)), fixed_clock[0]
    )
    publisher.gather()
    publisher.close()

    child = _send(example_project)
    deadline = time.monotonic() + 60
    while len(emulator.deliveries) < N // 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL

    emulator.settle()  # what the dead node had sent is taken (or dropped) before we look
    at_kill = _statuses(example_project)
    states = Counter(at_kill.values())
    assert states[DeliveryStatus.SENT] > 0 and states[DeliveryStatus.PENDING] > 0, states
    assert states["leased"] > 0, f"no batch was on the wire at the kill: {states}"
    accepted_at_kill = set(emulator.delivered_to())
    sent_at_kill = {a for a, s in at_kill.items() if s == DeliveryStatus.SENT}
    inflight_at_kill = {a for a, s in at_kill.items() if s == "leased"}
    # Everything recorded as sent was accepted; some in flight were accepted unheard.
    assert sent_at_kill <= accepted_at_kill
    assert inflight_at_kill & accepted_at_kill

    rerun = _send(example_project)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    after = _statuses(example_project)
    seen = Counter(emulator.delivered_to())

    if name == "resend":
        # The in-flight batches were re-sent under their old keys and de-duplicated.
        assert Counter(after.values()) == {DeliveryStatus.SENT: N}
        assert set(seen) == set(after) and max(seen.values()) == 1
        return

    # Postmark and SES: no idempotency key, so the dead node's batches are uncertain...
    assert {a for a, s in after.items() if s == DeliveryStatus.UNCERTAIN} == inflight_at_kill
    assert Counter(after.values())[DeliveryStatus.SENT] == N - len(inflight_at_kill)
    assert max(seen.values()) == 1  # ...and nobody was sent twice
    assert "uncertain" in out
    # Only on request are they sent again, accepting a possible duplicate for those the
    # provider had accepted unheard: that is the trade the option documents.
    again = _send(example_project, "--resend-uncertain")
    again.communicate(timeout=120)
    assert again.returncode == 0
    final = _statuses(example_project)
    assert Counter(final.values()) == {DeliveryStatus.SENT: N}
    twice = {a for a, n in Counter(emulator.delivered_to()).items() if n > 1}
    assert twice <= inflight_at_kill & accepted_at_kill
