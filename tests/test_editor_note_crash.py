"""The editor's note survives a sender killed with SIGKILL mid-delivery: the rerun delivers it
once per reader, counted where the messages arrive (a real SMTP server), and the next digest
has none. Runs the real command in child processes against a real SQLite file."""

from __future__ import annotations

import re
import signal
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from newsletter.config import load_config
from newsletter.core import make_publisher
from tests._browser import wait_for
from tests._project import add_article, command
from tests._smtp import smtp_server


def test_a_sender_killed_mid_digest_then_rerun_shows_the_note_once_per_reader(
    example_project: Path, fixed_clock: list[datetime]
) -> None:
    """SIGKILL while the digest with the note goes out, then a rerun: every message that
    arrives at the SMTP server carries the note, no reader gets two, and the next digest has
    no note. The note went with the digest's own row, so the crash could not lose it either."""
    project = example_project
    readers = 30
    with smtp_server(delay=0.05) as smtp:
        text = re.sub(
            r"\[mail\]\n(?:[^\[].*\n|\n)*",
            smtp.mail_config(batch_size=3, concurrency=2) + "\n",
            project.read_text(),
        )
        # The dead sender's batches come back once its lease runs out: 2 s, not a minute.
        project.write_text(text.replace("[schedule]\n", "[schedule]\nlease_seconds = 2\n"))
        with make_publisher(load_config(project)) as publisher:
            publisher.storage.add_subscribers(
                ((f"reader{i:03d}@example.com", None) for i in range(readers)), fixed_clock[0]
            )
            publisher.gather()
            publisher.set_note("The **Kestrel** issue: read this first.")

        child = command(project, "send")
        wait_for(lambda: len(smtp.received) >= 6, timeout=30)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        assert len(smtp.received) < readers, "the sender finished before it was killed"
        with make_publisher(load_config(project)) as publisher:
            # The digest took the note when it was created: nothing is waiting any more.
            assert publisher.next_note() == ""

        rerun = command(project, "send")
        _, err = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, err
        first = list(smtp.received)
        addresses = [r.rcpt_tos[0] for r in first]
        assert len(addresses) == len(set(addresses))  # nobody twice
        assert all("Kestrel issue" in _plain(r.message) for r in first)
        with make_publisher(load_config(project)) as publisher:
            digest = publisher.storage.last_digest()
            assert digest is not None
            counts = publisher.storage.digest_counts(digest.id)
            # Every reader got it, except a batch on the wire at the kill (uncertain: SMTP
            # cannot tell whether it arrived, so it is not sent twice).
            assert counts.pending == 0 and counts.sent + counts.uncertain == readers
            assert counts.sent <= len(first) <= counts.sent + counts.uncertain

            fixed_clock[0] += timedelta(days=1)
            add_article(project, "later", "A later story", fixed_clock[0])
            publisher.gather()
            assert publisher.send_digest().sent == readers
        second = smtp.received[len(first) :]
        assert len(second) == readers
        assert not any("Kestrel" in _plain(r.message) for r in second)


def _plain(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return " ".join(str(body.get_content()).split())
