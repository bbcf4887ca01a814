"""Folder sources: a directory of Markdown files with YAML front matter, one article per file.

Owns: finding ``*.md`` files (recursively, skipping hidden files and folders such as ``.git``),
reading their front matter (python-frontmatter) and rendering their bodies (markdown-it-py,
CommonMark plus tables), and a validator over the whole folder so an untouched folder is not
re-read. A file that cannot be read is skipped and named in ``FetchResult.warning``; it never
fails the other files.

Relative links in the Markdown (``/archive/``, ``../about``) are the site's: the result's
``base_url`` is ``newsletter.site_url``, against which ``newsletter.gather`` resolves them.

Does not own: sanitizing the rendered HTML or resolving its links (``newsletter.gather``), or
deciding whether an edited file changed its article (``newsletter.storage`` compares content;
this module simply emits every file again).

Front matter keys read (others, such as a static site generator's ``layout``, are ignored):
``title``, ``date``, ``updated``, ``author``, ``tags`` (a list or a comma-separated string),
``summary`` (Markdown, inline), ``image``, ``url``, ``id``, ``draft``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Self
from zoneinfo import ZoneInfo

import frontmatter
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from newsletter.config import SourceConfig
from newsletter.exceptions import ConfigError, SourceError
from newsletter.sources import SourceContext
from newsletter.sources.settings import FolderSettings
from newsletter.types import EntryData, FetchResult, SourceState

__all__ = ["FolderSource"]

log = logging.getLogger(__name__)

# Part of the folder validator: bump it when the rendering changes, so every folder is
# rendered again once instead of waiting for each file to be edited.
_RENDER_VERSION = "1"


class _BadFile(Exception):
    """One file could not be read; ``FolderSource`` skips it and reports ``str(self)``."""

    def __init__(self, file: str, problem: str, line: int | None = None) -> None:
        super().__init__(file, problem, line)
        self.file = file
        self.problem = problem
        self.line = line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.problem}"


class FolderSource:
    """Markdown files under ``FolderSettings.path``; naive dates are read in ``timezone``."""

    def __init__(
        self, config: SourceConfig, *, timezone: ZoneInfo, site_url: str | None = None
    ) -> None:
        if not isinstance(config.options, FolderSettings):
            raise ConfigError(f"folder source {config.name!r} needs a `path`")
        self.name = config.name
        self.location = config.location
        self._root = config.options.path
        self._timezone = timezone
        self._site_url = site_url
        self._md = MarkdownIt("commonmark").enable("table")

    @classmethod
    def from_config(cls, config: SourceConfig, context: SourceContext) -> Self:
        return cls(config, timezone=context.timezone, site_url=context.site_url)

    def __repr__(self) -> str:
        return f"FolderSource({self.name!r}, {self.location!r})"

    def fetch(self, state: SourceState) -> FetchResult:
        if not self._root.is_dir():
            problem = "is not a directory" if self._root.exists() else "folder not found"
            raise SourceError(problem, source=self.name, url=str(self._root))
        try:
            files = self._files()
            validator = self._validator(files)
        except OSError as e:
            raise SourceError(
                f"cannot list folder: {e.strerror or e}", source=self.name, url=str(self._root)
            ) from e
        if state.etag == validator:
            return FetchResult(not_modified=True, etag=validator, base_url=self._site_url)
        entries: list[EntryData] = []
        skipped: list[str] = []
        for path in files:
            try:
                entry = self._entry(path)
            except _BadFile as e:
                skipped.append(str(e))
                continue
            except Exception as e:
                # Front matter the libraries choke on in a way we did not foresee (a date
                # out of range, a value whose str() fails): that file is skipped, not the
                # folder.
                log.exception("cannot read %s", path)
                skipped.append(f"{self._relative(path)}: {type(e).__name__}: {e}")
                continue
            if entry is not None:
                entries.append(entry)
        warning = None
        if skipped:
            noun = "file" if len(skipped) == 1 else "files"
            warning = f"skipped {len(skipped)} {noun}: " + "; ".join(skipped)
        return FetchResult(
            entries=tuple(entries), etag=validator, warning=warning, base_url=self._site_url
        )

    # --- the folder ------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        found: list[Path] = []
        for folder, dirs, names in os.walk(self._root, onerror=_raise):
            # Hidden folders are version control, editor state and the like, never articles.
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(
                Path(folder, n)
                for n in sorted(names)
                if n.endswith(".md") and not n.startswith(".")
            )
        return found

    def _validator(self, files: list[Path]) -> str:
        """A digest of every file's path, mtime and size (and what else changes the output)."""
        # The site's URL resolves the relative links: moving the site renders them again.
        h = hashlib.sha256(f"{_RENDER_VERSION}\n{self._timezone.key}\n{self._site_url}\n".encode())
        for path in files:
            st = path.stat()
            h.update(f"{self._relative(path)}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        return f"folder:{h.hexdigest()[:32]}"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self._root).as_posix()

    # --- one file --------------------------------------------------------------------------------

    def _entry(self, path: Path) -> EntryData | None:
        """The file's entry; None for a draft. Raises ``_BadFile``."""
        rel = self._relative(path)
        meta, body = _read(path, rel)
        if _truthy(meta.get("draft")):
            return None
        tokens = self._md.parse(body)
        title = _text(meta.get("title"))
        if title is None:
            heading = _first_h1(tokens)
            if heading is not None:
                index, inline = heading
                title = self._md.renderInline(inline)
                # A leading "# Title" is the title, not the first line of the body.
                if index == 0:
                    tokens = tokens[3:]
        summary = _text(meta.get("summary"))
        return EntryData(
            title=title or path.stem,
            guid=_text(meta.get("id")) or f"folder:{rel}",
            url=_text(meta.get("url")),
            author=_text(meta.get("author")),
            published=self._date(meta, "date", rel),
            updated=self._date(meta, "updated", rel),
            summary=self._md.renderInline(summary) if summary else None,
            content=self._md.renderer.render(tokens, self._md.options, {}),
            tags=_tags(meta.get("tags"), rel),
            image_url=_text(meta.get("image")),
        )

    def _date(self, meta: dict[str, Any], key: str, rel: str) -> datetime | None:
        value = meta.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            parsed = datetime.combine(value, time())
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.strip())
            except ValueError as e:
                raise _BadFile(rel, f"`{key}` is not an ISO date: {value!r}") from e
        else:
            raise _BadFile(rel, f"`{key}` is not a date: {value!r}")
        # A date written without a zone means the newsletter's own zone.
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=self._timezone)


def _read(path: Path, rel: str) -> tuple[dict[str, Any], str]:
    """Front matter and body of one file: the one place that catches file and YAML errors."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _BadFile(rel, f"cannot read: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _BadFile(rel, "not valid UTF-8", data[: e.start].count(b"\n") + 1) from e
    try:
        post = frontmatter.loads(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        # The YAML text starts on the file's first line (right after the opening "---").
        line = mark.line + 1 if mark is not None else None
        raise _BadFile(rel, f"invalid front matter: {problem}", line) from e
    meta = post.metadata
    if not isinstance(meta, dict):
        raise _BadFile(rel, "front matter is not a mapping of keys to values")
    return meta, str(post.content)


def _first_h1(tokens: list[Token]) -> tuple[int, str] | None:
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h1" and i + 1 < len(tokens):
            return i, tokens[i + 1].content
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _tags(value: Any, rel: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise _BadFile(rel, f"`tags` is not a list or a comma-separated string: {value!r}")
    return tuple(t for t in (str(i).strip() for i in items if i is not None) if t)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return value is True


def _raise(error: OSError) -> None:
    raise error
