"""Provider webhooks: hard bounces and spam complaints suppress the address for good.

One route, ``POST /webhooks/{provider}``, serves the webhook of every registered mail backend
that has one (``newsletter.mail.webhook.webhook_class``: the backend class names its webhook
module, ``mail/<provider>_webhook.py``, which says how that provider proves a request is its
own and which of its events count). A name without a webhook, or a webhook its config does
not set up, is 404.

For each request: the body is read once, within ``MAX_BODY_BYTES`` (413 past it); the
webhook's ``handle`` runs in the threadpool (it may block: a database claim, a certificate
fetched over HTTP) and either refuses (``Refused``: its status and reason; 401/403 are
logged as warnings) or returns the ``Suppression``s, which are applied through
``Publisher.suppress``. A request that passes is 200 with the counts, even when it held no
event we act on (so the provider does not retry it); a database error is 503, so it does
retry, and a secret that is not available (its variable unset since start) is 503 too.

The ``ReplayGuard`` webhooks claim nonces with is ``StorageReplayGuard``: tokens are kept in
the database (as hashes, the provider's name as namespace), so a replay is refused by every
``serve`` process on it, and after a restart. When the answer is 500 or more, the request's
claims are released, so the provider's retry is accepted.

Only addresses we know are changed; others are counted as ignored. Secrets are read from the
environment on each request (``from_config``), never logged.

Owns: serving the webhooks and applying what they find. Does not own any provider's checks or
payloads (``mail/*_webhook.py``), what suppression means (``Publisher.suppress``,
``Storage.suppress``) nor how tokens are kept (``Storage.remember_webhook_token``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import clock
from newsletter.addresses import validate_address
from newsletter.config import Config
from newsletter.core import Publisher
from newsletter.exceptions import ConfigError, NewsletterError, SubscriberError
from newsletter.mail.webhook import (
    Refused,
    Suppression,
    Webhook,
    WebhookRequest,
    registered_webhooks,
    webhook_class,
)
from newsletter.storage import Storage
from newsletter.web.limits import MAX_BODY_BYTES
from newsletter.web.site import Site
from newsletter.web.subscription import read_limited

log = logging.getLogger(__name__)


class StorageReplayGuard:
    """A ``ReplayGuard`` over ``Storage.remember_webhook_token``, for one request: it keeps
    the tokens it claimed, so that a request failing on our side can give them back."""

    def __init__(self, storage: Storage, provider: str, request: WebhookRequest) -> None:
        self.storage = storage
        self.provider = provider
        self.now = request.now
        self.claimed: list[str] = []

    def claim(self, token: str, *, keep: timedelta) -> bool:
        # Insert-or-ignore: of two requests with one token, on any process, one inserts.
        new = self.storage.remember_webhook_token(
            self.provider, token, expires_at=self.now + keep, now=self.now
        )
        if new:
            self.claimed.append(token)
        return new

    def release(self) -> None:
        """Forget this request's claims (it failed on our side: the provider's retry counts)."""
        while self.claimed:
            token = self.claimed.pop()
            try:
                self.storage.forget_webhook_token(self.provider, token)
            except NewsletterError as e:
                # The provider's retry will be refused as a replay: say so, for the operator.
                log.error(
                    "%s webhook: a failed request's token stays remembered: %s", self.provider, e
                )


def check_webhook_secrets(config: Config) -> None:
    """Build every registered webhook from ``config``: ``ConfigError`` when one that is
    configured has its variable unset or unusable (``newsletter serve`` checks at start,
    rather than refusing every request later)."""
    for hook in registered_webhooks().values():
        hook.from_config(config)


class Webhooks:
    def __init__(self, site: Site) -> None:
        self.site = site

    async def endpoint(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        hook_class = webhook_class(provider)
        if hook_class is None:
            return JSONResponse({"error": "no such webhook"}, 404)
        guard: StorageReplayGuard | None = None
        try:
            publisher, hook = await run_in_threadpool(self._configured, hook_class)
            if hook is None:
                return JSONResponse({"error": f"the {provider} webhook is not configured"}, 404)
            body = await read_limited(request, MAX_BODY_BYTES)
            if body is None:
                raise Refused(413, "request too large")
            headers: dict[str, str] = {}
            for name, value in request.headers.items():  # names lower-cased; the first wins
                headers.setdefault(name, value)
            incoming = WebhookRequest(headers=headers, body=body, now=clock.now())
            guard = StorageReplayGuard(publisher.storage, provider, incoming)
            suppressions = await run_in_threadpool(hook.handle, incoming, guard)
            changed, ignored = await run_in_threadpool(self._apply, publisher, suppressions)
        except Refused as e:
            if e.status_code in (401, 403):
                log.warning("%s webhook refused: %s", provider, e.message)
            response: Response = JSONResponse(
                {"error": e.message}, e.status_code, headers=e.headers or None
            )
        except ClientDisconnect:
            response = Response(status_code=400)
        except NewsletterError as e:
            log.error("%s webhook: %s", provider, e)
            response = JSONResponse({"error": "temporarily unavailable"}, 503)
        except Exception:
            # A bug, answered 500 by Starlette: like any 5xx, it gives its claims back.
            if guard is not None:
                await run_in_threadpool(guard.release)
            raise
        else:
            if suppressions:
                log.info(
                    "%s webhook: %d suppressed, %d already suppressed or unknown",
                    provider,
                    changed,
                    ignored,
                )
            response = JSONResponse({"suppressed": changed, "ignored": ignored})
        if guard is not None and response.status_code >= 500:
            await run_in_threadpool(guard.release)
        return response

    def _configured(self, hook_class: type[Webhook]) -> tuple[Publisher, Webhook | None]:
        publisher = self.site.publisher()
        try:
            return publisher, hook_class.from_config(publisher.config)
        except ConfigError as e:
            # `serve` checked at start: the variable went away since (or the config changed).
            log.error("%s webhook refused: %s", hook_class.provider, e)
            raise Refused(503, "webhook not available") from e

    @staticmethod
    def _apply(publisher: Publisher, suppressions: list[Suppression]) -> tuple[int, int]:
        changed = 0
        for item in suppressions:
            try:
                address = validate_address(item.email)
            except SubscriberError:
                continue
            changed += publisher.suppress(address, item.status, item.reason)
        return changed, len(suppressions) - changed


def routes(site: Site) -> list[BaseRoute]:
    return [Route("/webhooks/{provider}", Webhooks(site).endpoint, methods=["POST"])]
