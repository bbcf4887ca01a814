"""The public site, ``newsletter serve``: every endpoint readers, subscribers and providers use.

- ``/feeds/<file>`` and ``/archive/...`` (``web.static``);
- ``/subscribe``, ``/confirm/<token>``, ``/unsubscribe/<token>`` (``web.subscription``);
- ``/webhooks/<provider>`` for each mail backend with a webhook (``web.webhooks``);
- ``/healthz``: ``{"status", "database", "feeds"}``, 200 while the database answers, else 503;
- ``/``: a redirect to the subscribe page.

Behind a reverse proxy, the ``X-Forwarded-*`` headers of the peers in ``[web]
trusted_proxies`` are applied first (``web.proxy``); the list is read at start. Every
redirect is then put under ``[newsletter] site_url`` (``web.redirects``), and every request
body is bounded in size and time before an endpoint reads it (``web.limits``).

Owns: assembling the public app and running it. Does not own any endpoint's behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.config import load_config
from newsletter.exceptions import NewsletterError
from newsletter.render.feeds import ATOM_FILE, JSON_FILE, RSS_FILE
from newsletter.web import static, subscription, webhooks
from newsletter.web.app import Concern, create_app
from newsletter.web.limits import BodyLimits
from newsletter.web.proxy import TrustedProxies
from newsletter.web.redirects import SiteRedirects
from newsletter.web.server import bind, make_server
from newsletter.web.site import Site

log = logging.getLogger(__name__)


# The health check answers within about this long, whatever a writer is doing: its query is a
# read-only transaction (it never waits for the write lock) bounded by this timeout.
HEALTH_TIMEOUT = 2.0


def health_routes(site: Site) -> list[BaseRoute]:
    def check() -> tuple[bool, bool]:
        try:
            publisher = site.publisher()
            publisher.storage.ping(timeout=HEALTH_TIMEOUT)
        except NewsletterError as e:
            log.error("health check: %s", e)
            return False, False
        out = publisher.config.feeds.output_dir
        return True, all((out / name).is_file() for name in (RSS_FILE, ATOM_FILE, JSON_FILE))

    async def healthz(request: Request) -> Response:
        database, feeds = await run_in_threadpool(check)
        return JSONResponse(
            {"status": "ok" if database else "error", "database": database, "feeds": feeds},
            status_code=200 if database else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def home(request: Request) -> Response:
        return RedirectResponse("/subscribe", status_code=302)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/", home, methods=["GET", "HEAD"]),
    ]


CONCERNS: tuple[Concern, ...] = (
    static.routes,
    subscription.routes,
    webhooks.routes,
    health_routes,
)


def create_public_app(config_file: Path, *, trusted_proxies: tuple[str, ...]) -> Starlette:
    """The public site for ``config_file``; ``trusted_proxies`` as in ``[web]``."""
    app = create_app(
        config_file,
        concerns=CONCERNS,
        middleware=[Middleware(TrustedProxies, trusted=trusted_proxies), Middleware(BodyLimits)],
    )
    site: Site = app.state.site

    def site_url() -> str:
        return site.publisher().config.newsletter.site_url

    # Outermost: whatever makes a redirect, the router included, is rewritten.
    app.add_middleware(SiteRedirects, site_url=site_url)

    def warm_up() -> None:
        # Open (and migrate) the database at start rather than inside the first request;
        # a problem is logged here and answered as 503 until it is fixed.
        try:
            site.publisher()
        except NewsletterError as e:
            log.error("the site cannot serve yet: %s", e)

    site.on_start(warm_up)
    return app


def serve(
    config_file: Path,
    *,
    host: str,
    port: int,
    listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the public site of ``config_file`` on ``host``:``port`` until interrupted.
    ``listening`` is called with the address once the socket is bound (port 0 picks one).

    Raises ``ConfigError`` for a config that cannot be used at start (a webhook's secret
    missing included), and ``NewsletterError`` when the port cannot be had.
    """
    config = load_config(config_file)
    webhooks.check_webhook_secrets(config)
    app = create_public_app(config_file, trusted_proxies=config.web.trusted_proxies)
    sock = bind(host, port)
    server = make_server(app, stopping=app.state.site.stopping)
    address = f"http://{host}:{sock.getsockname()[1]}/"
    log.info("serving %s on %s", config_file, address)
    if listening is not None:
        listening(address)
    server.run(sockets=[sock])
