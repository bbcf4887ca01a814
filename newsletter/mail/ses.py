"""The Amazon SES backend: SES API v2 ``SendBulkEmail``, one inline template and up to 50
recipients per call, each request signed with AWS Signature Version 4 by botocore.

Owns: the payload of ``POST /v2/email/outbound-bulk-emails``, the Handlebars template the
digest becomes, the signing, the reading of SES's per-entry answers and errors, and the retries
SES needs beyond the other providers' (entries throttled inside an accepted call, 400
``ThrottlingException``). Does not own: the loop (``mail.base``), the checks every recipient
passes (``mail.message``), the SNS bounce webhook (``mail.ses_webhook``).

The contract, from the SES v2 API reference and the ``sesv2`` service model botocore ships
(``botocore.session.get_session().get_service_model("sesv2")``, operation ``SendBulkEmail``):

- https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendBulkEmail.html: ``POST
  https://email.<region>.amazonaws.com/v2/email/outbound-bulk-emails``, a JSON body with
  ``FromEmailAddress``, ``ReplyToAddresses``, ``DefaultContent.Template`` (``TemplateContent``
  ``{Subject, Text, Html}`` inline, so no stored template is ever left to clean up,
  ``TemplateData``, ``Headers`` shared by every message), ``BulkEmailEntries`` (at most 50, each
  with ``Destination.ToAddresses``, ``ReplacementEmailContent.ReplacementTemplate.
  ReplacementTemplateData``, a JSON string of at most 262,144 characters, and
  ``ReplacementHeaders``, which take precedence over the template's headers of the same name:
  API_BulkEmailEntry.html) and ``ConfigurationSetName``.
- The answer is 200 with ``BulkEmailEntryResults`` in request order, each ``{Status, Error,
  MessageId}`` (API_BulkEmailEntryResult.html). ``SUCCESS`` is accepted. ``ACCOUNT_THROTTLED``
  and ``TRANSIENT_FAILURE`` are passing: those entries alone are posted again after a backoff
  (never one that succeeded). Statuses about the account or its configuration
  (``ACCOUNT_SUSPENDED``, ``ACCOUNT_SENDING_PAUSED``, ``MAIL_FROM_DOMAIN_NOT_VERIFIED``,
  ``CONFIGURATION_SET_NOT_FOUND``, ...) hold for every message, so they stop the send with the
  batch's unsettled recipients back to pending, as Postmark's account error codes do;
  ``ACCOUNT_DAILY_QUOTA_EXCEEDED`` likewise, to be resumed by a later run. ``MESSAGE_REJECTED``,
  ``INVALID_PARAMETER`` and ``FAILED`` are that recipient's own failure, with SES's ``Error``.
- Errors (the model's error shapes, and CommonErrors.html): the code is in the
  ``x-amzn-ErrorType`` header or the body's ``__type``, the text in ``message``; botocore's
  rest-json parser reads both. 429 ``TooManyRequestsException``, 400 ``ThrottlingException``
  ("Maximum sending rate exceeded") and ``LimitExceededException`` and 5xx are retried with
  backoff (a refused call accepted nothing); "Daily message quota exceeded" stops the send
  (manage-sending-quotas-errors.html: wait, up to the next day). 401/403 (credentials,
  signature) and ``AccountSuspendedException``, ``SendingPausedException``,
  ``MailFromDomainNotVerifiedException``, ``NotFoundException`` (the configuration set) stop
  the send (``fatal``); ``MessageRejected`` and ``BadRequestException`` refuse the batch.
- Addresses (API_Destination.html): "Amazon SES does not support the SMTPUTF8 extension", so a
  local part must be 7-bit ASCII (a recipient with another one fails before sending), a
  non-ASCII domain is sent as IDNA (Punycode), and a display name with non-ASCII characters in
  RFC 2047 encoded words.
- Header fields (header-fields.html): SES overwrites a Message-ID and a Date, so neither is
  sent; SES's ``MessageId`` is each recipient's id. Header values are printable ASCII (the
  model's pattern), as ``mail.message`` makes the list headers.

Templates are Handlebars (send-personalized-email-api.html). Per-recipient values go in
triple-stash ``{{{nl_<name>}}}`` (raw for the text body, the HTML-escaped value under
``nl_html_<name>`` for the HTML body): double braces would HTML-escape the text body too. The
digest's own text must never read as Handlebars: an article titled ``{{ not a var }}`` would be
a helper call, and SES would drop every message with a rendering failure. Handlebars' inline
escape ``\\{{`` only covers text up to the next ``{{``, so instead every brace or backslash
that would start or touch a mustache is written as a variable holding that character
(``{{{nl_lb}}}`` for ``{``, ``{{{nl_rb}}}`` for ``}``, ``{{{nl_bs}}}`` for ``\\``): plain
substitution, which every Handlebars implementation does alike.

Retries are decided here, not by urllib3 as for the other providers: each attempt must be
signed again (a SigV4 signature is dated; one retried by urllib3 after a long ``Retry-After``
would be refused as expired), and SES needs the same backoff for 400 ``ThrottlingException``
and for throttled entries inside a 200 answer. The waits end at once when the send is asked to
stop. SES has no idempotency key: a lost answer leaves the batch uncertain, including a re-post
of throttled entries (the loop has no partly uncertain batch; at most once comes first).

Credentials come from botocore's standard chain, as AWS users expect (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN``, the shared credentials and config files,
``[mail.ses] profile``, container and instance roles), and are refreshed by botocore when they
expire. botocore is the ``ses`` extra: this module imports it only when SES is used.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from email.utils import formataddr, parseaddr
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import idna
import requests

from newsletter.exceptions import ConfigError, MailError
from newsletter.mail.base import Batch, PreparedContent, failed_result, sent_result
from newsletter.mail.http import (
    RETRY_STATUSES,
    Entry,
    HttpBackend,
    HttpClient,
    HttpProviderSettings,
    in_order,
    substitutions,
)
from newsletter.mail.message import list_headers
from newsletter.text import clean_line
from newsletter.types import DeliveryResult, Recipient

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from botocore.model import OperationModel

    from newsletter.config import Config, Table
    from newsletter.personalize import Template

log = logging.getLogger(__name__)

OPERATION = "SendBulkEmail"
ENDPOINT = "/v2/email/outbound-bulk-emails"
MAX_ENTRIES = 50
MAX_TEMPLATE_DATA = 262_144  # characters of ReplacementTemplateData (the model's max)
# An AWS region name: us-east-1, eu-central-1, ap-southeast-2, us-gov-west-1, cn-north-1.
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
INSTALL_HINT = "pip install 'newsletter[ses]'"

# Entry statuses (the model's BulkEmailStatus enum; see the module docstring).
SUCCESS = "SUCCESS"
PASSING = frozenset({"ACCOUNT_THROTTLED", "TRANSIENT_FAILURE"})
ACCOUNT_STOPS = frozenset(
    {
        "ACCOUNT_SUSPENDED",
        "ACCOUNT_SENDING_PAUSED",
        "CONFIGURATION_SET_SENDING_PAUSED",
        "CONFIGURATION_SET_NOT_FOUND",
        "MAIL_FROM_DOMAIN_NOT_VERIFIED",
        "INVALID_SENDING_POOL_NAME",
        "TEMPLATE_NOT_FOUND",
    }
)
QUOTA_STOP = "ACCOUNT_DAILY_QUOTA_EXCEEDED"
# Error codes of a refused call (the operation's error shapes, CommonErrors.html).
THROTTLING = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "LimitExceededException"}
)
STOPPING = frozenset(
    {
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
    }
)
DAILY_QUOTA = "daily message quota exceeded"

# Template variables: a recipient's values, and the characters that must not read as syntax.
TEXT_VAR = "nl_{}".format
HTML_VAR = "nl_html_{}".format
ESCAPES = {"nl_lb": "{", "nl_rb": "}", "nl_bs": "\\"}
LB, RB, BS = ("{{{" + name + "}}}" for name in ESCAPES)


def _mustache(name: str) -> str:
    return "{{{" + name + "}}}"


# --- settings ------------------------------------------------------------------------------

# SNS signs its messages with a certificate it serves from its own hosts, and confirms a
# subscription at a URL on them (the webhook in ``mail.ses_webhook`` reads these).
SNS_CERTIFICATE_URL = (
    r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/SimpleNotificationService-[0-9a-f]+\.pem$"
)
SNS_SUBSCRIBE_URL = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
TOPIC_ARN = re.compile(r"arn:aws(-cn|-us-gov)?:sns:[a-z]{2}(-[a-z]+)+-\d{1,2}:\d{12}:[\w-]{1,256}")
# "The name can contain only ASCII letters, numbers, underscores and hyphens", up to 64.
CONFIGURATION_SET = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class SESSettings(HttpProviderSettings):
    """``[mail.ses]``: where and how to call SES, and the SNS topics its bounce and complaint
    notifications arrive from (the webhook is served only when ``sns_topic_arns`` is set).

    ``region`` None: the region botocore's chain finds (``AWS_DEFAULT_REGION``, the profile).
    ``token_env`` is refused: SES signs with AWS credentials, found by botocore's chain."""

    token_required: ClassVar[bool] = False

    region: str | None = None
    configuration_set: str | None = None
    profile: str | None = None
    sns_topic_arns: tuple[str, ...] = ()
    sns_certificate_url_pattern: str = SNS_CERTIFICATE_URL
    sns_subscribe_url_pattern: str = SNS_SUBSCRIBE_URL

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        """The settings in ``t``; nothing is required (the AWS chain supplies the rest)."""
        common = cls.parse_common(t, selected)
        if common["token_env"] is not None:
            raise t.error(
                "token_env",
                "SES takes no token: it signs with the AWS credentials of the environment, "
                "the shared files or `profile`",
            )
        region = t.text("region", None)
        if region is not None and not REGION.fullmatch(region):
            raise t.error("region", f"expected an AWS region such as us-east-1, got {region!r}")
        configuration_set = t.text("configuration_set", None)
        if configuration_set is not None and not CONFIGURATION_SET.fullmatch(configuration_set):
            raise t.error(
                "configuration_set",
                "expected up to 64 ASCII letters, digits, underscores and hyphens, "
                f"got {configuration_set!r}",
            )
        arns = t.get("sns_topic_arns", list, [], "a list of SNS topic ARNs")
        for arn in arns:
            if not isinstance(arn, str) or not TOPIC_ARN.fullmatch(arn):
                raise t.error(
                    "sns_topic_arns",
                    f"expected SNS topic ARNs (arn:aws:sns:<region>:<account>:<name>), got {arn!r}",
                )
        patterns = {}
        for key, default in (
            ("sns_certificate_url_pattern", SNS_CERTIFICATE_URL),
            ("sns_subscribe_url_pattern", SNS_SUBSCRIBE_URL),
        ):
            patterns[key] = t.text(key, default)
            try:
                re.compile(patterns[key])
            except re.error as e:
                raise t.error(key, f"not a regular expression: {e}") from None
        return cls(
            **common,
            region=region,
            configuration_set=configuration_set,
            profile=t.text("profile", None),
            sns_topic_arns=tuple(arns),
            **patterns,
        )


def default_base_url(region: str) -> str:
    """SES v2's endpoint in ``region`` (the China regions are under amazonaws.com.cn)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://email.{region}.{suffix}"


# --- botocore, imported on first use ------------------------------------------------------


def _require_botocore() -> None:
    try:
        import botocore  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"the ses mail backend needs botocore: {INSTALL_HINT}", key="mail.backend"
        ) from e


@cache
def operation_model() -> OperationModel:
    """The ``SendBulkEmail`` operation of the ``sesv2`` model botocore ships (loaded once)."""
    _require_botocore()
    import botocore.session

    return botocore.session.get_session().get_service_model("sesv2").operation_model(OPERATION)


class AwsSetup(NamedTuple):
    credentials: Credentials | None
    region: str | None


def aws_setup(profile: str | None = None) -> AwsSetup:
    """The credentials and region botocore's standard chain finds (environment, shared files,
    ``profile``, roles); either may be None. Raises ``ConfigError`` for an unknown profile."""
    _require_botocore()
    import botocore.exceptions
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        return AwsSetup(session.get_credentials(), session.get_config_variable("region"))
    except botocore.exceptions.ProfileNotFound as e:
        raise ConfigError(str(e), key="mail.ses.profile") from e
    except botocore.exceptions.BotoCoreError as e:
        raise ConfigError(f"cannot read the AWS credentials: {e}", key="mail.ses") from e


class SigV4(requests.auth.AuthBase):
    """Signs each request, every attempt anew, with botocore's ``SigV4Auth`` for ``ses``.

    Signed: Content-Type, Host and X-Amz-Date (X-Amz-Security-Token with temporary
    credentials). The frozen copy of the credentials is taken per request, as botocore's own
    ``RequestSigner`` does, so that a refresh between two reads cannot mix two key pairs."""

    def __init__(self, credentials: Credentials, region: str) -> None:
        self.credentials = credentials
        self.region = region

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        body = r.body.encode() if isinstance(r.body, str) else (r.body or b"")
        signed = AWSRequest(
            method=r.method,
            url=r.url,
            data=body,
            headers={"Content-Type": r.headers.get("Content-Type", "application/json")},
        )
        frozen = self.credentials.get_frozen_credentials()
        SigV4Auth(frozen, "ses", self.region).add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in signed.headers:
                r.headers[name] = signed.headers[name]
        return r


# --- the backend ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One entry of ``BulkEmailEntryResults``."""

    status: str
    error: str
    message_id: str | None


class SESBackend(
    HttpBackend, settings=SESSettings, webhook="newsletter.mail.ses_webhook:SESWebhook"
):
    name = "ses"
    label = "Amazon SES"
    max_batch_size = MAX_ENTRIES
    idempotent = False  # SES has no idempotency key: a lost answer leaves a batch uncertain
    endpoint = ENDPOINT
    # The template content and its data are shared; no documented limit per call beyond the
    # 40 MB per message, which a digest does not approach.
    max_request_bytes: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        credentials: Credentials,
        region: str,
        configuration_set: str | None = None,
        base_url: str | None = None,
        **options: Any,
    ) -> None:
        if not REGION.fullmatch(region):
            raise ValueError(f"invalid AWS region {region!r}")
        # SES takes no token: every request is signed with the credentials instead.
        super().__init__("sigv4", base_url=base_url or default_base_url(region), **options)
        self.credentials = credentials
        self.region = region
        self.configuration_set = configuration_set

    @classmethod
    def from_config(cls, config: Config) -> Self:
        cls.check_batch_size(config)
        settings: SESSettings = cls.settings(config)
        try:
            found = aws_setup(settings.profile)
        except ConfigError as e:
            raise ConfigError(e.message, file=config.file, key=e.key) from e
        region = settings.region or found.region
        if region is None:
            raise ConfigError(
                "no AWS region: set region here, AWS_DEFAULT_REGION, or a profile's region",
                file=config.file,
                key="mail.ses.region",
            )
        if not REGION.fullmatch(region):
            raise ConfigError(
                f"the AWS chain's region {region!r} is not a region name",
                file=config.file,
                key="mail.ses.region",
            )
        if found.credentials is None:
            raise ConfigError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "write them to ~/.aws/credentials (or name a `profile`), or run with an IAM role",
                file=config.file,
                key="mail.ses",
            )
        return cls(
            credentials=found.credentials,
            region=region,
            configuration_set=settings.configuration_set,
            **cls.http_options(config),
            **cls.common_options(config),
        )

    def describe(self) -> str:
        where = f"{self.base_url}, region {self.region}"
        if self.configuration_set:
            where += f", configuration set {self.configuration_set}"
        return f"{self.name} ({where})"

    def open(self) -> bool:
        # No retries inside urllib3 (see the module docstring): ``_deliver`` retries, signing
        # every attempt anew.
        self.client = HttpClient(
            backend=self.name,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,
            idempotent=self.idempotent,
            pool_size=self.concurrency,
            backoff_factor=self.backoff_factor,
            stopping=self.stopping,
        )
        self.client.session.auth = SigV4(self.credentials, self.region)
        return True

    # --- the payload ---------------------------------------------------------------------

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        """The template's ``send_batch``, for addresses SES can carry: a recipient whose local
        part is not 7-bit fails here, one with a non-ASCII domain goes through the checks and
        out under its IDNA form. Results keep each recipient's address as given."""
        if all(r.email.isascii() for r in batch.recipients):
            return super().send_batch(content, batch)
        given = {r.subscriber_id: r.email for r in batch.recipients}
        settled: dict[int, DeliveryResult] = {}
        kept: list[tuple[int, Recipient]] = []
        for i, r in enumerate(batch.recipients):
            try:
                kept.append((i, replace(r, email=self._ascii(r.email))))
            except MailError as e:
                log.warning("not sent: %s", e)
                settled[i] = failed_result(r, str(e))

        def restore(result: DeliveryResult) -> DeliveryResult:
            return replace(result, email=given[result.subscriber_id])

        if kept:
            try:
                inner = super().send_batch(
                    content, replace(batch, recipients=tuple(r for _, r in kept))
                )
            except MailError as e:
                raise self._with_settled(
                    e, [*settled.values(), *map(restore, e.delivered)], always=True
                ) from e
            for (i, _), result in zip(kept, inner, strict=True):
                settled[i] = restore(result)
        return in_order(settled, len(batch))

    def build_part(self, content: PreparedContent, recipient: Recipient) -> dict[str, Any]:
        """The recipient's ``BulkEmailEntry``: address, template data, List-Unsubscribe."""
        values = recipient.values
        data = substitutions(content, values, text=TEXT_VAR, html=HTML_VAR) | ESCAPES
        encoded = json.dumps(data, ensure_ascii=False)
        if len(encoded) > MAX_TEMPLATE_DATA:
            raise self.over_limit(
                "the recipient's template data is", len(encoded), "entry", MAX_TEMPLATE_DATA
            )
        # The list headers every recipient shares are the template's; only this one differs.
        unsubscribe = dict(list_headers(content.content, values["unsubscribe_url"]))
        return {
            "Destination": {"ToAddresses": [self._address(recipient.name, recipient.email)]},
            "ReplacementEmailContent": {
                "ReplacementTemplate": {"ReplacementTemplateData": encoded}
            },
            "ReplacementHeaders": [
                {"Name": "List-Unsubscribe", "Value": unsubscribe["List-Unsubscribe"]}
            ],
        }

    def payload(self, content: PreparedContent, batch: Batch, entries: Sequence[Entry]) -> bytes:
        shared: tuple[bytes, bytes] = content.once(self.name, lambda: self._shared(content))
        head, tail = shared
        return head + json.dumps([e.part for e in entries], ensure_ascii=False).encode() + tail

    def _shared(self, content: PreparedContent) -> tuple[bytes, bytes]:
        """The request body around the entries, encoded once per digest."""
        shared = content.content
        # List-Unsubscribe is each entry's own (ReplacementHeaders take precedence); the rest
        # of the list headers are the same for everyone.
        headers = [
            {"Name": name, "Value": value}
            for name, value in list_headers(shared, "https://unused.invalid/")
            if name != "List-Unsubscribe"
        ]
        payload: dict[str, Any] = {
            "BulkEmailEntries": None,
            "FromEmailAddress": self._header_address(shared.from_addr, "the sender"),
            "DefaultContent": {
                "Template": {
                    "TemplateContent": {
                        "Subject": handlebars([shared.subject], []),
                        "Text": _convert(content.text, TEXT_VAR),
                        "Html": _convert(content.html, HTML_VAR),
                    },
                    "TemplateData": json.dumps(ESCAPES),
                    "Headers": headers,
                }
            },
        }
        if shared.reply_to:
            payload["ReplyToAddresses"] = [self._header_address(shared.reply_to, "Reply-To")]
        if self.configuration_set:
            payload["ConfigurationSetName"] = self.configuration_set
        encoded = json.dumps(payload, ensure_ascii=False).encode()
        head, _, tail = encoded.partition(b"null")  # "BulkEmailEntries" is the first key
        return head, tail

    def _address(self, name: str | None, address: str) -> str:
        """``address`` as SES takes it, with an RFC 2047 name. Raises ``MailError`` as
        ``_ascii`` does."""
        return formataddr((clean_line(name or ""), self._ascii(address)), charset="utf-8")

    def _ascii(self, address: str) -> str:
        """``address`` with a 7-bit local part and its domain in IDNA. Raises ``MailError`` for
        a local part SES cannot carry."""
        local, _, domain = address.rpartition("@")
        if not local.isascii():
            raise MailError(
                f"SES cannot send to {address!r}: it has no SMTPUTF8, so the part before the "
                "@ must be 7-bit ASCII",
                backend=self.name,
            )
        if not domain.isascii():
            try:
                domain = idna.encode(domain, uts46=True).decode()
            except idna.IDNAError as e:
                raise MailError(f"invalid domain in {address!r}: {e}", backend=self.name) from e
        return f"{local}@{domain}"

    def _header_address(self, value: str, what: str) -> str:
        name, address = parseaddr(value)
        try:
            return self._address(name, address)
        except MailError as e:
            # The sender or Reply-To is every message's: nothing can be sent.
            raise MailError(f"{what}: {e.message}", backend=self.name, fatal=True) from e

    # --- sending and reading the answers -------------------------------------------------

    def _deliver(
        self,
        content: PreparedContent,
        batch: Batch,
        entries: Sequence[Entry],
        results: dict[int, DeliveryResult],
    ) -> None:
        """Post ``entries``; post again, after a backoff, those SES throttled or failed
        transiently, and the whole call when SES refused it for throttling. Bounded by
        ``max_retries``. Raises ``MailError`` as the template expects, with the recipients
        settled so far as ``delivered`` when the send must stop."""
        pending = list(entries)
        attempt = 0
        while True:
            reason = self._attempt(content, batch, pending, results)
            if reason is None:
                return
            pending = [e for e in pending if e.index not in results]
            attempt += 1
            if attempt > self.max_retries:
                raise self._stop(
                    f"{reason}; still so after {attempt} tries, {len(pending)} recipients left "
                    "for a later run",
                    results.values(),
                    retryable=True,
                )
            delay = min(30.0, self.backoff_factor * 2 ** (attempt - 1))
            delay += random.uniform(0, self.backoff_factor)  # jitter, not a secret
            log.info(
                "%s: %s; trying %d recipients again in %.2f s",
                self.name,
                reason,
                len(pending),
                delay,
            )
            if self.stopping.wait(delay):
                raise self._stop("stopping, not retried", results.values(), retryable=True)

    def _attempt(
        self,
        content: PreparedContent,
        batch: Batch,
        pending: Sequence[Entry],
        results: dict[int, DeliveryResult],
    ) -> str | None:
        """One call for ``pending``: settled ones go into ``results``. Returns why some must be
        posted again (None: all settled); raises ``MailError`` as ``_deliver`` does."""
        try:
            response = self.post(self.payload(content, batch, pending))
        except MailError as e:
            if e.retryable and not e.uncertain:
                return str(e)  # the call never reached SES (connection refused)
            raise self._with_settled(e, results.values()) from e
        if 200 <= response.status_code < 300:
            answers = self.read_answer(response, lambda body: _answers(body, len(pending)))
            return self._settle(pending, answers, results)
        code, message = _error(response)
        status = response.status_code
        if DAILY_QUOTA in message.lower():
            raise self._stop(f"{message} ({code})", results.values(), status=status, retryable=True)
        if code in THROTTLING or status in RETRY_STATUSES:
            return f"{code or 'HTTP ' + str(status)}: {message}"
        raise self._with_settled(self._refusal(response, code, message), results.values())

    def _settle(
        self,
        pending: Sequence[Entry],
        answers: Sequence[Answer],
        results: dict[int, DeliveryResult],
    ) -> str | None:
        passing: list[str] = []
        stop: Answer | None = None
        for entry, answer in zip(pending, answers, strict=True):
            if answer.status == SUCCESS:
                results[entry.index] = sent_result(entry.recipient, answer.message_id)
            elif answer.status in PASSING:
                passing.append(answer.status)
            elif answer.status in ACCOUNT_STOPS or answer.status == QUOTA_STOP:
                stop = stop or answer
            else:
                results[entry.index] = failed_result(entry.recipient, _reason(self.name, answer))
        if stop is not None:
            # Every message of every batch would get the same answer: stop, keep the rest.
            raise self._stop(
                "the account or its configuration cannot send",
                results.values(),
                provider_message=f"{stop.error} ({stop.status})",
                retryable=stop.status == QUOTA_STOP,
                fatal=stop.status != QUOTA_STOP,
            )
        if passing:
            return f"SES answered {', '.join(sorted(set(passing)))} for {len(passing)} recipients"
        return None

    def parse(
        self, response: requests.Response, entries: Sequence[Entry]
    ) -> dict[int, DeliveryResult]:
        """One answer read on its own, without retries: an entry not SUCCESS is FAILED with
        SES's status and error (``_deliver`` posts the passing ones again instead)."""
        answers = self.read_answer(response, lambda body: _answers(body, len(entries)))
        return {
            entry.index: sent_result(entry.recipient, answer.message_id)
            if answer.status == SUCCESS
            else failed_result(entry.recipient, _reason(self.name, answer))
            for entry, answer in zip(entries, answers, strict=True)
        }

    def refusal(self, response: requests.Response) -> MailError:
        code, message = _error(response)
        return self._refusal(response, code, message)

    def _refusal(self, response: requests.Response, code: str, message: str) -> MailError:
        text = f"{message} ({code})" if code else message
        if code in STOPPING or code in THROTTLING:
            stops = code in STOPPING  # else throttled still: a later run may send
            return MailError(
                "the account or its configuration cannot send"
                if stops
                else "SES is throttling this account (retries exhausted)",
                backend=self.name,
                status=response.status_code,
                provider_message=text,
                fatal=stops,
                retryable=not stops,
            )
        # 401/403: fatal; 5xx: retryable; MessageRejected, BadRequestException: the batch.
        return self.http.refusal(response, text)

    def _stop(
        self,
        message: str,
        settled: Iterable[DeliveryResult],
        *,
        status: int | None = None,
        provider_message: str | None = None,
        retryable: bool = False,
        fatal: bool = False,
        uncertain: bool = False,
    ) -> MailError:
        """The ``MailError`` that ends this batch, carrying the recipients already settled
        (recorded by the loop; the rest go back to pending)."""
        return MailError(
            message,
            backend=self.name,
            status=status,
            provider_message=provider_message,
            retryable=retryable,
            fatal=fatal,
            uncertain=uncertain,
            delivered=list(settled),
        )

    def _with_settled(
        self, error: MailError, settled: Iterable[DeliveryResult], *, always: bool = False
    ) -> MailError:
        """``error`` carrying the recipients settled by earlier calls of this batch, so that a
        send that stops keeps them (an uncertain or refused batch does not need them: the loop
        marks it whole, and the template keeps settled results of a refused one). ``always``:
        ``settled`` replaces what ``error`` carries, whatever its kind."""
        delivered = list(settled)
        if not always and (
            not (error.retryable or error.fatal) or error.uncertain or not delivered
        ):
            return error
        return self._stop(
            error.message,
            delivered,
            status=error.status,
            provider_message=error.provider_message,
            retryable=error.retryable,
            fatal=error.fatal,
            uncertain=error.uncertain,
        )


def _answers(body: Any, count: int) -> list[Answer]:
    results = body["BulkEmailEntryResults"]
    if not isinstance(results, list) or len(results) != count:
        raise ValueError(f"expected {count} BulkEmailEntryResults")
    return [
        Answer(str(r["Status"]), str(r.get("Error") or ""), r.get("MessageId") or None)
        for r in results
    ]


def _reason(backend: str, answer: Answer) -> str:
    return f"{backend}: {answer.error or 'refused'} ({answer.status})"


def _error(response: requests.Response) -> tuple[str, str]:
    """SES's ``(code, message)`` for a refused call, read by botocore's rest-json parser (the
    code is in the x-amzn-ErrorType header or the body)."""
    from botocore.parsers import create_parser

    shape = operation_model().output_shape
    if shape is None:  # the model gives SendBulkEmail an output; a botocore without it is broken
        raise MailError("botocore's sesv2 model has no SendBulkEmail output", backend="ses")
    parsed = create_parser("rest-json").parse(
        {
            "status_code": response.status_code,
            "headers": response.headers,  # case-insensitive, as botocore expects
            "body": response.content,
        },
        shape,
    )
    error = parsed.get("Error", {})
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "") or response.reason or ""
    # botocore names an error without a code by its status ("429"); keep only real codes.
    return ("" if code.isdigit() else code), message[:500]


# --- the template --------------------------------------------------------------------------


def _convert(template: Template, variable: Any) -> str:
    return handlebars(template.literals, [_mustache(variable(n)) for n in template.names])


def handlebars(literals: Sequence[str], mustaches: Sequence[str]) -> str:
    """Literal text and mustaches, interleaved (``literals`` one longer), as a Handlebars
    template in which every literal renders as itself (see the module docstring).

    A ``{`` before a ``{``, a ``\\`` before a ``{{`` (in what is written, so a mustache
    counts) and a ``}`` right after a mustache are written as mustaches of variables holding
    them."""
    out: list[str] = []
    for i, literal in enumerate(literals):
        if i > 0 and literal.startswith("}"):
            stripped = literal.lstrip("}")
            out.append(RB * (len(literal) - len(stripped)))
            literal = stripped
        after = mustaches[i] if i < len(mustaches) else ""
        out.append(_escape(literal, after))
        out.append(after)
    return "".join(out)


def _escape(literal: str, after: str) -> str:
    """``literal`` with its ``{`` and ``\\`` escaped, given what is written after it.
    Right to left, since whether a character opens a mustache depends on what follows it as
    written (an escaped ``\\`` itself starts with ``{{``)."""
    if "{" not in literal and not (after and literal.endswith("\\")):
        return literal  # the common case: nothing can open a mustache
    pieces: list[str] = []
    following = after[:2]
    for char in reversed(literal):
        if char == "{" and following.startswith("{"):
            piece = LB
        elif char == "\\" and following.startswith("{{"):
            piece = BS
        else:
            piece = char
        pieces.append(piece)
        following = (piece + following)[:2]
    return "".join(reversed(pieces))
