"""Disk faults lose nothing, and leftover temporary files go (issue 9, items 5 and 3).

A full disk is a real small file system: a tmpfs mounted for the test (we are root in the
test environment; a test that cannot mount one fails and says why, it is never skipped). The
commands run as child processes. Messages are counted where they arrive: the outbox is
"picked up" (its files moved away) after each run, so a message written twice would show up
twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from newsletter import clock
from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.files import remove_leftover_temp_files
from newsletter.types import DigestStatus, SubscriberStatus
from tests._project import set_table

EXIT_ERROR = 1
SUBSCRIBERS = 300


@contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the block."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"cannot mount a {size} tmpfs at {where} for the disk-full tests (they need root "
            f"and mount): {mounted.stderr.strip()}",
            pytrace=False,
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def grow(where: Path, size: str) -> None:
    """Free space: the file system is made larger in place."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def newsletter(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NEWSLETTER_SECRET": "disk-test", "COLUMNS": "300"},
    )


def pick_up(outbox: Path, into: Path) -> set[str]:
    """Take every message out of the outbox (as a mail pickup would); their file names."""
    into.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for path in sorted(outbox.rglob("*.eml")):
        assert path.name not in names
        names.add(path.name)
        shutil.move(path, into / path.name)
    return names


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_full_outbox_disk_stops_the_send_and_a_rerun_delivers_the_rest_once(
    example_project: Path, tmp_path: Path
) -> None:
    config = example_project
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        outbox = disk / "outbox"
        set_table(config, "mail", 'backend = "outbox"\nbatch_size = 25')
        set_table(config, "mail.outbox", f'outbox_dir = "{outbox}"')
        with make_publisher(load_config(config)) as publisher:
            publisher.gather()
            added, _ = publisher.storage.add_subscribers(
                ((f"reader{i:03d}@example.com", None) for i in range(SUBSCRIBERS)),
                clock.now(),
            )
            assert added == SUBSCRIBERS

        first = newsletter(config, "send")
        assert first.returncode == EXIT_ERROR, first.stdout + first.stderr
        said = one_line(first.stderr)
        assert "No space left on device" in said, said
        assert str(outbox) in said
        assert "Traceback" not in first.stderr
        delivered = pick_up(outbox, tmp_path / "received-1")
        assert 0 < len(delivered) < SUBSCRIBERS
        assert not list(outbox.rglob("*.tmp"))  # the failed write left nothing behind

        with make_publisher(load_config(config)) as publisher:
            digest = publisher.storage.last_digest()
            assert digest is not None and digest.status == DigestStatus.SENDING
            counts = publisher.storage.digest_counts(digest.id)
        assert counts.failed == 0
        assert counts.sent == len(delivered)
        assert counts.pending == SUBSCRIBERS - len(delivered)

        grow(disk, "64m")
        second = newsletter(config, "send")
        assert second.returncode == 0, second.stdout + second.stderr
        again = pick_up(outbox, tmp_path / "received-2")

    assert not delivered & again  # nobody got it twice
    expected = {f"reader{i:03d}@example.com" for i in range(SUBSCRIBERS)}
    assert {name.split("-", 1)[1].removesuffix(".eml") for name in delivered | again} == expected
    with make_publisher(load_config(config)) as publisher:
        digest = publisher.storage.last_digest()
        assert digest is not None and digest.status == DigestStatus.SENT
        counts = publisher.storage.digest_counts(digest.id)
    assert (counts.sent, counts.failed, counts.pending) == (SUBSCRIBERS, 0, 0)


def test_a_full_feeds_disk_is_named_and_the_digest_still_goes_out(
    example_project: Path, tmp_path: Path
) -> None:
    config = example_project
    with small_filesystem(tmp_path / "feeds-disk", "16k") as disk:
        out = disk / "feeds"
        text = config.read_text().replace('output_dir = "feeds-out"', f'output_dir = "{out}"')
        config.write_text(text)
        with make_publisher(load_config(config)) as publisher:
            publisher.add_subscriber("one@example.com")
            publisher.add_subscriber("two@example.com")

        run = newsletter(config, "run", "--once")
        assert run.returncode == EXIT_ERROR, run.stdout + run.stderr
        said = one_line(run.stderr)
        assert "No space left on device" in said, said
        assert str(out) in said
        assert "Traceback" not in run.stderr
        assert not list(out.rglob("*.tmp"))

        # The mail went out all the same: feeds and mail are independent.
        mails = sorted(p.name for p in (config.parent / "outbox").rglob("*.eml"))
        assert [m.split("-", 1)[1] for m in mails] == ["one@example.com.eml", "two@example.com.eml"]
        with make_publisher(load_config(config)) as publisher:
            digest = publisher.storage.last_digest()
            assert digest is not None and digest.status == DigestStatus.SENT
            assert publisher.storage.count_subscribers(SubscriberStatus.ACTIVE) == 2

        grow(disk, "64m")
        feeds = newsletter(config, "feeds")
        assert feeds.returncode == 0, feeds.stdout + feeds.stderr
        assert (out / "rss.xml").is_file() and (out / "feed.json").is_file()


def test_a_read_only_feeds_folder_is_one_clear_error(example_project: Path, tmp_path: Path) -> None:
    config = example_project
    with small_filesystem(tmp_path / "ro-disk", "4m") as disk:
        out = disk / "feeds"
        out.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        text = config.read_text().replace('output_dir = "feeds-out"', f'output_dir = "{out}"')
        config.write_text(text)
        with make_publisher(load_config(config)) as publisher:
            publisher.gather()
        feeds = newsletter(config, "feeds")
    assert feeds.returncode == EXIT_ERROR, feeds.stdout + feeds.stderr
    said = one_line(feeds.stderr)
    assert "Read-only file system" in said and str(out) in said, said
    assert "Traceback" not in feeds.stderr


# --- leftover temporary files --------------------------------------------------------------------

# Opens a file through ``open_atomic`` (as every writer of ours does), writes part of it, says
# so, and waits to be killed or let go.
WRITER = """
import sys, time
from pathlib import Path
from newsletter.files import open_atomic
with open_atomic(Path(sys.argv[1])) as f:
    f.write(b"half a file")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


@contextmanager
def writer(target: Path) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing", child.stderr
        yield child
    finally:
        child.kill()
        child.communicate(timeout=10)


def temp_files(folder: Path) -> set[Path]:
    return set(folder.rglob(".*.tmp"))


def test_only_the_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with writer(folder / "tags" / "rss.xml") as dead:
        left = temp_files(folder)
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=10)
    assert len(left) == 1 and temp_files(folder) == left  # kill -9 left it
    with writer(folder / "rss.xml") as live:
        alive = temp_files(folder) - left
        assert len(alive) == 1 and str(live.pid) in next(iter(alive)).name
        assert remove_leftover_temp_files(folder) == list(left)
        assert temp_files(folder) == alive  # the live writer's file is kept
        assert live.poll() is None
    assert not (folder / "rss.xml").exists() and not (folder / "tags" / "rss.xml").exists()


def test_the_feeds_and_send_commands_remove_leftovers_and_keep_live_writers_files(
    example_project: Path,
) -> None:
    config = example_project
    out = config.parent / "feeds-out"
    outbox = config.parent / "outbox"
    with writer(out / "archive" / "index.html") as dead, writer(outbox / "9" / "x.eml") as dead2:
        leftovers = temp_files(out) | temp_files(outbox)
        for child in (dead, dead2):
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
    assert len(leftovers) == 2
    with writer(out / "rss.xml") as live, writer(outbox / "9" / "y.eml") as live2:
        kept = (temp_files(out) | temp_files(outbox)) - leftovers
        assert len(kept) == 2
        with make_publisher(load_config(config)) as publisher:
            publisher.gather()
            publisher.add_subscriber("reader@example.com")
        assert newsletter(config, "feeds").returncode == 0
        assert newsletter(config, "send").returncode == 0
        assert live.poll() is None and live2.poll() is None
        assert temp_files(out) | temp_files(outbox) == kept
