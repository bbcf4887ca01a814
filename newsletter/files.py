"""Atomic file writes: a reader (or a crash) never sees half a file; and the clean-up of the
temporary files that a killed writer leaves behind.

A temporary file is named ``.<name>.<pid>.<random>.tmp`` beside its target: the PID of the
process writing it is what lets a later process tell a leftover (its writer is gone) from a
file another command is writing right now (the scheduler, ``feeds`` and ``send`` may run side
by side on the same folders).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>[0-9]+)\.[^.]+\.tmp$")


@contextmanager
def open_atomic(path: Path, *, mode: int = 0o644, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` (by a rename) when the block ends without an error;
    on an error (or a kill) ``path`` is left as it was. ``durable`` fsyncs before the rename,
    so the file survives a power cut too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write() (ENOSPC) names no file: say which
        raise


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> bool:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Returns False (and leaves the file and its mtime alone) when the content is unchanged, so
    an unchanged feed keeps its Last-Modified time. ``durable`` fsyncs before the rename, so
    the file survives a power cut too; a killed process never leaves half a file either way.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    with open_atomic(path, mode=mode, durable=durable) as f:
        f.write(data)
    return True


def remove_leftover_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files under ``folder`` (and its subfolders) whose writer is gone:
    a process killed mid-write (``kill -9``, a power cut) leaves its temporary file. Files of
    a writer that is alive are kept, whoever it is. Returns the files removed; a folder that
    does not exist has none."""
    removed: list[Path] = []
    for path in _temp_files(folder):
        match = _TEMP_NAME.match(path.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # its writer's own clean-up, or another process's, came first
        except OSError as e:
            log.warning("cannot remove the leftover temporary file %s: %s", path, e.strerror)
            continue
        log.info("removed %s, left by process %s which is gone", path, match["pid"])
        removed.append(path)
    return removed


def _temp_files(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _temp_files(Path(entry.path))
        elif entry.name.endswith(".tmp") and entry.name.startswith("."):
            yield Path(entry.path)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return True  # not a PID we wrote: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    except OSError as e:
        return e.errno != errno.ESRCH
    return True
