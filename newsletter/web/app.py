"""``create_app``: one Starlette application, assembled from one module per concern.

A concern is a function that takes the shared ``Site`` and returns its routes (registering
start and stop hooks on the site when it runs background work). ``preview.routes`` is the
first; the public site (``web.public``: feeds and archive, subscription endpoints, provider
webhooks, health) is more of the same, mounted side by side in one app. The app runs the
site's hooks in its lifespan, so a background thread lives exactly as long as the server.
ASGI ``middleware`` (the public site's trusted-proxy handling) wraps every route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from newsletter.web.site import Site

Concern = Callable[[Site], Sequence[BaseRoute]]


def create_app(
    config_file: Path, *, concerns: Iterable[Concern], middleware: Sequence[Middleware] = ()
) -> Starlette:
    """The web app for ``config_file`` with the routes of each concern.

    The site is at ``app.state.site``.
    """
    site = Site(config_file)
    routes = [route for concern in concerns for route in concern(site)]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(site.start)
        try:
            yield
        finally:
            await run_in_threadpool(site.close)

    app = Starlette(routes=routes, lifespan=lifespan, middleware=list(middleware))
    app.state.site = site
    return app
