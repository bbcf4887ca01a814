"""Subscribe (double opt-in), confirm, and unsubscribe (RFC 8058 one-click), over HTTP.

- ``GET /subscribe``: a small form. ``POST /subscribe`` (form or JSON ``{"email", "name"}``)
  records the request and answers the same whatever the address's state, so the answer never
  tells whether someone is subscribed: a new or unsubscribed address becomes pending and is
  sent a confirmation mail; an already active or suppressed address is sent nothing (an
  active one is already receiving the newsletter, which says how to leave; a suppressed one
  must never be written to again); a pending one gets another confirmation, at most one per
  ``core.CONFIRM_RESEND``. The mail is marked due in the database with the request and goes
  out from a background thread after the answer (``ConfirmationMailer``), so the answer's
  timing does not tell either, and a crash loses no confirmation. A token bucket per client
  address (per /64 for IPv6), kept in the database so every ``serve`` process counts against
  it, limits requests (429 with ``Retry-After``), and a form posted from another site is
  refused (403): ``Origin`` (or ``Sec-Fetch-Site``) must name this site.
- ``GET /confirm/<token>`` shows a page with a button and changes nothing: mail filters that
  fetch every link in a message would otherwise subscribe addresses whose owners never
  clicked. ``POST /confirm/<token>`` (the button, refused from another site) activates the
  pending subscriber (idempotent). An expired link is 410, a tampered one 400, each with a
  page saying what to do. Addresses that never confirm are forgotten after
  ``[web] purge_pending_days``, by the confirmation mailer's rounds.
- ``GET /unsubscribe/<token>`` shows a page with a button and changes nothing (link scanners
  and prefetchers fetch links in mail); ``POST /unsubscribe/<token>`` unsubscribes, from that
  button or as a mailbox provider's RFC 8058 one-click request (body
  ``List-Unsubscribe=One-Click``, no cookies). The token is the credential, so no other check
  is made and any POST body is accepted; the answer is sent only once the change is committed
  (a database error is a 503, so the provider retries), and repeating it is harmless.

Owns: the routes, the request parsing, which requests the rate limit counts, the
confirmation mail thread and its retry policy. Does not own: the rules
(``Publisher.request_subscription``, ``confirm_subscription``, ``unsubscribe_by_token``), the
wording (``web.pages``) or the shared state's SQL (``storage.web``).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.core import Publisher
from newsletter.exceptions import NewsletterError, SubscriberError
from newsletter.tokens import TokenError, TokenExpired
from newsletter.types import (
    ClaimedConfirmation,
    DeliveryStatus,
    Subscriber,
    SubscriberStatus,
)
from newsletter.web import pages
from newsletter.web.limits import BadBody, parse_json
from newsletter.web.ratelimit import RateLimiter
from newsletter.web.site import Site

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
POLL_SECONDS = 5.0  # how often a mailer looks for due confirmations without being woken
# How long a claimed confirmation is held by the process sending it: more than one send with
# the backend's own retries takes. A process that dies mid-send leaves it due once this ends.
CLAIM_LEASE = timedelta(minutes=5)
# After failed attempt n, the next is RETRY_DELAYS[n - 1] later; after the last, it is given up
# (the person can ask again: by then the resend throttle, ``core.CONFIRM_RESEND``, has passed).
RETRY_DELAYS = (
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
DRAIN_SECONDS = 10.0  # at shutdown, the mail being sent gets this long to finish
PURGE_SECONDS = 3600.0  # how often a mailer forgets old unconfirmed requests


class ConfirmationMailer:
    """Sends the confirmation mails the database says are due, one at a time, from a thread.

    The queue is the database: ``request_subscription`` marks a confirmation due in the
    transaction that decides to send it, and the mailer of any ``serve`` process claims it
    under a lease (``Storage.claim_confirmations``), sends it, and closes the claim; a send
    that fails is due again after a delay, up to ``MAX_ATTEMPTS`` claims. So a process that
    crashes loses nothing: what it had not sent is still due, and what it was sending is due
    again when its lease ends (that one mail may then arrive twice; both links work). Two
    mailers never hold the same claim, so in the normal course each mail goes once.

    ``submit`` only wakes the thread, so a confirmation goes out at once in the common case;
    otherwise the thread looks every ``poll_seconds`` (and at start, for what a crashed
    process left). One thread: a backend that keeps a connection (SMTP) is used by one caller
    at a time, and a slow provider slows only the mails, never the answers.
    """

    def __init__(
        self,
        site: Site,
        *,
        poll_seconds: float = POLL_SECONDS,
        lease: timedelta = CLAIM_LEASE,
    ) -> None:
        self.site = site
        self.poll_seconds = poll_seconds
        self.lease = lease
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._purged_at: float | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._wake.set()  # look at once: a process that died may have left mails due
        self._thread = threading.Thread(target=self._run, name="newsletter-confirm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the mail being sent (for up to ``DRAIN_SECONDS``), then stop. What is still
        due stays due, for another process or the next start."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=DRAIN_SECONDS)
        if self._thread.is_alive():
            log.error(
                "a confirmation mail was still being sent at shutdown; it is sent again once "
                "its claim runs out (%s)",
                self.lease,
            )
        self._thread = None

    def submit(self, subscriber: Subscriber | None = None) -> None:
        """A hint that a confirmation has just been marked due: look now, not at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self.purge()
                self.send_due()
            except Exception:  # a bug must not end the thread: the next poll tries again
                log.exception("confirmation mails: unexpected error")

    def purge(self) -> None:
        """Forget old unconfirmed requests, at most once per ``PURGE_SECONDS`` per process.
        The purge is one conditional statement per kind of row, so several processes doing
        it at once change each row once."""
        now = time.monotonic()
        if self._purged_at is not None and now - self._purged_at < PURGE_SECONDS:
            return
        self._purged_at = now
        try:
            self.site.publisher().purge_pending()
        except NewsletterError as e:
            log.error("unconfirmed subscription requests: cannot purge: %s", e)

    def send_due(self) -> int:
        """Claim and send confirmations until none is due or the mailer stops. Returns how
        many were sent."""
        sent = 0
        while not self._stopping.is_set():
            try:
                publisher = self.site.publisher()
                claims = publisher.storage.claim_confirmations(limit=1, lease=self.lease)
            except NewsletterError as e:
                log.error("confirmation mails: cannot look for due ones: %s", e)
                return sent
            if not claims:
                return sent
            for claim in claims:
                sent += self._send(publisher, claim)
        return sent

    def _send(self, publisher: Publisher, claim: ClaimedConfirmation) -> int:
        subscriber = claim.subscriber
        error: str | None
        if claim.attempts > MAX_ATTEMPTS:  # claimed by processes that died each time
            error = "its sender stopped every time"
        else:
            try:
                nl = publisher.config.newsletter
                subject, html, text = pages.confirmation_mail(
                    title=nl.title,
                    url=publisher.confirmation_url(subscriber),
                    name=subscriber.name,
                    hours=publisher.config.web.confirm_hours,
                    postal_address=nl.postal_address,
                    language=nl.language,
                )
                result = publisher.send_confirmation(
                    subscriber, subject=subject, html=html, text=text
                )
                ok = result.status == DeliveryStatus.SENT
                error = None if ok else result.error or "not accepted"
            except NewsletterError as e:
                error = str(e)
        # The backend's answer does not say whether a failure is for good (send_one folds its
        # errors into the result), so every failure is tried again, a bounded number of times.
        retry_in: timedelta | None = None
        if error is None:
            log.info("confirmation sent to subscriber %d", subscriber.id)
        elif claim.attempts >= MAX_ATTEMPTS:
            log.error(
                "confirmation for subscriber %d not sent, given up after %d attempts: %s",
                subscriber.id,
                claim.attempts,
                error,
            )
        else:
            retry_in = RETRY_DELAYS[claim.attempts - 1]
            log.warning(
                "confirmation for subscriber %d not sent (attempt %d of %d), next in %s: %s",
                subscriber.id,
                claim.attempts,
                MAX_ATTEMPTS,
                retry_in,
                error,
            )
        try:
            if not publisher.storage.finish_confirmation(claim, retry_in=retry_in):
                log.warning(
                    "confirmation for subscriber %d: its claim was taken over during the send "
                    "(the lease ran out), so this mail may go twice",
                    subscriber.id,
                )
        except NewsletterError as e:
            log.error(
                "confirmation for subscriber %d: outcome not recorded (%s); it is due again "
                "when its claim runs out",
                subscriber.id,
                e,
            )
        return 1 if error is None else 0


class Subscriptions:
    """The routes' state: the site, the confirmation thread, the rate limiter.

    Each request makes one trip to a worker thread, where everything after reading the body
    happens (config, checks, the database, the page): a trip costs far more than the checks.
    """

    def __init__(self, site: Site) -> None:
        self.site = site
        self.mailer = ConfirmationMailer(site)
        self._limiter: RateLimiter | None = None
        self._lock = threading.Lock()
        # SQLite lets one writer in at a time and makes the others wait in its busy handler,
        # which sleeps in steps of up to 100 ms; queueing on a lock here instead hands the turn
        # on at once. Writes from other processes (the scheduler, other `serve` processes)
        # still meet the busy handler.
        self._write_lock = threading.Lock()

    def limiter(self, per_minute: float) -> RateLimiter:
        """The rate limiter for the configured rate (a new one when the config changes it)."""
        with self._lock:
            if self._limiter is None or self._limiter.per_minute != per_minute:
                self._limiter = RateLimiter(per_minute)
            return self._limiter

    @staticmethod
    def settings(publisher: Publisher) -> dict[str, str]:
        nl = publisher.config.newsletter
        return {
            "title": nl.title,
            "site_url": nl.site_url,
            "language": nl.language,
            "description": nl.description,
        }

    # --- /subscribe ------------------------------------------------------------------------------

    async def subscribe_form(self, request: Request) -> Response:
        return await run_in_threadpool(self._subscribe_form)

    def _subscribe_form(self) -> Response:
        try:
            settings = self.settings(self.site.publisher())
        except NewsletterError as e:
            return _unavailable(e)
        return pages.page("subscribe", settings, heading="Subscribe", email="", name="", error=None)

    async def subscribe(self, request: Request) -> Response:
        try:
            body = await read_limited(request, MAX_FORM_BYTES)
        except ClientDisconnect:
            return Response(status_code=400)
        return await run_in_threadpool(self._subscribe, request, body)

    def _subscribe(self, request: Request, body: bytes | None) -> Response:
        try:
            publisher = self.site.publisher()
        except NewsletterError as e:
            return _unavailable(e)
        settings = self.settings(publisher)
        wants_json = "json" in request.headers.get("content-type", "")
        if cross_site(request, publisher.config.newsletter.site_url):
            return self._problem(
                settings, wants_json, 403, "This form can only be sent from this site."
            )
        limiter = self.limiter(publisher.config.web.subscribe_rate_per_minute)
        try:
            with self._write_lock:
                wait = limiter.acquire(publisher.storage, client_key(request))
        except NewsletterError as e:
            log.error("subscribe: %s", e)
            return self._problem(
                settings, wants_json, 503, "Something went wrong on our side: try again soon."
            )
        if wait > 0:
            return self._problem(
                settings,
                wants_json,
                429,
                "Too many requests from your address: please wait a minute and try again.",
                headers={"Retry-After": retry_after(wait)},
            )
        if body is None:
            return self._problem(settings, wants_json, 413, "The request is too large.")
        try:
            fields = parse_fields(request.headers.get("content-type", ""), body)
        except BadBody as e:
            return self._problem(settings, wants_json, 400, f"The request cannot be read: {e}.")
        if fields is None:
            return self._problem(
                settings, wants_json, 415, "Send the form, or JSON with an email field."
            )
        email, name = fields.get("email", "").strip(), fields.get("name", "").strip() or None
        if not email:
            return self._invalid(settings, wants_json, email, name, "Type your e-mail address.")
        try:
            with self._write_lock:
                to_mail = publisher.request_subscription(email, name)
        except SubscriberError as e:
            return self._invalid(settings, wants_json, email, name, f"{e.message}.")
        except NewsletterError as e:
            log.error("subscribe: %s", e)
            return self._problem(
                settings, wants_json, 503, "Something went wrong on our side: try again soon."
            )
        if to_mail is not None:
            # Marked due in the database with the request; this only wakes the mailer.
            self.mailer.submit(to_mail)
        # The same answer for every address (see the module docstring).
        if wants_json:
            return JSONResponse(
                {"status": "check your inbox", "email": email},
                status_code=202,
                headers={"Cache-Control": "no-store"},
            )
        return pages.page("check_inbox", settings, heading="Check your inbox", email=email)

    def _invalid(
        self,
        settings: Mapping[str, str],
        wants_json: bool,
        email: str,
        name: str | None,
        error: str,
    ) -> Response:
        if wants_json:
            return JSONResponse({"error": error}, status_code=400)
        return pages.page(
            "subscribe",
            settings,
            heading="Subscribe",
            status_code=400,
            email=email,
            name=name or "",
            error=error,
        )

    def _problem(
        self,
        settings: Mapping[str, str],
        wants_json: bool,
        status_code: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        if wants_json:
            return JSONResponse({"error": message}, status_code=status_code, headers=headers)
        return pages.page(
            "problem",
            settings,
            heading="Not subscribed",
            status_code=status_code,
            headers=headers,
            message=message,
            link="/subscribe",
            link_text="Back to the form",
        )

    # --- /confirm --------------------------------------------------------------------------------

    async def confirm_page(self, request: Request) -> Response:
        """GET: show the button. Changes nothing, so a link scanner confirms no one."""
        if request.method == "HEAD":
            return Response(status_code=200, headers=pages.PRIVATE_HEADERS)
        return await run_in_threadpool(self._confirm, request, False)

    async def confirm(self, request: Request) -> Response:
        """POST: the button. Idempotent."""
        try:
            await read_limited(request, MAX_FORM_BYTES)  # the body says nothing: the token does
        except ClientDisconnect:
            return Response(status_code=400)
        return await run_in_threadpool(self._confirm, request, True)

    def _confirm(self, request: Request, act: bool) -> Response:
        token = request.path_params["token"]
        try:
            publisher = self.site.publisher()
            settings = self.settings(publisher)
            if act and cross_site(request, publisher.config.newsletter.site_url):
                return pages.page(
                    "problem",
                    settings,
                    heading="Not confirmed",
                    status_code=403,
                    private=True,
                    message="This button can only be pressed on this site: open the link "
                    "from the message again.",
                    link=None,
                    link_text="",
                )
            if act:
                with self._write_lock:
                    subscriber = publisher.confirm_subscription(token)
            else:
                subscriber = publisher.subscriber_for_confirmation(token)
        except TokenExpired:
            return pages.page(
                "confirm_gone",
                settings,
                heading="This link has expired",
                status_code=410,
                private=True,
                message="Confirmation links work for a few days only. Subscribe again and "
                "use the link in the new message.",
            )
        except TokenError:
            return pages.page(
                "problem",
                settings,
                heading="This link is not valid",
                status_code=400,
                private=True,
                message="The confirmation link is incomplete or altered. Open it again from "
                "the message, or copy the whole link into the address bar.",
                link="/subscribe",
                link_text="Subscribe",
            )
        except NewsletterError as e:
            return _unavailable(e)
        if not act and subscriber.status == SubscriberStatus.PENDING:
            return pages.page(
                "confirm", settings, heading="Confirm", private=True, email=subscriber.email
            )
        if subscriber.status != SubscriberStatus.ACTIVE:
            return pages.page(
                "confirm_gone",
                settings,
                heading="This link can no longer be used",
                status_code=410,
                private=True,
                message="This address left the list after the link was sent.",
            )
        return pages.page(
            "confirmed",
            settings,
            heading="You are subscribed",
            private=True,
            email=subscriber.email,
        )

    # --- /unsubscribe ----------------------------------------------------------------------------

    async def unsubscribe_page(self, request: Request) -> Response:
        """GET: show what the button would do. Changes nothing."""
        return await run_in_threadpool(self._unsubscribe, request.path_params["token"], False)

    async def unsubscribe(self, request: Request) -> Response:
        """POST: the button, or an RFC 8058 one-click request. Idempotent."""
        return await run_in_threadpool(self._unsubscribe, request.path_params["token"], True)

    def _unsubscribe(self, token: str, act: bool) -> Response:
        try:
            publisher = self.site.publisher()
            settings = self.settings(publisher)
            if act:
                with self._write_lock:
                    subscriber = publisher.unsubscribe_by_token(token)
                log.info("subscriber %d unsubscribed through the web", subscriber.id)
            else:
                subscriber = publisher.subscriber_for_unsubscribe(token)
        except TokenError:
            return _bad_unsubscribe(settings)
        except NewsletterError as e:
            return _unavailable(e)
        if subscriber.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING):
            return pages.page(
                "unsubscribe", settings, heading="Unsubscribe", private=True, email=subscriber.email
            )
        return _unsubscribed(settings, subscriber)


def _unsubscribed(settings: Mapping[str, str], subscriber: Subscriber) -> Response:
    return pages.page(
        "unsubscribed",
        settings,
        heading="You are unsubscribed",
        private=True,
        email=subscriber.email,
    )


def _bad_unsubscribe(settings: Mapping[str, str]) -> Response:
    return pages.page(
        "problem",
        settings,
        heading="This link is not valid",
        status_code=400,
        private=True,
        message="The unsubscribe link is incomplete or altered, so it cannot say who you are. "
        "Open it again from the message (every issue has one), or reply to an issue and ask "
        "to be removed.",
        link=None,
        link_text="",
    )


def _unavailable(error: NewsletterError) -> Response:
    log.error("subscription endpoint: %s", error)
    return Response(
        "Temporarily unavailable: try again in a minute.",
        status_code=503,
        media_type="text/plain",
        headers={"Retry-After": "60", "Cache-Control": "no-store"},
    )


# --- request helpers ----------------------------------------------------------------------------


def client_key(request: Request) -> str:
    """Who the rate limit counts: the client address (after ``web.proxy``); for IPv6 its /64,
    which one household or machine usually holds whole."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def retry_after(wait: float) -> str:
    """Seconds to wait as a ``Retry-After`` value: whole seconds, rounded up."""
    return str(max(1, math.ceil(wait)))


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)  # ValueError for a broken IPv6 literal ("http://[::1")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


def cross_site(request: Request, site_url: str) -> bool:
    """Whether a POST comes from a page on another site (a CSRF attempt).

    A browser says where a request comes from in ``Sec-Fetch-Site``, which no page can set;
    where it is absent (an older browser) or only says "same-site", ``Origin`` must be this
    site's, as the request reached us or as ``site_url`` says. A request with neither header
    is not from a browser page (curl, a server) and is let through: CSRF needs a browser.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site in ("same-origin", "none"):
        return False
    if fetch_site == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    own = {_origin(site_url), _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")}
    found = _origin(origin)
    return found is None or found not in own


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_fields(content_type: str, body: bytes) -> dict[str, str] | None:
    """The fields of a form (urlencoded) or JSON object body; None for another media type.

    Raises ``BadBody`` for a JSON body that cannot be read, with the reason (``web.limits``).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
    if media == "application/json" or media.endswith("+json"):
        data: Any = parse_json(body)
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
    return None


def routes(site: Site) -> list[BaseRoute]:
    state = Subscriptions(site)
    site.on_start(state.mailer.start)
    site.on_stop(state.mailer.stop)
    return [
        Route("/subscribe", state.subscribe_form, methods=["GET", "HEAD"]),
        Route("/subscribe", state.subscribe, methods=["POST"]),
        Route("/confirm/{token}", state.confirm_page, methods=["GET", "HEAD"]),
        Route("/confirm/{token}", state.confirm, methods=["POST"]),
        Route("/unsubscribe/{token}", state.unsubscribe_page, methods=["GET", "HEAD"]),
        Route("/unsubscribe/{token}", state.unsubscribe, methods=["POST"]),
    ]
