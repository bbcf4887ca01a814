"""Serve the feeds (``/feeds/``) and the digest archive (``/archive/``) cheaply and correctly.

Feed readers poll all day; most polls should cost a ``stat`` and a 304. For each file:

- a strong ``ETag`` from its content (SHA-256), computed once per version of the file: the hash
  is cached under the file's (inode, mtime, size), which every atomic rewrite changes, so an
  unchanged file is never read or hashed again;
- ``Last-Modified`` from its mtime; ``If-None-Match`` (weak comparison, RFC 9110 13.1.2) and,
  when there is none, ``If-Modified-Since`` answer ``304 Not Modified`` with no body;
- gzip when the client accepts it, compressed once per version and kept, with its own strong
  ETag (``"<hash>-gzip"``: a different representation needs a different strong validator)
  and ``Vary: Accept-Encoding``; Starlette's ``GZipMiddleware`` would compress every response
  again and keep the identity ETag, so it is not used here;
- the media type from the content, not a list of names: an XML file whose root is ``<rss>``
  is ``application/rss+xml``, ``<feed>`` is ``application/atom+xml``, a JSON Feed is
  ``application/feed+json``; so per-tag feeds and RFC 5005 archive documents are served
  right whatever they are called;
- ``Cache-Control``: five minutes for feeds and the archive index, a day for an archive page
  (a digest's page does not change).

Only regular files inside the folder are served: a path with a hidden or ``..`` segment, a
backslash or a NUL is refused, and the resolved path (symlinks followed) must still be inside
the folder. Under ``/feeds/`` the ``archive/`` folder (the digest pages, served at
``/archive/``) is refused too, so every page has one URL.

Owns: the two routes, the validator cache, conditional and gzip answers. Does not own writing
the files (``render.feeds``, ``render.archive``) or where the folder is (the config).
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import logging
import mimetypes
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.exceptions import NewsletterError
from newsletter.render.archive import ARCHIVE_DIR, ARTICLES_DIR, INDEX_FILE
from newsletter.web.site import Site

log = logging.getLogger(__name__)

FEEDS_CACHE = "public, max-age=300"
ARCHIVE_INDEX_CACHE = "public, max-age=300"
ARCHIVE_PAGE_CACHE = "public, max-age=86400"
MAX_CACHED_BYTES = 4 * 1024 * 1024  # a larger file is streamed from disk, uncompressed
CACHE_BUDGET = 64 * 1024 * 1024  # bodies kept in memory, all files together
MIN_GZIP_BYTES = 512  # below this gzip saves too little to be worth it
COMPRESSIBLE = ("text/", "application/rss+xml", "application/atom+xml", "application/xml")
COMPRESSIBLE_EXACT = ("application/feed+json", "application/json", "image/svg+xml")

_ROOT_ELEMENT = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_XML_PREAMBLE = re.compile(rb"\s*(<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>)", re.DOTALL)
_XML_TYPES = {
    b"rss": "application/rss+xml; charset=utf-8",
    b"feed": "application/atom+xml; charset=utf-8",
    b"rdf:RDF": "application/rdf+xml; charset=utf-8",
}


@dataclass(frozen=True)
class Entry:
    """One version of one file: its validators and, when small enough, its bytes."""

    stamp: tuple[int, int, int]  # (inode, mtime ns, size)
    etag: str
    last_modified: str  # HTTP-date
    mtime: int  # seconds, for If-Modified-Since
    media_type: str
    body: bytes | None  # None: too large to keep, streamed from disk
    gz: bytes | None  # the gzip representation, when it is worth having

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '-gzip"'

    @property
    def cost(self) -> int:
        return len(self.body or b"") + len(self.gz or b"")


class FileCache:
    """Validators (and small bodies) per file, keyed by path, checked against a fresh stat.

    Thread-safe; the least recently used bodies are dropped past ``budget`` bytes.
    """

    def __init__(self, budget: int = CACHE_BUDGET) -> None:
        self.budget = budget
        self._entries: OrderedDict[Path, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._size = 0
        self.loads = 0  # files read and hashed (tests check that an unchanged file is not)

    def lookup(self, path: Path, st: os.stat_result) -> Entry | None:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None or entry.stamp != _stamp(st):
                return None
            self._entries.move_to_end(path)
            return entry

    def load(self, path: Path) -> Entry:
        """Read, hash and (if small) compress ``path``; the stamp is that of the bytes read."""
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            digest = hashlib.sha256()
            body: bytes | None = None
            if st.st_size <= MAX_CACHED_BYTES:
                body = handle.read()
                digest.update(body)
                head = body[:4096]
            else:
                head = handle.read(4096)
                digest.update(head)
                for chunk in iter(lambda: handle.read(1024 * 1024), b""):
                    digest.update(chunk)
        media_type = media_type_of(path, head)
        gz = None
        if body is not None and len(body) >= MIN_GZIP_BYTES and compressible(media_type):
            # mtime=0: the same bytes give the same gzip, whenever and wherever compressed.
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            gz = packed if len(packed) < len(body) else None
        entry = Entry(
            stamp=_stamp(st),
            etag=f'"{digest.hexdigest()[:32]}"',
            last_modified=email.utils.formatdate(st.st_mtime, usegmt=True),
            mtime=int(st.st_mtime),
            media_type=media_type,
            body=body,
            gz=gz,
        )
        with self._lock:
            self.loads += 1
            old = self._entries.pop(path, None)
            if old is not None:
                self._size -= old.cost
            self._entries[path] = entry
            self._size += entry.cost
            while self._size > self.budget and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._size -= dropped.cost
        return entry


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


def media_type_of(path: Path, head: bytes) -> str:
    """The media type of a file, from its first bytes where the name is not enough."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        return "text/html; charset=utf-8"
    if suffix in (".xml", ".rss", ".atom"):
        text = head.removeprefix(b"\xef\xbb\xbf")
        while preamble := _XML_PREAMBLE.match(text):
            text = text[preamble.end() :]
        root = _ROOT_ELEMENT.match(text.lstrip())
        if root is not None and root.group(1) in _XML_TYPES:
            return _XML_TYPES[root.group(1)]
        return "application/xml; charset=utf-8"
    if suffix == ".json":
        if b"jsonfeed.org/version/" in head:
            return "application/feed+json"
        return "application/json"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def compressible(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip()
    return base.startswith(COMPRESSIBLE) or base in COMPRESSIBLE_EXACT


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 12.5.3: q=0 means "not")."""
    allowed: dict[str, bool] = {}
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        allowed[coding.strip().lower()] = q > 0
    for name in ("gzip", "x-gzip"):
        if name in allowed:
            return allowed[name]
    return allowed.get("*", False)


def _etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match`` against ``etag`` with the weak comparison RFC 9110 requires."""
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags


def _not_modified_since(header: str, mtime: int) -> bool:
    try:
        since = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return mtime <= since.timestamp()


class StaticFolder:
    """Serves the files of one folder (found anew per request: the config may change)."""

    def __init__(
        self,
        folder: Callable[[], Path],
        *,
        cache: FileCache,
        cache_control: Callable[[str], str],
        refuse_top: frozenset[str] = frozenset(),
        index: str | None = None,
    ) -> None:
        self.folder = folder
        self.cache = cache
        self.cache_control = cache_control
        self.refuse_top = refuse_top
        self.index = index

    def locate(self, relative: str) -> Path | None:
        """The file ``relative`` names inside the folder, or None (missing or not allowed).

        ``os.path.realpath`` rather than ``Path.resolve``: the same answer, at half the cost,
        and this runs for every request.
        """
        if self.index is not None and (relative == "" or relative.endswith("/")):
            relative += self.index
        parts = relative.split("/")
        if (
            not relative
            or any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts)
            or parts[0] in self.refuse_top
        ):
            return None
        real_root = os.path.realpath(self.folder())
        path = os.path.realpath(real_root + os.sep + relative)
        if not path.startswith(real_root + os.sep):
            return None  # a symlink led out of the folder
        return Path(path)

    async def serve(self, request: Request, relative: str) -> Response:
        path = self.locate(relative)
        if path is None:
            return _not_found()
        try:
            st = path.stat()
        except OSError:
            return _not_found()
        if not stat.S_ISREG(st.st_mode):
            return _not_found()
        entry = self.cache.lookup(path, st)
        if entry is None:
            try:
                entry = await run_in_threadpool(self.cache.load, path)
            except OSError:
                return _not_found()
        return self._answer(request, path, entry, relative)

    def _answer(self, request: Request, path: Path, entry: Entry, relative: str) -> Response:
        use_gzip = entry.gz is not None and accepts_gzip(request.headers.get("accept-encoding", ""))
        etag = entry.gzip_etag if use_gzip else entry.etag
        headers = {
            "ETag": etag,
            "Last-Modified": entry.last_modified,
            "Cache-Control": self.cache_control(relative),
        }
        if compressible(entry.media_type):
            headers["Vary"] = "Accept-Encoding"
        # RFC 9110 13.2.2: If-Modified-Since is ignored when If-None-Match is present.
        inm = request.headers.get("if-none-match")
        ims = request.headers.get("if-modified-since")
        if (inm is not None and _etag_matches(inm, etag)) or (
            inm is None and ims is not None and _not_modified_since(ims, entry.mtime)
        ):
            return Response(status_code=304, headers=headers)
        if entry.body is None:
            return FileResponse(path, media_type=entry.media_type, headers=headers)
        if use_gzip:
            assert entry.gz is not None
            headers["Content-Encoding"] = "gzip"
            return Response(entry.gz, media_type=entry.media_type, headers=headers)
        return Response(entry.body, media_type=entry.media_type, headers=headers)


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404, headers={"Cache-Control": "no-store"})


def _archive_cache_control(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    if name in ("", INDEX_FILE) or relative.startswith(ARTICLES_DIR + "/"):
        return ARCHIVE_INDEX_CACHE
    return ARCHIVE_PAGE_CACHE


def routes(site: Site) -> list[BaseRoute]:
    """``/feeds/<path>`` and ``/archive/<path>`` (``/archive/`` is the archive's index)."""
    cache = FileCache()

    def feeds_dir() -> Path:
        return site.publisher().config.feeds.output_dir

    feeds = StaticFolder(
        feeds_dir,
        cache=cache,
        cache_control=lambda _: FEEDS_CACHE,
        refuse_top=frozenset({ARCHIVE_DIR}),
    )
    archive = StaticFolder(
        lambda: feeds_dir() / ARCHIVE_DIR,
        cache=cache,
        cache_control=_archive_cache_control,
        index=INDEX_FILE,
    )

    async def serve_feed(request: Request) -> Response:
        try:
            return await feeds.serve(request, request.path_params["path"])
        except NewsletterError as e:
            return _unavailable(e)

    async def serve_archive(request: Request) -> Response:
        try:
            return await archive.serve(request, request.path_params.get("path", ""))
        except NewsletterError as e:
            return _unavailable(e)

    async def to_archive(request: Request) -> Response:
        return RedirectResponse("/archive/", status_code=301)

    return [
        Route("/feeds/{path:path}", serve_feed, methods=["GET", "HEAD"]),
        Route("/archive", to_archive, methods=["GET", "HEAD"]),
        Route("/archive/{path:path}", serve_archive, methods=["GET", "HEAD"]),
    ]


def _unavailable(error: NewsletterError) -> Response:
    log.error("cannot serve files: %s", error)
    return PlainTextResponse(
        "temporarily unavailable", status_code=503, headers={"Cache-Control": "no-store"}
    )
