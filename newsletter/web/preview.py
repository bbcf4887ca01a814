"""The editors' preview: the next digest as it would be sent today, reloading itself on change.

``newsletter preview`` serves, on 127.0.0.1 by default:

- ``/``: the preview page: the digest in a frame at desktop (800 px) or phone (375 px) width,
  in the light or dark scheme, or its plain-text part; subject, preheader, sender, item count,
  and the HTML's size against Gmail's clip limit; a form that sends a test copy;
- ``/digest.html?scheme=light|dark``: the HTML part filled for an example recipient, as the
  frame shows it; ``/digest.txt``: the text part;
- ``/events?since=N``: server-sent events; ``change`` when a template, the config file or the
  stored articles changed (the page then reloads);
- ``POST /send-test``: one copy through the configured backend, outside the delivery ledger.

The toggles are plain links with the state in the query string (``width``, ``scheme``,
``view``), so a reload keeps what the editor chose. A mail client in dark mode applies the
digest's ``@media (prefers-color-scheme: dark)`` rules; a frame cannot be told to prefer
another scheme than its browser, so ``/digest.html?scheme=`` rewrites those media conditions
into ones that always or never match (``emulate_color_scheme``): light is light and dark is
dark whatever the editor's own system prefers.

Owns: the preview page and its routes, the change snapshot, the render cache. Does not own
rendering (``Publisher.render_next_digest``) or sending (``Publisher.send_test``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.config import load_config
from newsletter.core import Publisher
from newsletter.exceptions import NewsletterError
from newsletter.personalize import Template
from newsletter.render.digest import default_templates_dir
from newsletter.types import DeliveryStatus
from newsletter.web.site import Site
from newsletter.web.watch import Watcher, event_stream, files_stamp

log = logging.getLogger(__name__)

EXAMPLE_ADDRESS = "reader@example.com"
EXAMPLE_NAME = "Example Reader"
WIDTHS = {"desktop": 800, "phone": 375}
SCHEMES = ("light", "dark")
VIEWS = ("html", "text")
# Gmail shows "[Message clipped]" and hides the rest (footer and unsubscribe link included)
# once the HTML is over 102 KB; the preview warns from 90 KB.
GMAIL_CLIP_BYTES = 102 * 1024
WARN_BYTES = 90 * 1024
MAX_FORM_BYTES = 4096
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_Handler = Callable[[Request], Awaitable[Response]]

# A media feature that always matches, and one that never does on any real screen.
_ALWAYS = "(min-width: 0px)"
_NEVER = "(max-width: 0px)"
_STYLE = re.compile(r"(<style\b[^>]*>)(.*?)(</style\s*>)", re.IGNORECASE | re.DOTALL)
_SCHEME_FEATURE = re.compile(r"\(\s*prefers-color-scheme\s*:\s*(light|dark)\s*\)", re.IGNORECASE)
_SCHEME_META = re.compile(
    r"(<meta\b[^>]*\bname=[\"']?(?:color-scheme|supported-color-schemes)[\"']?[^>]*"
    r"\bcontent=[\"'])[^\"']*([\"'])",
    re.IGNORECASE,
)


def emulate_color_scheme(html: str, scheme: str) -> str:
    """``html`` as a mail client set to ``scheme`` ("light" or "dark") would apply it.

    Inside ``<style>`` blocks, ``(prefers-color-scheme: X)`` becomes a condition that always
    matches when X is ``scheme`` and never otherwise; the ``color-scheme`` meta tags name only
    ``scheme``, so the browser's own defaults (canvas, scrollbars) follow too.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown color scheme {scheme!r}")

    def feature(match: re.Match[str]) -> str:
        return _ALWAYS if match.group(1).lower() == scheme else _NEVER

    def style(match: re.Match[str]) -> str:
        return match.group(1) + _SCHEME_FEATURE.sub(feature, match.group(2)) + match.group(3)

    html = _STYLE.sub(style, html)
    return _SCHEME_META.sub(lambda m: m.group(1) + scheme + m.group(2), html)


@dataclass(frozen=True)
class Preview:
    """One rendering of the next digest, filled for the example recipient."""

    version: int  # the watcher's version it was rendered at
    title: str = ""
    subject: str = ""
    preheader: str = ""
    sender: str = ""
    backend: str = ""
    html: str = ""
    text: str = ""
    articles: int = 0
    more: int = 0
    stories: int = 0  # items shown: a story told by several sources is one
    grouped: int = 0  # articles shown as one of a story's several versions
    error: str | None = None  # why it cannot be rendered (a config or template error)
    empty: bool = False  # no articles stored yet

    @property
    def size(self) -> int:
        return len(self.html.encode())


@dataclass(frozen=True)
class Notice:
    kind: str  # "ok" or "error"
    text: str


class PreviewState:
    """The preview's moving parts: the change watcher and the latest rendering."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.watcher = Watcher(self.snapshot)
        self._lock = threading.Lock()
        self._cache: Preview | None = None
        self._template_dirs: tuple[Path, ...] = (default_templates_dir(),)

    def snapshot(self) -> Hashable:
        """What the preview depends on: the config file, every template file, and the articles
        the next digest would hold (their content, not just their number), and the editor's
        note it would open with."""
        try:
            publisher = self.site.publisher()
            self._template_dirs = publisher.renderer.template_dirs
            plan: Hashable = hash((publisher.plan_digest(force=True), publisher.next_note()))
        except NewsletterError as e:
            plan = ("error", str(e))
        return files_stamp([self.site.config_file, *self._template_dirs]), plan

    def current(self) -> Preview:
        """The rendering for the current version (rendered at most once per version)."""
        version = self.watcher.version
        with self._lock:
            if self._cache is None or self._cache.version != version:
                self._cache = self._render(version)
            return self._cache

    def _render(self, version: int) -> Preview:
        try:
            publisher = self.site.publisher()
            nl = publisher.config.newsletter
            bare = Preview(
                version=version, title=nl.title, sender=nl.sender, backend=_backend(publisher)
            )
            rendered = publisher.render_next_digest(force=True)
            if rendered is None:
                return replace(bare, empty=True)
            values = publisher.recipient_values(0, EXAMPLE_ADDRESS, EXAMPLE_NAME)
        except NewsletterError as e:
            log.warning("preview: %s", e)
            return Preview(version=version, error=str(e))
        return replace(
            bare,
            subject=rendered.subject,
            preheader=rendered.preheader,
            html=Template(rendered.html, is_html=True).fill(values),
            text=Template(rendered.text, is_html=False).fill(values),
            articles=len(rendered.articles),
            more=rendered.more,
            stories=len(rendered.stories()),
            grouped=rendered.grouped,
        )

    # --- routes ----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return await self._page(request, notice=None, address="")

    async def frame(self, request: Request) -> Response:
        scheme = _choice(request, "scheme", SCHEMES)
        preview = await run_in_threadpool(self.current)
        if preview.error is not None or preview.empty:
            message = preview.error or "no articles yet: run `newsletter gather`"
            return PlainTextResponse(message, status_code=503 if preview.error else 404)
        return HTMLResponse(
            emulate_color_scheme(preview.html, scheme), headers={"Cache-Control": "no-store"}
        )

    async def text(self, request: Request) -> Response:
        preview = await run_in_threadpool(self.current)
        if preview.error is not None or preview.empty:
            return PlainTextResponse(preview.error or "no articles yet", status_code=503)
        return PlainTextResponse(preview.text, headers={"Cache-Control": "no-store"})

    async def events(self, request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "-1"))
        except ValueError:
            since = -1
        return event_stream(request, self.watcher, since=since, stopping=self.site.stopping)

    async def send_test(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("cross-site request refused", status_code=403)
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("request too large", status_code=413)
        form = parse_qs(body.decode("utf-8", "replace"))
        address = (form.get("address") or [""])[0].strip()
        notice = await run_in_threadpool(self._send_test, address)
        return await self._page(request, notice=notice, address=address)

    def _send_test(self, address: str) -> Notice:
        if not address:
            return Notice("error", "type an address to send the test to")
        try:
            result = self.site.publisher().send_test(address)
        except NewsletterError as e:
            return Notice("error", f"not sent: {e}")
        if result.status != DeliveryStatus.SENT:
            return Notice("error", f"not sent to {result.email}: {result.error}")
        log.info("preview: sent a test to %s", result.email)
        return Notice("ok", f"sent a test to {result.email} ({result.message_id})")

    async def _page(self, request: Request, *, notice: Notice | None, address: str) -> Response:
        width = _choice(request, "width", tuple(WIDTHS))
        scheme = _choice(request, "scheme", SCHEMES)
        view = _choice(request, "view", VIEWS)
        preview = await run_in_threadpool(self.current)
        state = {"width": width, "scheme": scheme, "view": view}

        def link(**change: str) -> str:
            return "/?" + urlencode({**state, **change})

        html = _PAGE.render(
            p=preview,
            width=width,
            width_px=WIDTHS[width],
            scheme=scheme,
            view=view,
            link=link,
            query=urlencode(state),
            kb=f"{preview.size / 1024:.1f}",
            size_class=(
                "over"
                if preview.size > GMAIL_CLIP_BYTES
                else "near"
                if preview.size >= WARN_BYTES
                else ""
            ),
            notice=notice,
            address=address,
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _backend(publisher: Publisher) -> str:
    """Where a test would go. A backend that cannot be set up here (its API key is only on the
    server, say) does not stop the preview; the send-test form then reports why."""
    try:
        return publisher.backend.describe()
    except NewsletterError as e:
        return f"the {publisher.config.mail.backend} backend, not usable here ({e})"


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.query_params.get(name, allowed[0])
    return value if value in allowed else allowed[0]


def _local_only(handler: _Handler) -> _Handler:
    """Refuse requests whose Host is not this machine's loopback or the address we listen on.

    A web page elsewhere can point a name it controls at 127.0.0.1 (DNS rebinding) and then
    read the preview or send tests; the Host header it has to send gives it away.
    """

    async def guarded(request: Request) -> Response:
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        server = request.scope.get("server")
        bound = str(server[0]) if server else ""
        if host not in LOCAL_HOSTS and host != bound:
            return PlainTextResponse(f"unknown host {host!r}", status_code=421)
        return await handler(request)

    return guarded


def routes(site: Site) -> list[BaseRoute]:
    """The preview's routes; its change watcher runs while the app does."""
    state = PreviewState(site)
    site.on_start(state.watcher.start)
    site.on_stop(state.watcher.stop)
    return [
        Route("/", _local_only(state.page)),
        Route("/digest.html", _local_only(state.frame)),
        Route("/digest.txt", _local_only(state.text)),
        Route("/events", _local_only(state.events)),
        Route("/send-test", _local_only(state.send_test), methods=["POST"]),
    ]


def serve(
    config_file: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8025,
    listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the preview of ``config_file`` on ``host``:``port`` until interrupted (Ctrl-C).
    ``listening`` is called with the address once the socket is bound (port 0 picks one).

    Raises ``ConfigError`` for a config that cannot be used at start, and ``NewsletterError``
    when the port cannot be had.
    """
    from newsletter.web.app import create_app
    from newsletter.web.server import bind, make_server

    load_config(config_file)  # fail now, not on the first request
    app = create_app(config_file, concerns=[routes])
    sock = bind(host, port)
    server = make_server(app, stopping=app.state.site.stopping)
    address = f"http://{host}:{sock.getsockname()[1]}/"
    log.info("preview of %s on %s", config_file, address)
    if listening is not None:
        listening(address)
    server.run(sockets=[sock])


_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Preview{% if p.subject %}: {{ p.subject }}{% endif %}</title>
<style>
:root {
  color-scheme: light;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328;
}
body { margin: 0; background: #e9eaee; }
.bar {
  display: flex;
  align-items: center;
  gap: 12px;
  padding: 10px 20px;
  background: #1f2328;
  color: #fff;
}
.bar h1 { margin: 0; font-size: 16px; font-weight: 600; }
.bar .muted { color: #a1a1aa; font-weight: 400; }
.live { margin-left: auto; font-size: 12px; color: #7ee2a8; }
.live::before { content: "●"; margin-right: 4px; }
.live.offline { color: #f4a3a3; }
.facts {
  display: grid;
  grid-template-columns: repeat(auto-fit, minmax(220px, 1fr));
  gap: 8px 24px;
  margin: 0;
  padding: 14px 20px;
  background: #fff;
  border-bottom: 1px solid #d4d4d8;
}
.facts div { min-width: 0; }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #59636e; }
.facts dd { margin: 0; overflow-wrap: anywhere; }
.facts dd.near { color: #9a6700; font-weight: 600; }
.facts dd.over { color: #cf222e; font-weight: 600; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; padding: 12px 20px; }
.group {
  display: inline-flex;
  border: 1px solid #a1a1aa;
  border-radius: 6px;
  overflow: hidden;
  background: #fff;
}
.group a { padding: 5px 12px; color: #1f2328; text-decoration: none; }
.group a + a { border-left: 1px solid #a1a1aa; }
.group a[aria-current="true"] { background: #1f2328; color: #fff; }
main { display: flex; justify-content: center; padding: 0 20px 20px; }
iframe {
  display: block;
  height: 80vh;
  border: 1px solid #a1a1aa;
  background: #fff;
  box-shadow: 0 2px 12px rgb(0 0 0 / 12%);
}
.text-part {
  width: 74ch;
  max-width: 100%;
  margin: 0;
  padding: 16px;
  overflow-x: auto;
  background: #fff;
  border: 1px solid #a1a1aa;
  font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", monospace;
  white-space: pre;
}
.alert { margin: 12px 20px; padding: 10px 14px; border-radius: 6px; }
.alert pre { margin: 6px 0 0; white-space: pre-wrap; }
.error { background: #ffebe9; border: 1px solid #cf222e; }
.info { background: #fff8c5; border: 1px solid #9a6700; }
.ok { background: #dafbe1; border: 1px solid #1a7f37; }
form {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 8px;
  padding: 12px 20px;
  background: #fff;
  border-top: 1px solid #d4d4d8;
}
form input { padding: 5px 8px; min-width: 260px; }
form .muted { color: #59636e; }
</style>
</head>
<body data-version="{{ p.version }}">
<header class="bar">
<h1>{{ p.title or "newsletter" }}
<span class="muted">· the next digest, as it would be sent now</span></h1>
<span id="live" class="live"
title="Reloads when a template, the config or the articles change">live</span>
</header>
{% if p.error %}
<div id="error" class="alert error" role="alert"><strong>The digest cannot be rendered.</strong>
<pre>{{ p.error }}</pre></div>
{% elif p.empty %}
<div id="empty"
class="alert info">There are no articles yet: run <code>newsletter gather</code>.</div>
{% endif %}
{% if notice %}
<div id="send-result" class="alert {{ notice.kind }}" role="status">{{ notice.text }}</div>
{% endif %}
<dl class="facts">
<div><dt>Subject</dt><dd id="subject">{{ p.subject }}</dd></div>
<div><dt>Preheader</dt><dd id="preheader">{{ p.preheader }}</dd></div>
<div><dt>From</dt><dd id="sender">{{ p.sender }}</dd></div>
<div><dt>Size</dt><dd id="size" class="{{ size_class }}">{{ kb }} KB of HTML
{%- if size_class == "over" %}: over Gmail's 102 KB clip limit, the end will be hidden
{%- elif size_class == "near" %}: near Gmail's 102 KB clip limit{% endif %}</dd></div>
<div><dt>Articles</dt>
<dd id="count">{{ p.articles }}
{%- if p.grouped %} in {{ p.stories }} stories
(<span id="grouped">{{ p.grouped }} sources grouped</span>){% endif %}
{%- if p.more %} (+{{ p.more }} more on the web){% endif %}</dd>
</div>
</dl>
<nav class="controls">
<span class="group" role="group" aria-label="Width">
<a id="width-desktop" href="{{ link(width='desktop') }}"
aria-current="{{ 'true' if width == 'desktop' else 'false' }}">Desktop 800 px</a>
<a id="width-phone" href="{{ link(width='phone') }}"
aria-current="{{ 'true' if width == 'phone' else 'false' }}">Phone 375 px</a>
</span>
<span class="group" role="group" aria-label="Colour scheme">
<a id="scheme-light" href="{{ link(scheme='light') }}"
aria-current="{{ 'true' if scheme == 'light' else 'false' }}">Light</a>
<a id="scheme-dark" href="{{ link(scheme='dark') }}"
aria-current="{{ 'true' if scheme == 'dark' else 'false' }}">Dark</a>
</span>
<span class="group" role="group" aria-label="Part">
<a id="view-html" href="{{ link(view='html') }}"
aria-current="{{ 'true' if view == 'html' else 'false' }}">HTML</a>
<a id="view-text" href="{{ link(view='text') }}"
aria-current="{{ 'true' if view == 'text' else 'false' }}">Plain text</a>
</span>
</nav>
<main>
{% if not p.error and not p.empty %}
{% if view == "text" %}
<pre id="text-part" class="text-part">{{ p.text }}</pre>
{% else %}
<iframe id="digest-frame" title="The digest as sent"
src="/digest.html?scheme={{ scheme }}&amp;v={{ p.version }}"
style="width: {{ width_px }}px; color-scheme: {{ scheme }}"></iframe>
{% endif %}
{% endif %}
</main>
<form id="send-test" method="post" action="/send-test?{{ query }}">
<label for="address">Send a test to</label>
<input id="address" name="address" type="email" required placeholder="you@example.com"
value="{{ address }}">
<button type="submit">Send test</button>
<span class="muted">through {{ p.backend or "the configured backend" }},
outside the delivery ledger</span>
</form>
<script>
(function () {
  // After the test-send form, show the result but keep a URL that reloads with a GET.
  if (location.pathname !== "/") history.replaceState(null, "", "/" + location.search);
  var frame = document.getElementById("digest-frame");
  if (frame) {
    // The frame grows to its content: the page scrolls, as a mail client's reading pane does.
    var fit = function () {
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) frame.style.height = doc.documentElement.scrollHeight + "px";
    };
    frame.addEventListener("load", function () {
      fit();
      if (window.ResizeObserver) new ResizeObserver(fit).observe(frame.contentDocument.body);
    });
  }
  var live = document.getElementById("live");
  var events = new EventSource("/events?since=" + document.body.dataset.version);
  events.addEventListener("change", function () { events.close(); location.reload(); });
  events.onopen = function () { live.classList.remove("offline"); };
  events.onerror = function () { live.classList.add("offline"); };
})();
</script>
</body>
</html>
"""
)
