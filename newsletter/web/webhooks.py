"""Provider webhooks: hard bounces and spam complaints suppress the address for good.

Each provider proves a request is its own differently, and each is checked the way its
documentation says, before the body is trusted:

- Postmark (``POST /webhooks/postmark``) signs nothing; its documented protection is HTTP
  Basic credentials in the webhook URL (``https://user:password@host/webhooks/postmark``).
  Both are compared in constant time; a request without them is 401.
- SendGrid (``POST /webhooks/sendgrid``), the Signed Event Webhook: an ECDSA (P-256, SHA-256)
  signature of the ``X-Twilio-Email-Event-Webhook-Timestamp`` header followed by the raw
  body, base64 DER in ``X-Twilio-Email-Event-Webhook-Signature``, checked with the public key
  the SendGrid console shows (base64 DER, or PEM). Needs the ``cryptography`` package.
- Mailgun (``POST /webhooks/mailgun``, JSON): ``signature.signature`` is the hex HMAC-SHA256
  of ``timestamp`` + ``token`` under the webhook signing key. A token is accepted once:
  accepted tokens are remembered in the database (as a hash) for twice the accepted window,
  so a replay is refused by every ``serve`` process on the database, and after a restart.

For SendGrid and Mailgun a timestamp more than ``MAX_AGE_SECONDS`` away from now is refused,
so a captured request cannot be replayed later; a timestamp that is not 1 to 12 ASCII digits
is refused the same way (403). A body that is not JSON, nests too deep or holds a lone
surrogate is 400 with the reason (``web.limits.parse_json``), whoever sent it. A bad
credential or signature is 401/403 and changes nothing; a request that passes is 200 with
the counts, even when it held no event we act on (so the provider does not retry it); a
database error is 503, so it does retry.

What counts, per provider (only hard bounces; soft bounces, deferrals and blocks are
transient and ignored):

- Postmark: ``RecordType`` Bounce with ``Type`` HardBounce or BadEmailAddress -> bounced;
  ``RecordType`` SpamComplaint -> complained; a SubscriptionChange that suppresses sending
  for HardBounce or SpamComplaint -> the same.
- SendGrid: ``bounce`` events except ``type: blocked`` -> bounced; ``spamreport`` ->
  complained; ``dropped`` because of an earlier bounce or complaint -> the same.
- Mailgun: ``failed`` with ``severity: permanent`` and reason ``bounce`` or
  ``suppress-bounce`` -> bounced; ``complained`` or a ``suppress-complaint`` failure ->
  complained.

Only addresses we know are changed; others are counted as ignored. Secrets come from the
environment variables ``[web]`` names, read per request, never logged.

Owns: authenticating and reading the three payloads. Does not own what suppression means
(``Publisher.suppress``, ``Storage.suppress``) nor how accepted tokens are kept
(``Storage.remember_webhook_token``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import clock
from newsletter.addresses import validate_address
from newsletter.config import Config
from newsletter.core import Publisher
from newsletter.exceptions import ConfigError, NewsletterError, SubscriberError
from newsletter.storage import Storage
from newsletter.types import SubscriberStatus
from newsletter.web.limits import MAX_BODY_BYTES, BadBody, parse_json
from newsletter.web.site import Site
from newsletter.web.subscription import read_limited

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 600  # how far a signed timestamp may be from now, either way
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_REASON_CHARS = 500  # of a provider's text kept with a suppression
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # seconds since 1970: 12 digits last past year 30000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

BOUNCED, COMPLAINED = SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED
_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress"})
_POSTMARK_SUPPRESSION = {"HardBounce": BOUNCED, "SpamComplaint": COMPLAINED}
_SENDGRID_DROPPED = {"bounced address": BOUNCED, "spam reporting address": COMPLAINED}
_MAILGUN_FAILED = {"bounce": BOUNCED, "suppress-bounce": BOUNCED, "suppress-complaint": COMPLAINED}


@dataclass(frozen=True)
class Suppression:
    """One address a provider says must not be written to again, and why."""

    email: str
    status: SubscriberStatus  # BOUNCED or COMPLAINED
    reason: str


class Refused(Exception):
    """The request is not the provider's (or not readable): answered ``status_code``."""

    def __init__(self, status_code: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


# --- reading the payloads -----------------------------------------------------------------------


def postmark_suppressions(event: Any) -> list[Suppression]:
    """From one Postmark webhook payload (a JSON object)."""
    if not isinstance(event, dict):
        raise Refused(400, "expected a JSON object")
    record, kind = event.get("RecordType"), event.get("Type")
    details = str(event.get("Description") or event.get("Details") or kind or record or "")
    if record == "Bounce" and isinstance(kind, str) and kind in _POSTMARK_HARD:
        return _one(event.get("Email"), BOUNCED, f"postmark {kind}: {details}")
    if record == "SpamComplaint" or (record == "Bounce" and kind == "SpamComplaint"):
        return _one(event.get("Email"), COMPLAINED, f"postmark spam complaint: {details}")
    if record == "SubscriptionChange" and event.get("SuppressSending") is True:
        status = _POSTMARK_SUPPRESSION.get(str(event.get("SuppressionReason")))
        if status is not None:
            reason = f"postmark suppression: {event.get('SuppressionReason')}"
            return _one(event.get("Recipient"), status, reason)
    return []


def sendgrid_suppressions(events: Any) -> list[Suppression]:
    """From one SendGrid Event Webhook payload (a JSON array of events)."""
    if not isinstance(events, list):
        raise Refused(400, "expected a JSON array of events")
    found: list[Suppression] = []
    for event in events:
        if not isinstance(event, dict):
            continue
        name, email = event.get("event"), event.get("email")
        reason = str(event.get("reason") or "")
        if name == "bounce" and event.get("type", "bounce") == "bounce":
            found += _one(email, BOUNCED, f"sendgrid bounce: {reason}")
        elif name == "spamreport":
            found += _one(email, COMPLAINED, "sendgrid spam report")
        elif name == "dropped" and reason.lower() in _SENDGRID_DROPPED:
            found += _one(email, _SENDGRID_DROPPED[reason.lower()], f"sendgrid dropped: {reason}")
    return found


def mailgun_suppressions(payload: Any) -> list[Suppression]:
    """From one Mailgun webhook payload (``{"signature": ..., "event-data": ...}``)."""
    data = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise Refused(400, "expected a JSON object with event-data")
    name, email = data.get("event"), data.get("recipient")
    if name == "complained":
        return _one(email, COMPLAINED, "mailgun complaint")
    if name == "failed" and data.get("severity") == "permanent":
        status = _MAILGUN_FAILED.get(str(data.get("reason")))
        if status is not None:
            delivery = data.get("delivery-status")
            text = ""
            if isinstance(delivery, dict):
                text = str(delivery.get("description") or delivery.get("message") or "")
            return _one(email, status, f"mailgun {data.get('reason')}: {text}")
    return []


def _one(email: Any, status: SubscriberStatus, reason: str) -> list[Suppression]:
    if not isinstance(email, str) or not email.strip():
        return []
    # The reason is the provider's text, stored and shown to the operator: one line, bounded
    # (PostgreSQL refuses a NUL outright).
    text = _CONTROL.sub(" ", reason).strip().rstrip(":")[:MAX_REASON_CHARS]
    return [Suppression(email.strip(), status, text)]


# --- checking who sent them ---------------------------------------------------------------------


def check_basic_auth(header: str | None, user: str, password: str) -> None:
    """Raise ``Refused`` (401) unless ``header`` is HTTP Basic with these credentials."""
    challenge = {"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'}
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        raise Refused(401, "credentials required", **challenge)
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise Refused(401, "malformed credentials", **challenge) from e
    given_user, _, given_password = given.partition(":")
    # Both compared, always: the time taken does not tell which one was wrong.
    ok_user = hmac.compare_digest(given_user.encode(), user.encode())
    ok_password = hmac.compare_digest(given_password.encode(), password.encode())
    if not (ok_user and ok_password):
        raise Refused(401, "wrong credentials", **challenge)


def _check_age(timestamp: str | None, now: float) -> int:
    # Checked as text first: int() takes signs, underscores and other scripts' digits, and a
    # 400-digit number cannot be compared with a float.
    text = str(timestamp).strip()
    if not _TIMESTAMP.fullmatch(text):
        raise Refused(403, "missing or malformed timestamp")
    when = int(text)
    if abs(now - when) > MAX_AGE_SECONDS:
        raise Refused(403, "stale timestamp")
    return when


@functools.lru_cache(maxsize=4)
def sendgrid_public_key(text: str) -> EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER) or as PEM.

    Raises ``ValueError`` when it is not an elliptic-curve public key, ``ImportError`` without
    the ``cryptography`` package.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as e:
            raise ValueError("not base64") from e
        key = serialization.load_der_public_key(der)
    if not isinstance(key, EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def check_sendgrid_signature(
    key: EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
) -> None:
    """Raise ``Refused`` (403) unless ``signature`` signs ``timestamp`` + ``body``, recently."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not signature:
        raise Refused(403, "missing signature")
    _check_age(timestamp, now)
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, str(timestamp).strip().encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature, ValueError) as e:
        raise Refused(403, "bad signature") from e


class MailgunTokens:
    """Checks Mailgun signatures and remembers accepted tokens in the database.

    A token is kept for twice ``MAX_AGE_SECONDS``: past its signed timestamp's window the age
    check refuses it anyway, and the margin covers processes whose clocks disagree a little.
    """

    PROVIDER = "mailgun"
    KEEP = timedelta(seconds=2 * MAX_AGE_SECONDS)

    def claim(self, storage: Storage, key: str, block: Any, *, now: datetime) -> str:
        """Check the ``signature`` block; reserve its token for every process on ``storage``.
        Raises ``Refused`` (403), or ``StorageError`` when the database cannot be used."""
        if not isinstance(block, dict):
            raise Refused(403, "missing signature")
        token, timestamp, signature = (
            str(block.get(k, "")) for k in ("token", "timestamp", "signature")
        )
        if not token or not signature:
            raise Refused(403, "missing signature")
        _check_age(timestamp, now.timestamp())
        # surrogatepass: parse_json refuses lone surrogates, but this must not depend on it.
        message = (timestamp + token).encode("utf-8", "surrogatepass")
        expected = hmac.new(key.encode(), message, hashlib.sha256)
        given = signature.strip().lower().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected.hexdigest().encode(), given):
            raise Refused(403, "bad signature")
        # Insert-or-ignore: of two requests with one token, on any process, one inserts.
        if not storage.remember_webhook_token(
            self.PROVIDER, token, expires_at=now + self.KEEP, now=now
        ):
            raise Refused(403, "replayed token")
        return token

    def release(self, storage: Storage, token: str) -> None:
        """Forget a token whose request failed on our side, so the provider's retry counts."""
        storage.forget_webhook_token(self.PROVIDER, token)


# --- the routes ----------------------------------------------------------------------------------


_KEYS = {
    "postmark_webhook_user_env": ("postmark", "webhook_user_env"),
    "postmark_webhook_password_env": ("postmark", "webhook_password_env"),
    "sendgrid_webhook_key_env": ("sendgrid", "webhook_key_env"),
    "mailgun_signing_key_env": ("mailgun", "webhook_signing_key_env"),
}


def _env(config: Config, key: str) -> tuple[str | None, str]:
    """The variable name a webhook key holds, and the key's path for messages."""
    provider, name = _KEYS[key]
    settings = config.mail.provider(provider)
    return (getattr(settings, name) if settings is not None else None), f"mail.{provider}.{name}"


def _secret(config: Config, key: str) -> str | None:
    """The secret held by the variable ``[mail.<provider>] <key>`` names: None when the key is
    not set (the webhook is off); ``Refused`` (503) when the variable is missing."""
    env, path = _env(config, key)
    if env is None:
        return None
    value = config.secret(env)
    if value is None:
        log.error("webhook refused: $%s (%s) is not set", env, path)
        raise Refused(503, "webhook not available")
    return value


def check_webhook_secrets(config: Config) -> None:
    """Raise ``ConfigError`` when a configured webhook's variable is unset or unusable
    (``newsletter serve`` checks at start, rather than refusing every request later)."""
    for key in _KEYS:
        env, path = _env(config, key)
        if env is not None and config.secret(env) is None:
            raise ConfigError(
                f"the environment variable ${env} is not set (it should hold the secret)",
                file=config.file,
                key=path,
            )
    key_env, path = _env(config, "sendgrid_webhook_key_env")
    if key_env is not None:
        try:
            sendgrid_public_key(config.secret(key_env) or "")
        except ImportError as e:
            raise ConfigError(
                "the SendGrid webhook needs the `cryptography` package (pip install cryptography)",
                file=config.file,
                key=path,
            ) from e
        except ValueError as e:
            raise ConfigError(
                f"${key_env} does not hold SendGrid's verification key (base64 or PEM): {e}",
                file=config.file,
                key=path,
            ) from e


class Webhooks:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.mailgun_tokens = MailgunTokens()

    async def postmark(self, request: Request) -> Response:
        async def check(publisher: Publisher) -> bool:
            user = _secret(publisher.config, "postmark_webhook_user_env")
            password = _secret(publisher.config, "postmark_webhook_password_env")
            if user is None or password is None:
                return False
            check_basic_auth(request.headers.get("authorization"), user, password)
            return True

        return await self._handle(request, "postmark", check, postmark_suppressions)

    async def sendgrid(self, request: Request) -> Response:
        async def check(publisher: Publisher) -> bool:
            text = _secret(publisher.config, "sendgrid_webhook_key_env")
            if text is None:
                return False
            try:
                key = sendgrid_public_key(text)
            except (ImportError, ValueError) as e:
                log.error("sendgrid webhook refused: unusable verification key: %s", e)
                raise Refused(503, "webhook not available") from e
            check_sendgrid_signature(
                key,
                await _body(request),
                request.headers.get(SENDGRID_SIGNATURE),
                request.headers.get(SENDGRID_TIMESTAMP),
                now=clock.now().timestamp(),
            )
            return True

        return await self._handle(request, "sendgrid", check, sendgrid_suppressions)

    async def mailgun(self, request: Request) -> Response:
        claimed: list[tuple[Storage, str]] = []

        async def check(publisher: Publisher) -> bool:
            key = _secret(publisher.config, "mailgun_signing_key_env")
            if key is None:
                return False
            payload = _json(await _body(request))
            block = payload.get("signature") if isinstance(payload, dict) else None
            storage = publisher.storage
            token = await run_in_threadpool(
                self.mailgun_tokens.claim, storage, key, block, now=clock.now()
            )
            claimed.append((storage, token))
            return True

        response = await self._handle(request, "mailgun", check, mailgun_suppressions)
        if claimed and response.status_code >= 500:
            storage, token = claimed[0]
            try:
                await run_in_threadpool(self.mailgun_tokens.release, storage, token)
            except NewsletterError as e:
                # The provider's retry will be refused as a replay: say so, for the operator.
                log.error("mailgun webhook: a failed request's token stays remembered: %s", e)
        return response

    async def _handle(
        self,
        request: Request,
        provider: str,
        check: Callable[[Publisher], Awaitable[bool]],
        read: Callable[[Any], list[Suppression]],
    ) -> Response:
        try:
            publisher = await run_in_threadpool(self.site.publisher)
            if not await check(publisher):
                return JSONResponse({"error": f"the {provider} webhook is not configured"}, 404)
            suppressions = read(_json(await _body(request)))
            changed, ignored = await run_in_threadpool(self._apply, suppressions)
        except Refused as e:
            if e.status_code in (401, 403):
                log.warning("%s webhook refused: %s", provider, e.message)
            return JSONResponse({"error": e.message}, e.status_code, headers=e.headers or None)
        except ClientDisconnect:
            return Response(status_code=400)
        except NewsletterError as e:
            log.error("%s webhook: %s", provider, e)
            return JSONResponse({"error": "temporarily unavailable"}, 503)
        if suppressions:
            log.info(
                "%s webhook: %d suppressed, %d already suppressed or unknown",
                provider,
                changed,
                ignored,
            )
        return JSONResponse({"suppressed": changed, "ignored": ignored})

    def _apply(self, suppressions: list[Suppression]) -> tuple[int, int]:
        publisher = self.site.publisher()
        changed = 0
        for item in suppressions:
            try:
                address = validate_address(item.email)
            except SubscriberError:
                continue
            changed += publisher.suppress(address, item.status, item.reason)
        return changed, len(suppressions) - changed


async def _body(request: Request) -> bytes:
    """The raw body, read once (the signature check and the parser both need it)."""
    cached: bytes | None = getattr(request.state, "raw_body", None)
    if cached is not None:
        return cached
    body = await read_limited(request, MAX_BODY_BYTES)
    if body is None:
        raise Refused(413, "request too large")
    request.state.raw_body = body
    return body


def _json(body: bytes) -> Any:
    try:
        return parse_json(body)
    except BadBody as e:
        raise Refused(400, e.reason) from e


def routes(site: Site) -> list[BaseRoute]:
    hooks = Webhooks(site)
    return [
        Route("/webhooks/postmark", hooks.postmark, methods=["POST"]),
        Route("/webhooks/sendgrid", hooks.sendgrid, methods=["POST"]),
        Route("/webhooks/mailgun", hooks.mailgun, methods=["POST"]),
    ]
