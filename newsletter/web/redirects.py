"""Every redirect points into the configured site, whatever the request said its host was.

Starlette builds absolute redirects from the request: the trailing-slash redirect
(``/subscribe/`` -> ``/subscribe``) takes the ``Host`` header (or ``X-Forwarded-Host`` from a
trusted proxy) as it came, so a forged header sent the visitor to another site. ``SiteRedirects``
rewrites the ``Location`` of every response on its way out: only the path, query and fragment
are kept (re-quoted, so a decoded control character cannot reach a header) and put under
``[newsletter] site_url``, the one base every link in mail and pages already uses. A
relative ``Location`` from an endpoint gets the same treatment, so ``site_url``'s own path
(a site served under ``/news/``) is kept.

Owns: rewriting ``Location``. Does not own which responses redirect (the endpoints, Starlette's
router) nor the site URL (the config).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote, urljoin, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.exceptions import NewsletterError

log = logging.getLogger(__name__)

# Characters kept as they are: RFC 3986 unreserved, sub-delims, ":", "@", "/" and "%" (an
# existing escape stays one); everything else, controls and spaces included, is %-escaped.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def on_site(location: str, *, request_path: str, site_url: str) -> str:
    """``location`` moved under ``site_url`` (absolute, ending in "/"): its path, query and
    fragment, resolved against ``request_path`` when relative."""
    try:
        parts = urlsplit(urljoin("http://host" + quote(request_path, safe=_PATH_SAFE), location))
    except ValueError:  # e.g. a broken IPv6 literal: nothing of it is worth keeping
        return site_url
    path = quote(parts.path.lstrip("/"), safe=_PATH_SAFE)
    target = site_url + path
    if parts.query:
        target += "?" + quote(parts.query, safe=_QUERY_SAFE)
    if parts.fragment:
        target += "#" + quote(parts.fragment, safe=_QUERY_SAFE)
    return target


class SiteRedirects:
    """ASGI middleware; ``site_url()`` gives the configured site URL (may block; raises
    ``NewsletterError`` when the config cannot be read, which makes the redirect a 503)."""

    def __init__(self, app: ASGIApp, *, site_url: Callable[[], str]) -> None:
        self.app = app
        self.site_url = site_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_path: str = scope.get("root_path", "") + scope["path"]
        unavailable = False

        async def send_on_site(message: Message) -> None:
            nonlocal unavailable
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                found = [value for name, value in headers if name.lower() == b"location"]
                if found:
                    try:
                        site_url = await run_in_threadpool(self.site_url)
                    except NewsletterError as e:
                        log.error("redirect not sent, the site URL is unknown: %s", e)
                        unavailable = True
                        await send(_UNAVAILABLE_START)
                        await send(_UNAVAILABLE_BODY)
                        return
                    location = on_site(
                        found[-1].decode("latin-1"), request_path=request_path, site_url=site_url
                    )
                    headers = [(n, v) for n, v in headers if n.lower() != b"location"]
                    headers.append((b"location", location.encode("ascii")))
                    message = {**message, "headers": headers}
            elif unavailable:
                return  # the original body is not sent after the 503
            await send(message)

        await self.app(scope, receive, send_on_site)


_UNAVAILABLE_START: Message = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"retry-after", b"60"),
        (b"cache-control", b"no-store"),
    ],
}
_UNAVAILABLE_BODY: Message = {
    "type": "http.response.body",
    "body": b"Temporarily unavailable: try again in a minute.",
    "more_body": False,
}
