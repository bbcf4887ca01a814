"""The ``newsletter`` command. Parses arguments, calls ``Publisher``, prints results.

The only module that writes to the terminal. A ``NewsletterError`` becomes a one-line message
on stderr and exit code 1; a run where some sources failed exits 3 (the rest was done).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click
from rich.console import Console, ConsoleRenderable
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from newsletter import clock
from newsletter._version import __version__
from newsletter.config import Config, find_config, load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import ConfigError, NewsletterError, OutputError
from newsletter.files import atomic_write
from newsletter.schedule import CronSchedule
from newsletter.types import (
    DeliveryResult,
    DeliveryStatus,
    Digest,
    DigestCounts,
    GatherResult,
    SendReport,
    SubscriberStatus,
)

if TYPE_CHECKING:
    from newsletter.scheduler import NodeScheduler

EXIT_ERROR = 1
EXIT_PARTIAL = 3  # the command ran, but some sources failed

# Outside text (source names, URLs, titles, HTTP reasons, error messages, paths) reaches these
# consoles only as ``Text`` or with ``markup=False``: rich would read "[/bold]" in a feed title as
# a closing tag and raise. Emoji codes are off too: ":x:" in a title stays as it was written.
console = Console(emoji=False)
err = Console(stderr=True, emoji=False)


# Control characters (an ESC starts a terminal escape sequence) and lone surrogates (which
# no stream can encode) in outside text are shown as escapes.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _clean(value: object) -> str:
    return _UNPRINTABLE.sub(
        lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value)
    )


def _text(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and ``(text, style)`` pairs; nothing in it is read as markup,
    and control characters are shown as escapes."""
    return Text.assemble(
        *(_clean(p) if isinstance(p, str) else (_clean(p[0]), p[1]) for p in parts)
    )


class _LogHandler(RichHandler):
    """Log records carry outside text too (a source's error, a provider's answer): shown with
    markup off (rich's default for handlers) and control characters escaped."""

    def render_message(self, record: logging.LogRecord, message: str) -> ConsoleRenderable:
        return super().render_message(record, _clean(message))


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(find_config(self.config_path))
        return self._config

    @contextmanager
    def publisher(self, command: str = "cli") -> Iterator[Publisher]:
        publisher = make_publisher(self.config, command=command)
        try:
            yield publisher
        finally:
            publisher.close()


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    envvar="NEWSLETTER_CONFIG",
    help="Config file (default: $NEWSLETTER_CONFIG, else ./newsletter.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, quiet: bool) -> None:
    """Gather articles, publish RSS/Atom/JSON feeds and send an e-mail digest."""
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[_LogHandler(console=err, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    ctx.obj = State(config_path)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(EXIT_ERROR)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except NewsletterError as e:
        # The message is text, not markup: "[postgres]" in it must stay as it is.
        # One line whatever the terminal's width: FILE:LINE: key: message.
        err.print(_text(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


# --- init ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="newsletter.toml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter config to PATH (default ./newsletter.toml)."""
    if path.exists() and not force:
        raise ConfigError("already exists; pass --force to overwrite it", file=path)
    text = resources.files("newsletter").joinpath("starter.toml").read_text(encoding="utf-8")
    _write(path, text.encode())
    config = load_config(path)  # the starter must always be a valid config
    console.print(
        f"wrote {path}; edit it, then run `newsletter --config {path} run --once`",
        highlight=False,
        markup=False,
    )
    # The secret signs every subscriber's link: it goes where the processes' environment is
    # set (a shell profile, an env file), never into a config file that may be committed.
    env = config.newsletter.secret_env
    console.print(
        f"links are signed with ${env}; set it where `run` and `serve` run:\n"
        f"export {env}={secrets.token_urlsafe(32)}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


# --- gather / feeds ------------------------------------------------------------------------------


def _gather(publisher: Publisher) -> list[GatherResult]:
    total = len([s for s in publisher.config.sources if s.enabled])
    with _progress("gathering", total) as advance:
        results = publisher.gather(progress=lambda r: advance(1))
    for r in results:
        if r.error is not None:
            err.print(_text(("failed", "red"), f" {r.error}"), highlight=False, soft_wrap=True)
        elif r.warning:
            err.print(
                _text(("warning", "yellow"), f" source {r.source!r}: {r.warning}"),
                highlight=False,
                soft_wrap=True,
            )
    new = sum(r.new for r in results)
    updated = sum(r.updated for r in results)
    failed = sum(1 for r in results if not r.ok)
    console.print(
        _text(
            f"gathered {len(results)} sources: {new} new, {updated} updated articles",
            (f", {failed} failed" if failed else "", "red"),
        ),
        highlight=False,
    )
    return results


@cli.command("gather")
@pass_state
def gather_cmd(state: State) -> None:
    """Fetch every source once and store new and updated articles."""
    with state.publisher() as publisher:
        results = _gather(publisher)
    if any(not r.ok for r in results):
        sys.exit(EXIT_PARTIAL)


def _feeds(publisher: Publisher) -> None:
    written = publisher.build_feeds()
    out = publisher.config.feeds.output_dir
    if not written:
        console.print(f"feeds: unchanged in {out}", highlight=False, markup=False)
        return
    # Per-tag feeds, archive pages and the digest archive can be many files: name the main
    # feeds, count the rest.
    main = [p.name for p in written if p.parent == out]
    rest = len(written) - len(main)
    console.print(
        f"feeds: wrote {', '.join(main) or 'no main feed'}"
        + (f" and {rest} other files" if rest else "")
        + f" in {out}",
        highlight=False,
        markup=False,
    )


@cli.command()
@pass_state
def feeds(state: State) -> None:
    """Rewrite the RSS, Atom and JSON feeds from stored articles."""
    with state.publisher() as publisher:
        _feeds(publisher)


# --- digest / send -------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the next digest's HTML, exactly as it will be sent, to this file.",
)
@click.option(
    "--text",
    "text_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write its plain-text part to this file.",
)
@click.option("--force", is_flag=True, help="Preview even when there is nothing new.")
@pass_state
def digest(state: State, preview: Path | None, text_path: Path | None, force: bool) -> None:
    """Show what the next digest would hold; nothing is created or sent."""
    with state.publisher() as publisher:
        plan = publisher.plan_digest(force=force)
        if not plan.articles:
            console.print("no new articles: the next digest would not be sent (--force overrides)")
            return
        rendered = publisher.render_next_digest(force=force)
        assert rendered is not None  # the plan has articles
        # Fill the placeholders with an example recipient, as a subscriber would see it.
        from newsletter.personalize import Template

        values = publisher.recipient_values(0, "reader@example.com", "Example Reader")
        console.print(_text(f"subject: {rendered.subject}"), highlight=False)
        stories = rendered.stories()
        console.print(
            f"{len(rendered.articles)} articles"
            + (
                f" in {len(stories)} stories ({rendered.grouped} sources grouped)"
                if rendered.groups
                else ""
            )
            + (f" (+{rendered.more} more on the web)" if rendered.more else ""),
            highlight=False,
        )
        for a, others in stories:
            console.print(_text(f"  - {a.title} ", (f"({a.source})", "dim")), highlight=False)
            if others:
                also = " · ".join(o.source for o in others)
                console.print(
                    _text(f"      {len(others) + 1} sources grouped, also in: {also}"),
                    highlight=False,
                )
        note = publisher.next_note()
        if note:
            console.print("opens with the editor's note:", highlight=False)
            console.print(_text(_indent(note)), highlight=False)
        if preview is not None:
            html = Template(rendered.html, is_html=True).fill(values)
            _write(preview, html.encode())
            console.print(
                f"wrote {preview} ({len(html.encode()) / 1024:.1f} KB)",
                highlight=False,
                markup=False,
            )
        if text_path is not None:
            text = Template(rendered.text, is_html=False).fill(values)
            _write(text_path, text.encode())
            console.print(f"wrote {text_path}", highlight=False, markup=False)


@cli.command()
@click.argument("text", required=False)
@click.option(
    "--file",
    "file_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read the note (Markdown) from this file.",
)
@click.option("--show", is_flag=True, help="Show the note the next digest would open with.")
@click.option("--clear", is_flag=True, help="Drop the waiting note.")
@pass_state
def note(state: State, text: str | None, file_path: Path | None, show: bool, clear: bool) -> None:
    """Set the editor's note (Markdown) that opens the next digest, once.

    The next digest created shows it at the top and takes it: the digest after that has no
    note unless a new one is set. Setting a note replaces the waiting one. A file named by
    `[digest] note_file` wins over a note set here while it exists.
    """
    chosen = sum((text is not None, file_path is not None, show, clear))
    if chosen != 1:
        raise click.UsageError("give one of TEXT, --file, --show or --clear")
    with state.publisher() as publisher:
        if show:
            body = publisher.next_note()
            console.print(_text(body) if body else "no note is waiting", highlight=False)
            return
        if clear:
            dropped = publisher.clear_note()
            console.print("note dropped" if dropped else "no note was waiting", highlight=False)
            return
        if file_path is not None:
            try:
                text = file_path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                raise NewsletterError(f"cannot read {file_path}: {e}") from e
        assert text is not None
        publisher.set_note(text)
        console.print("note set: it opens the next digest", highlight=False)
        config_file = publisher.config.digest.note_file
        if config_file is not None and config_file.exists():
            err.print(
                f"note: {config_file} exists and opens the next digest instead",
                highlight=False,
                markup=False,
            )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())


def _send(
    publisher: Publisher, *, force: bool = False, resend_uncertain: bool = False
) -> SendReport:
    if publisher.config.digest.mode == "per_item" and not force and not resend_uncertain:
        return _send_items(publisher)
    with _send_progress() as (on_start, on_batch):
        report = publisher.send_digest(
            force=force,
            resend_uncertain=resend_uncertain,
            wait_for_others=True,
            progress=on_batch,
            on_start=on_start,
        )
    return _print_send(report)


def _send_items(publisher: Publisher) -> SendReport:
    """Per-item mode: a line per mail, and one report that sums them (for the exit code)."""
    with _send_progress() as (on_start, on_batch):
        reports = publisher.send_items(wait_for_others=True, progress=on_batch, on_start=on_start)
    if not reports:
        console.print("mail: nothing sent (no new articles)", highlight=False, markup=False)
        return SendReport(digest_id=None, reason="no new articles")
    for report in reports:
        _print_send(report)
    last = reports[-1]
    return dataclasses.replace(
        last,
        sent=sum(r.sent for r in reports),
        failed=sum(r.failed for r in reports),
        skipped=sum(r.skipped for r in reports),
        uncertain=sum(r.uncertain for r in reports),
    )


def _print_send(report: SendReport) -> SendReport:
    if report.digest_id is None:
        console.print(f"digest: nothing sent ({report.reason})", highlight=False, markup=False)
        return report
    verb = "created and delivered" if report.created else "delivered"
    line = Text(f"digest {report.number} {verb} ({report.articles} articles): {report.sent} sent")
    if report.failed:
        line.append(", ").append(f"{report.failed} failed", "red")
    if report.skipped:
        line.append(f", {report.skipped} skipped (unsubscribed)")
    if report.uncertain:
        line.append(", ").append(f"{report.uncertain} uncertain", "yellow")
        line.append(" (see `newsletter send --resend-uncertain`)")
    console.print(line, highlight=False)
    counts = report.counts
    if counts is not None and counts.total != report.sent + report.failed + report.skipped:
        console.print(
            f"  digest {report.number} in all (every node): {_counts(counts)}", highlight=False
        )
    if report.stopped:
        err.print(
            _text(
                ("sending stopped:", "bold red"),
                f" {report.stopped}; {report.pending} still pending, "
                "a later `newsletter send` resumes",
            ),
            highlight=False,
        )
    elif report.interrupted:
        err.print(
            _text(
                ("interrupted:", "yellow"),
                f" {report.pending} still pending; the next `newsletter send` "
                "(or a running node) goes on",
            ),
            highlight=False,
        )
    return report


def _counts(c: DigestCounts) -> str:
    return (
        f"{c.sent} sent, {c.failed} failed, {c.skipped} skipped, {c.pending} pending, "
        f"{c.leased} being sent by nodes, {c.uncertain} uncertain"
    )


@cli.command()
@click.option("--force", is_flag=True, help="Create a digest even when there is nothing new.")
@click.option(
    "--resend-uncertain",
    is_flag=True,
    help="Also send recipients whose delivery was in flight when a send was interrupted.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be sent where; send nothing.")
@click.option(
    "--test",
    "test_address",
    metavar="ADDRESS",
    help="Send one copy of the next digest to ADDRESS, outside the delivery records.",
)
@pass_state
def send(
    state: State, force: bool, resend_uncertain: bool, dry_run: bool, test_address: str | None
) -> None:
    """Create the next digest if there is news, and deliver it (resumes an unfinished one)."""
    with state.publisher("send") as publisher:
        if test_address is not None:
            result = publisher.send_test(test_address)
            if result.status != DeliveryStatus.SENT:
                err.print(_text(f"test message to {result.email} failed: {result.error}"))
                sys.exit(EXIT_ERROR)
            console.print(
                f"test message sent to {result.email} through {publisher.backend.describe()}"
                + (f" (id {result.message_id})" if result.message_id else ""),
                highlight=False,
                markup=False,
            )
            return
        if dry_run:
            _dry_run(publisher, force=force, resend_uncertain=resend_uncertain)
            return
        with _stop_on_signals(publisher):
            report = _send(publisher, force=force, resend_uncertain=resend_uncertain)
    if report.stopped:
        sys.exit(EXIT_ERROR)
    if report.failed or report.interrupted:
        sys.exit(EXIT_PARTIAL)


def _dry_run(publisher: Publisher, *, force: bool, resend_uncertain: bool) -> None:
    plan = publisher.plan_send(force=force, resend_uncertain=resend_uncertain)
    if plan.reason:
        console.print(
            f"dry run: nothing would be sent ({plan.reason})", highlight=False, markup=False
        )
        return
    what = f"digest {plan.digest_id} (resumed)" if plan.digest_id else "a new digest"
    console.print(f"dry run: {what}, {plan.articles} articles: {plan.subject!r}", markup=False)
    console.print(
        f"  {plan.recipients} messages to {plan.destination}, "
        f"{plan.batches} batches of up to {plan.batch_size}",
        highlight=False,
        markup=False,
    )
    if plan.sample:
        more = plan.recipients - len(plan.sample)
        console.print(
            "  first: " + ", ".join(plan.sample) + (f" and {more} more" if more > 0 else ""),
            highlight=False,
            markup=False,
        )
    if plan.leased:
        console.print(
            f"  {plan.leased} more are being sent right now by nodes holding their batches",
            highlight=False,
        )
    if plan.uncertain:
        console.print(
            f"  {plan.uncertain} uncertain deliveries would not be re-sent "
            "(add --resend-uncertain)",
            highlight=False,
        )
    console.print("nothing was sent", highlight=False)


# --- run -----------------------------------------------------------------------------------------


@cli.command()
@click.option("--once", is_flag=True, help="One gather, feeds and digest cycle, then exit.")
@pass_state
def run(state: State, once: bool) -> None:
    """Run the schedule: gather and rebuild feeds on an interval, send on the digest cron.

    Any number of `run` processes (nodes) may share one PostgreSQL database: each fire runs
    once across them. SQLite takes one. SIGTERM or Ctrl-C stops cleanly (see the README).
    """
    with state.publisher("run") as publisher:
        if once:
            feeds_failed = False
            with _stop_on_signals(publisher):
                results = _gather(publisher)
                try:
                    _feeds(publisher)
                except OutputError as e:
                    # The feeds and the mail are independent: a feeds folder that cannot be
                    # written says so, and the digest goes out all the same.
                    err.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False)
                    feeds_failed = True
                report = _send(publisher)
            if report.stopped or feeds_failed:
                sys.exit(EXIT_ERROR)
            if any(not r.ok for r in results) or report.failed or report.interrupted:
                sys.exit(EXIT_PARTIAL)
            return
        from newsletter.scheduler import NodeScheduler

        with publisher.storage.scheduler_lock():
            _run_scheduler(publisher, NodeScheduler(publisher))


def _run_scheduler(publisher: Publisher, scheduler: NodeScheduler) -> None:
    sched = publisher.config.schedule
    publisher.backend  # noqa: B018 - a mail config that cannot work stops the start, not each job
    publisher.node.start()
    mails = (
        f"digest at '{sched.digest_cron}' ({sched.timezone}), next {_next_digests(publisher)}"
        if publisher.config.digest.mode == "digest"
        else "a mail per new article after each gather"
    )
    console.print(
        f"running as node {publisher.node.id}: gather every {sched.gather_interval_minutes} min, "
        f"{mails}; Ctrl-C or SIGTERM stops",
        highlight=False,
        markup=False,
    )
    with _stop_on_signals(publisher):
        scheduler.start()
        publisher.stopping.wait()
        scheduler.shutdown()
        # The job under way stops claiming; what is on the wire gets stop_timeout seconds.
        finished = scheduler.idle.wait(sched.stop_timeout_seconds + 5)
    if not finished:
        held = publisher.storage.expire_leases(publisher.node.id)
        logging.getLogger("newsletter").error(
            "stopped with a job still running after %g s; %d batches it held are given up to "
            "the other nodes",
            sched.stop_timeout_seconds,
            held,
        )
        _exit_now(0)
    # Whatever this node still holds (a fire stopped before its digest existed, a batch)
    # goes to the other nodes now rather than when the lease would have run out.
    held = publisher.storage.expire_leases(publisher.node.id)
    if held:
        logging.getLogger("newsletter").warning(
            "stopped; %d batches this node still held are given up to the other nodes", held
        )
    console.print("stopped", highlight=False)


@contextmanager
def _stop_on_signals(publisher: Publisher) -> Iterator[None]:
    """SIGTERM and SIGINT ask the node to stop: nothing new is claimed, batches on the wire
    get ``stop_timeout_seconds``, the rest is left for the next run or another node. A second
    signal exits at once, after giving up this node's leases so others take over at once."""
    timeout = publisher.config.schedule.stop_timeout_seconds
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) == 1:
            err.print(
                f"{name}: stopping; no new batches, up to {timeout:g} s for those on the wire "
                f"(send {name} again to exit at once)",
                highlight=False,
                markup=False,
            )
            publisher.stopping.set()
            return
        err.print(f"{name} again: exiting now", highlight=False, markup=False)
        with suppress(NewsletterError):
            held = publisher.storage.expire_leases(publisher.node.id)
            if held:
                err.print(
                    f"{held} batches on the wire were given up to the other nodes",
                    highlight=False,
                    markup=False,
                )
        _exit_now(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _exit_now(code: int) -> None:
    """Leave without waiting for worker threads stuck on the network."""
    console.file.flush()
    err.file.flush()
    logging.shutdown()
    os._exit(code)


# --- preview -------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8025,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@pass_state
def preview(state: State, host: str, port: int) -> None:
    """Serve a live preview of the next digest for editors (reloads on every change)."""
    from newsletter.web.preview import serve

    config_file = state.config.file
    assert config_file is not None  # loaded from a file by State
    serve(config_file, host=host, port=port, listening=_announce("preview"))


@cli.command()
@click.option("--host", help="Address to listen on.  [default: [web] host, 127.0.0.1]")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on, 0 for any free one.  [default: [web] port, 8080]",
)
@pass_state
def serve(state: State, host: str | None, port: int | None) -> None:
    """Serve the public site: feeds, archive, subscribe and unsubscribe, provider webhooks."""
    from newsletter.web.public import serve as serve_public

    config = state.config
    assert config.file is not None  # loaded from a file by State
    host = host or config.web.host
    port = config.web.port if port is None else port
    try:
        serve_public(config.file, host=host, port=port, listening=_announce("serving"))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        console.print("stopped")


def _announce(what: str) -> Callable[[str], None]:
    """Print the address a server really listens on (``--port 0`` picks one) once bound."""

    def announce(address: str) -> None:
        console.print(f"{what}: {address} (Ctrl-C stops)", highlight=False, markup=False)

    return announce


# --- status --------------------------------------------------------------------------------------


@cli.command()
@pass_state
def status(state: State) -> None:
    """Health report: each source's last success and error, the last digest, subscribers."""
    with state.publisher() as publisher:
        report = publisher.status()
    table = Table(title="sources", title_justify="left")
    for col in ("source", "last success", "failures in a row", "last error / warning"):
        table.add_column(col)
    by_name = {s.name: s for s in report.sources}
    failing = 0
    for name in report.configured_sources:
        s = by_name.get(name)
        # A str cell is read as markup: every cell is a Text, the names and errors came from
        # the config and the sources.
        if s is None:
            table.add_row(_text(name), Text("never fetched"), Text("0"), Text(""))
            continue
        failing += s.error_count > 0
        problem = (
            _text((s.last_error, "red")) if s.last_error else _text((s.warning or "", "yellow"))
        )
        table.add_row(
            _text(name),
            Text(_when(s.last_success)),
            Text(str(s.error_count), "red" if s.error_count else ""),
            problem,
        )
    console.print(table)
    console.print(f"articles stored: {report.articles}", highlight=False)
    console.print(
        "subscribers: " + ", ".join(f"{n} {status}" for status, n in report.subscribers.items()),
        highlight=False,
    )
    d, c = report.last_digest, report.last_digest_counts
    if d is None or c is None:
        console.print("last digest: none yet")
    else:
        console.print(
            f"{'digest being sent' if d.status == 'sending' else 'last digest'}: "
            f"#{d.number} {d.status} created {_when(d.created_at)}"
            f"{', sent ' + _when(d.sent_at) if d.sent_at else ''}: {len(d.article_ids)} articles; "
            f"{_counts(c)}: {d.subject!r}",
            highlight=False,
            markup=False,
        )
        for holder in report.leases:
            console.print(
                f"  node {holder.node} holds {holder.batches} batches ({holder.recipients} "
                f"recipients), lease until {_when(holder.until, seconds=True)}",
                highlight=False,
                markup=False,
            )
    u = report.uncertain_digest
    if u is not None:
        console.print(
            f"digest #{u.number} has uncertain deliveries (sent, answer lost): "
            "`newsletter send --resend-uncertain` sends them again",
            highlight=False,
            markup=False,
        )
    if publisher.config.digest.mode == "digest":
        console.print(
            f"next digests ('{publisher.config.schedule.digest_cron}'): {_next_digests(publisher)}",
            highlight=False,
            markup=False,
        )
    for node in report.nodes:
        console.print(
            f"node {node.id}: {node.command}, up since {_when(node.started_at)}, "
            f"last heartbeat {_when(node.last_seen, seconds=True)}",
            highlight=False,
            markup=False,
        )
    if failing:
        sys.exit(EXIT_PARTIAL)


# --- subscribers ---------------------------------------------------------------------------------


@cli.group()
def subscribers() -> None:
    """Add, import, list and remove subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", help="The subscriber's name (used in the greeting).")
@click.option(
    "--force",
    is_flag=True,
    help="Re-activate EMAIL even if it unsubscribed (only when they asked you to).",
)
@pass_state
def subscribers_add(state: State, email: str, name: str | None, force: bool) -> None:
    """Add EMAIL as active. An address that unsubscribed is refused without --force."""
    with state.publisher() as publisher:
        sub, created = publisher.add_subscriber(email, name, force=force)
    console.print(
        f"{'added' if created else 'already present'}: {sub.email} ({sub.status})",
        highlight=False,
        markup=False,
    )


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--email-column",
    metavar="COLUMN",
    help="The address column: a header's name or a 1-based position.  "
    "[default: a recognized header (email, Email Address, email_address), else column 1]",
)
@click.option(
    "--name-column",
    metavar="COLUMN",
    help="The name column: a header's name or a 1-based position.  "
    "[default: a recognized header (name, or first and last name joined), else column 2]",
)
@click.option(
    "--status",
    "status",
    type=click.Choice(["active", "pending"]),
    default="active",
    show_default=True,
    help="pending: send each new address a confirmation mail instead of subscribing it.",
)
@click.option("--dry-run", is_flag=True, help="Report what the import would do; write nothing.")
@pass_state
def subscribers_import(
    state: State,
    file: Path,
    email_column: str | None,
    name_column: str | None,
    status: str,
    dry_run: bool,
) -> None:
    """Import FILE, a CSV export of another newsletter service or rows `email[,name]`.

    Mailchimp, listmonk, Substack, Buttondown and Ghost headers are recognized; the
    delimiter (comma, semicolon, tab) is detected. Addresses already stored are left as they
    are (an import brings back no one who unsubscribed). Bad rows are reported by line.
    """
    pending = status == "pending"
    with state.publisher() as publisher:
        report = publisher.import_subscribers(
            file,
            email_column=email_column,
            name_column=name_column,
            pending=pending,
            dry_run=dry_run,
        )
    shown = report.rejected[:_DRY_RUN_PROBLEMS] if dry_run else report.rejected
    for line, address, reason in shown:
        err.print(_text(f"{file}:{line}: {address!r}: {reason}"), highlight=False, soft_wrap=True)
    if len(shown) < len(report.rejected):
        err.print(f"... and {len(report.rejected) - len(shown)} more rejected rows")
    as_pending = " as pending" if pending else ""
    counts = f"already present {report.already_present}, rejected {len(report.rejected)}"
    if dry_run:
        console.print(
            f"dry run, nothing written: would import {report.added}{as_pending}, {counts}",
            highlight=False,
        )
    else:
        console.print(f"imported {report.added}{as_pending}, {counts}", highlight=False)
    if pending and not dry_run and report.added:
        _send_confirmations(state, report.added)
    if report.rejected:
        sys.exit(EXIT_PARTIAL)


_DRY_RUN_PROBLEMS = 20  # a dry run shows the first problems; the import itself shows them all


def _send_confirmations(state: State, due: int) -> None:
    """Send the confirmation mails an import just marked due, through the subscribe form's
    own mailer (its retries, its claims: a running `serve` never sends one twice)."""
    from newsletter.web.site import Site
    from newsletter.web.subscription import ConfirmationMailer

    config_file = state.config.file
    assert config_file is not None  # loaded from a file by State
    site = Site(config_file)
    try:
        sent = ConfirmationMailer(site).send_due()
    finally:
        site.close()
    left = max(due - sent, 0)
    console.print(
        f"confirmation mails sent: {sent}"
        + (f"; {left} not sent yet stay due (`newsletter serve` sends them)" if left else ""),
        highlight=False,
        markup=False,
    )


@subscribers.command("list")
@click.option(
    "--status",
    "status_filter",
    type=click.Choice([s.value for s in SubscriberStatus]),
    help="Only subscribers with this status.",
)
@pass_state
def subscribers_list(state: State, status_filter: str | None) -> None:
    """List subscribers as CSV (email,name,status,created) on stdout."""
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(["email", "name", "status", "created"])
    with state.publisher() as publisher:
        for s in publisher.subscribers(SubscriberStatus(status_filter) if status_filter else None):
            writer.writerow([s.email, s.name or "", s.status, s.created_at.isoformat()])


@subscribers.command("remove")
@click.argument("email")
@click.option("--delete", is_flag=True, help="Erase the subscriber and their history entirely.")
@pass_state
def subscribers_remove(state: State, email: str, delete: bool) -> None:
    """Unsubscribe EMAIL (kept so no import re-adds it), or erase it with --delete."""
    with state.publisher() as publisher:
        changed = publisher.remove_subscriber(email, delete=delete)
    what = "deleted" if delete else ("unsubscribed" if changed else "was already unsubscribed")
    console.print(f"{email}: {what}", highlight=False, markup=False)


# --- helpers -------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Write a file the user named on the command line; a path that cannot be written (a
    missing folder's parent, /proc, a full disk) is a one-line error, not a traceback."""
    try:
        atomic_write(path, data)
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, FileExistsError):  # from mkdir: a file stands where a folder should
            reason = "a file stands in the way of its folder"
        raise NewsletterError(f"cannot write {path}: {reason}") from e


class _RateColumn(ProgressColumn):
    """Messages per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} msg/s" if speed else "- msg/s")


def _next_digests(publisher: Publisher, count: int = 3) -> str:
    """The next fires of the digest cron, in the schedule's time zone (where the cron is read)."""
    tz = ZoneInfo(publisher.config.schedule.timezone)
    fires = CronSchedule(publisher.config.schedule.digest_cron, tz).next_fires(clock.now(), count)
    if not fires:
        return "none within five years"
    when = ", ".join(f.at.astimezone(tz).strftime("%a %Y-%m-%d %H:%M") for f in fires)
    return f"{when} ({publisher.config.schedule.timezone})"


def _when(value: datetime | None, *, seconds: bool = False) -> str:
    if value is None:
        return "never"
    return value.astimezone().strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing otherwise (logs and pipes stay clean)."""
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def _send_progress() -> Iterator[
    tuple[Callable[[Digest, DigestCounts], None], Callable[[Sequence[DeliveryResult]], None]]
]:
    if not console.is_terminal:
        yield (lambda d, c: None), (lambda results: None)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[failed]} failed"),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task: dict[str, Any] = {}

        def on_start(digest: Digest, counts: DigestCounts) -> None:
            task["id"] = progress.add_task(
                f"sending digest {digest.id}", total=counts.pending, failed=0
            )

        def on_batch(results: Sequence[DeliveryResult]) -> None:
            failed = sum(1 for r in results if r.status == DeliveryStatus.FAILED)
            tid = task["id"]
            progress.update(
                tid, advance=len(results), failed=progress.tasks[tid].fields["failed"] + failed
            )

        yield on_start, on_batch
