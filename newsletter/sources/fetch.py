"""Fetching a source's document: over HTTP(S) with the shared session, or from a local file.

Owns, for any source kind (``Fetcher.document`` reads what a kind's ``FetchSettings`` point
at): the conditional GET (``If-None-Match``/``If-Modified-Since`` from the
``SourceState``, a 304 reported as not modified), following redirects and telling which of them
moved the document for good, going straight to a remembered permanent target, the size cap
(``max_bytes``, on the declared length and on the decompressed bytes), the total deadline per
fetch (see ``deadline``), splitting ``Content-Type`` into media type and charset, and the
mtime/size validator that stands in for an ETag on a local file. ``requests`` and ``OSError``
exceptions are wrapped here, once, into ``SourceError``.

Does not own: what the bytes mean (each source kind parses them), which media types to ask for
(the kind passes its ``Accept``), remembering validators or redirects between runs
(``newsletter.storage``), retrying a failed fetch (the next gather run is the retry).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from newsletter.exceptions import SourceError
from newsletter.sources import deadline
from newsletter.types import SourceState

if TYPE_CHECKING:
    from newsletter.sources.settings import FetchSettings

log = logging.getLogger(__name__)

__all__ = ["Fetched", "Fetcher", "is_http", "read_file", "split_content_type"]

_CHUNK = 64 * 1024
_PERMANENT = frozenset({301, 308})


@dataclass(frozen=True)
class Fetched:
    """One document as fetched, before any parsing.

    ``url`` is where the body came from: the final URL after redirects, or the file's path.
    ``not_modified`` is true for an HTTP 304 or an unchanged file; ``body`` is empty then.
    ``etag`` and ``last_modified`` are the validators to remember for the next fetch: for HTTP,
    the answer's headers (None on a 304, where the ones sent still hold); for a file, its
    mtime/size validator in ``etag``, also when it is unchanged. ``permanent_url`` is where
    301/308 redirects at the start of the chain led, when that differs from the URL requested.
    ``media_type`` is lower-cased without parameters ("" when unknown, always for a file) and
    ``charset`` is the ``Content-Type`` charset parameter, if any.
    """

    url: str
    body: bytes = b""
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    permanent_url: str | None = None
    media_type: str = ""
    charset: str | None = None


class Fetcher:
    """GETs documents through ``session`` for one source, under the limits it is given.

    ``session`` may be shared by every source of a gather run, used from several threads at
    once: construction prepares it for the deadline (``deadline.mount``, idempotent) and
    ``get`` only calls ``session.get``. ``accept`` is the ``Accept`` header the kind sends.
    """

    def __init__(self, session: requests.Session, *, user_agent: str, accept: str = "*/*") -> None:
        self._session = deadline.mount(session)
        self._user_agent = user_agent
        self._accept = accept

    def document(self, settings: FetchSettings, state: SourceState, *, source: str) -> Fetched:
        """Fetch the document ``settings`` points at: ``get`` for its URL, ``read_file`` for its
        path, under its ``timeout`` and ``max_bytes``. Raises ``SourceError`` as they do."""
        if settings.path is not None:
            return read_file(settings.path, state, source=source, max_bytes=settings.max_bytes)
        if settings.url is None:
            raise SourceError("neither a URL nor a path to read", source=source, url="")
        return self.get(
            settings.url,
            state,
            source=source,
            timeout=settings.timeout,
            max_bytes=settings.max_bytes,
        )

    def get(
        self,
        configured: str,
        state: SourceState,
        *,
        source: str,
        timeout: float,
        max_bytes: int,
    ) -> Fetched:
        """GET ``configured`` (or ``state.url``, where a permanent redirect sent us last time).

        Sends ``state``'s validators, so an unchanged document comes back as
        ``Fetched(not_modified=True)``. ``timeout`` bounds the connection and each read, and
        also the whole fetch (connect, every redirect hop, headers and body together); a body
        larger than ``max_bytes`` is refused. Returns only for a 2xx or a 304.

        Raises ``SourceError`` carrying ``source`` and the URL requested (the final URL for a
        body too large), and ``status`` for an HTTP error status: on 4xx/5xx and any other
        status that is not 2xx or 304, a connection failure, a timeout or the total deadline,
        too many redirects, or a body over the cap. It raises nothing else from ``requests``.
        """
        # Storage hands back where a 301/308 sent us last time; it forgets that by itself when
        # the configured URL changes.
        url = state.url if state.url and is_http(state.url) else configured
        headers = {"User-Agent": self._user_agent, "Accept": self._accept}
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
        # ``timeout`` bounds the connection and each read; the total deadline bounds the whole
        # fetch (connect, every redirect hop, headers and body), so a server dribbling a byte at
        # a time cannot hold a worker for longer than ``timeout`` (see ``deadline``).
        with (
            deadline.limit(timeout) as limit,
            _requests_errors(source, url, timeout, limit),
            self._session.get(url, headers=headers, timeout=timeout, stream=True) as response,
        ):
            _check_deadline(limit, source, url)
            final_url = response.url
            permanent = _permanent_target(response, url)
            status = response.status_code
            if status == 304:
                log.debug("%s: not modified", source)
                return Fetched(url=final_url, not_modified=True, permanent_url=permanent)
            if status >= 400:
                reason = f" {response.reason}" if response.reason else ""
                raise SourceError(f"HTTP {status}{reason}", source=source, url=url, status=status)
            if not 200 <= status < 300:
                raise SourceError(
                    f"unexpected HTTP status {status}", source=source, url=url, status=status
                )
            body = _read_body(response, final_url, source, max_bytes)
            # A socket cut by the watchdog can look like a body that ended early.
            _check_deadline(limit, source, url)
            media_type, charset = split_content_type(response.headers.get("Content-Type", ""))
            return Fetched(
                url=final_url,
                body=body,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
                permanent_url=permanent,
                media_type=media_type,
                charset=charset,
            )


def read_file(path: Path, state: SourceState, *, source: str, max_bytes: int) -> Fetched:
    """Read the file at ``path`` whole, unless it is unchanged since ``state``.

    A file's mtime and size, in ``etag`` as ``file:<mtime_ns>-<size>``, stand in for an ETag:
    when ``state.etag`` equals it the file is not read and ``Fetched(not_modified=True)`` comes
    back. Raises ``SourceError`` (with ``source`` and the path as its URL) when the file is
    missing, unreadable or larger than ``max_bytes``.
    """
    where = str(path)
    try:
        st = path.stat()
        validator = f"file:{st.st_mtime_ns:x}-{st.st_size:x}"
        if state.etag == validator:
            return Fetched(url=where, not_modified=True, etag=validator)
        if st.st_size > max_bytes:
            raise SourceError(
                f"file too large ({st.st_size:,} bytes; the limit is max_bytes = {max_bytes:,})",
                source=source,
                url=where,
            )
        body = path.read_bytes()
    except FileNotFoundError as e:
        raise SourceError("file not found", source=source, url=where) from e
    except OSError as e:
        raise SourceError(f"cannot read file: {e.strerror or e}", source=source, url=where) from e
    return Fetched(url=where, body=body, etag=validator)


def split_content_type(value: str) -> tuple[str, str | None]:
    """``"Text/XML; charset=UTF-8"`` -> ``("text/xml", "UTF-8")``; the charset may be None."""
    media_type, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip("\"'")
    return media_type.strip().lower(), charset


def is_http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


# --- the body ------------------------------------------------------------------------------------


def _read_body(response: requests.Response, url: str, source: str, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    # Content-Length counts compressed bytes; if even those exceed the cap, so will the rest.
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(url, source, max_bytes, f"Content-Length is {int(declared):,} bytes")
    chunks: list[bytes] = []
    size = 0
    # iter_content decompresses, so the cap also stops a small gzip bomb from growing large.
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(url, source, max_bytes, f"more than {max_bytes:,} bytes received")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, source: str, max_bytes: int, detail: str) -> SourceError:
    return SourceError(
        f"response too large ({detail}; the limit is max_bytes = {max_bytes:,})",
        source=source,
        url=url,
    )


# --- requests boundary ---------------------------------------------------------------------------


def _deadline_error(limit: deadline.Deadline, source: str, url: str) -> SourceError:
    return SourceError(
        f"no complete answer within {limit.seconds:g} s (total deadline)", source=source, url=url
    )


def _check_deadline(limit: deadline.Deadline, source: str, url: str) -> None:
    if limit.expired:
        raise _deadline_error(limit, source, url)


@contextmanager
def _requests_errors(
    source: str, url: str, timeout: float, limit: deadline.Deadline
) -> Iterator[None]:
    """Turn ``requests`` exceptions into ``SourceError`` (the only place that catches them)."""
    try:
        yield
    except SourceError:
        raise
    except Exception as e:
        # Once the watchdog cut the connection, whatever the cut raised (a reset, an incomplete
        # read, a TLS error) is the deadline's doing; so is a per-read timeout that ran past it.
        if limit.passed:
            raise _deadline_error(limit, source, url) from e
        if isinstance(e, requests.RequestException):
            raise _request_error(e, source, url, timeout) from e
        raise


def _request_error(
    e: requests.RequestException, source: str, url: str, timeout: float
) -> SourceError:
    if isinstance(e, requests.Timeout):
        return SourceError(f"timed out after {timeout:g}s", source=source, url=url)
    if isinstance(e, requests.ConnectionError):
        inner = e.args[0] if e.args else None
        # A read timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
        if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
            return SourceError(f"timed out after {timeout:g}s", source=source, url=url)
        return SourceError(f"cannot connect: {_connection_reason(e)}", source=source, url=url)
    if isinstance(e, requests.TooManyRedirects):
        return SourceError("too many redirects", source=source, url=url)
    return SourceError(f"request failed: {e}", source=source, url=url)


def _connection_reason(e: requests.ConnectionError) -> str:
    """The useful end of urllib3's nested message ("... Connection refused")."""
    inner = e.args[0] if e.args else e
    reason = getattr(inner, "reason", None) or inner
    # urllib3 prefixes the connection's repr: "HTTPConnection(host=..., port=...): <reason>".
    return str(reason).split("): ", 1)[-1]


def _permanent_target(response: requests.Response, requested: str) -> str | None:
    """Where the permanent redirects at the start of the chain lead, if they lead anywhere.

    Each 301/308 hop moves the resource for good (RFC 9110, 15.4.2 and 15.4.9); the first
    temporary hop ends what we may remember, so 301 -> 302 -> final remembers the 302's URL.
    """
    hops = response.history
    target: str | None = None
    for i, hop in enumerate(hops):
        if hop.status_code not in _PERMANENT:
            break
        target = hops[i + 1].url if i + 1 < len(hops) else response.url
    return target if target and target != requested else None
