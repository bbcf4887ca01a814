"""The SMTP backend: each recipient's message handed to a relay (a submission server) by smtplib.

Owns: opening a connection the way ``[mail] security`` says (``"tls"``: implicit TLS, RFC 8314;
``"starttls"``: RFC 3207; ``"none"``: plain text), certificate and host name checks, AUTH, one
connection per worker thread reused for every batch that thread sends, the SMTP transaction of
each message, and turning SMTP replies into a result per recipient, or a ``MailError`` for the
batch. Does not own: the loop (``MailBackend.send``) or the message (``build_message``).

Each message is its own transaction (MAIL, RCPT, DATA): every recipient gets a personalized
message, so nothing is gained by grouping recipients. The transaction is driven step by step
rather than through ``sendmail`` so that the backend knows *where* a connection was lost:

- before DATA (MAIL FROM, RCPT TO, or a 421 reply: the server is closing, RFC 5321 3.8), the
  server accepted nothing. This is what a reused connection that the server closed while idle
  looks like, so the backend reconnects and sends that message again, once;
- inside DATA (the message went out, no reply came back), the server may have accepted it.
  That message is *uncertain* and is never sent again by this backend.

A recipient refused at RCPT (5xx, or 4xx: "temporary") or a message refused at DATA is a FAILED
result with the server's code and text; the other recipients of the batch go on. Failing to
connect is ``retryable``; bad credentials, an untrusted certificate or a missing extension
(STARTTLS, AUTH) are ``fatal``; the sender refused at MAIL FROM is ``retryable`` (4xx) or
``fatal`` (5xx). Connecting is retried ``max_retries`` times with exponential backoff, as the
HTTP backends retry connection errors.

A connection lost in the middle of a batch. The loop settles a batch as a whole: it records a
result for every recipient, or keeps the whole batch in flight (``uncertain``), or puts the
whole batch back to pending (``retryable``/``fatal``). It cannot record some recipients and
re-queue the rest. So, after a lost connection the backend first reconnects and carries on with
the rest of the batch; a message lost inside DATA is reported FAILED with a reason that says it
may have been delivered. Only when the connection cannot be re-opened (or the sender is refused)
does the batch end early, and then the rule is at-most-once first, precision second:

- no message of the batch was accepted, none may have been: the ``MailError`` is raised and the
  batch goes back to pending. Nothing was delivered, so re-sending it later is exact;
- none was accepted but one may have been: ``MailError(uncertain=True)``, the batch stays in
  flight. Only ``newsletter send --resend-uncertain`` sends it again, and the error names the
  message that may then arrive twice;
- some were accepted: their SENT results must be recorded (re-queuing would deliver them twice),
  so results are returned: accepted ones SENT, the uncertain one FAILED ("uncertain: ..."), and
  the ones not attempted FAILED ("not sent: ..."), each reason saying what happened.

The last case trades a few lost deliveries (visible, with their reason) for never sending a
message twice; the batch size bounds how many recipients it can touch.
"""

from __future__ import annotations

import ipaddress
import logging
import smtplib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from newsletter import clock
from newsletter.exceptions import ConfigError, MailError
from newsletter.mail.base import (
    BackendSettings,
    Batch,
    MailBackend,
    PreparedContent,
    failed_result,
    sent_result,
)
from newsletter.mail.message import build_message
from newsletter.types import DeliveryResult, DeliveryStatus, Recipient

if TYPE_CHECKING:
    from newsletter.config import Config, Table

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}  # RFC 6409, RFC 8314, RFC 5321
MAX_BACKOFF = 30.0  # seconds between two connection attempts, at most

UNCERTAIN = (
    "uncertain: the connection was lost after the message was sent (DATA) and before the "
    "server confirmed it; it may have been delivered, so it is not sent again"
)


class _ConnectionLost(Exception):
    """The connection broke during a transaction. ``after_data``: the message had gone out."""

    def __init__(self, reason: str, *, after_data: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_data = after_data


@dataclass(frozen=True)
class SMTPSettings(BackendSettings):
    """``[mail.smtp]``."""

    host: str | None = None
    port: int | None = None  # None: 587 for starttls, 465 for tls, 25 for none
    security: str = "starttls"  # one of DEFAULT_PORTS
    username: str | None = None  # SMTP AUTH
    password_env: str | None = None  # SMTP AUTH: NAME of the variable holding the password
    ca_file: Path | None = None  # trust this CA bundle (a private or test CA)
    timeout: float = 30.0  # seconds per connection and command
    max_retries: int = 5  # for 4xx answers and dropped connections

    @classmethod
    def parse(cls, t: Table, *, selected: bool) -> Self:
        t.allow(
            "host",
            "port",
            "security",
            "username",
            "password_env",
            "ca_file",
            "timeout",
            "max_retries",
        )
        if selected:
            t.require("host")
        security = t.text("security", "starttls")
        if security not in DEFAULT_PORTS:
            raise t.error(
                "security", f"expected one of {', '.join(DEFAULT_PORTS)}, got {security!r}"
            )
        settings = cls(
            host=t.text("host", None),
            port=t.number("port", None, minimum=1, maximum=65535, integer=True),
            security=security,
            username=t.text("username", None),
            password_env=t.env_name("password_env"),
            ca_file=t.path_value("ca_file", None),
            timeout=float(t.number("timeout", 30.0, minimum=0.1, maximum=3600)),
            max_retries=t.number("max_retries", 5, minimum=0, maximum=100, integer=True),
        )
        if settings.password_env and not settings.username:
            raise t.error("username", "is required when password_env is set")
        if settings.host is not None:
            problem = _plain_auth_problem(settings.host, security, settings.username)
            if problem is not None:
                raise t.error("security", problem)
        if settings.ca_file is not None and security == "none":
            raise t.error("ca_file", 'is only used when security is "starttls" or "tls"')
        return settings


class SMTPBackend(MailBackend, settings=SMTPSettings):
    name = "smtp"
    # A batch is only bookkeeping here (SMTP sends one message per transaction): the ledger
    # claims and records it in two database transactions, negligible next to 100 SMTP
    # transactions. Larger batches gain nothing and widen what one connection lost mid-batch
    # can affect (see the module docstring).
    max_batch_size = 100
    idempotent = False  # SMTP has no idempotency key: a message sent twice arrives twice

    def __init__(
        self,
        host: str,
        *,
        port: int | None = None,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry_backoff: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if security not in DEFAULT_PORTS:
            raise ValueError(f"security must be one of {', '.join(DEFAULT_PORTS)}")
        if username is not None and password is None:
            raise ValueError("a username needs a password")
        problem = _plain_auth_problem(host, security, username)
        if problem is not None:
            raise ValueError(problem)
        if username is not None and security == "none":
            log.warning(
                'SMTP AUTH to %s goes over plain text (security = "none"); '
                "acceptable only because the host is this machine",
                host,
            )
        self.host = host
        self.port = port or DEFAULT_PORTS[security]
        self.security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.ssl_context: ssl.SSLContext | None = None
        if security != "none":
            # The system's trust store, or only ``ca_file`` when one is given (a private CA);
            # certificate and host name are checked either way (the defaults of this context).
            self.ssl_context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None
            )
        # One connection per worker thread, keyed by thread id so that ``close`` (called on
        # another thread once the workers are done) can reach all of them.
        self._connections: dict[int, smtplib.SMTP] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Self:
        cls.check_batch_size(config)
        smtp: SMTPSettings = cls.settings(config)  # checked by SMTPSettings.parse
        if smtp.host is None:
            raise ConfigError("is required", file=config.file, key="mail.smtp.host")
        password = cls.secret(config, "password_env") if smtp.username else None
        try:
            return cls(
                smtp.host,
                port=smtp.port,
                security=smtp.security,
                username=smtp.username,
                password=password,
                ca_file=smtp.ca_file,
                timeout=smtp.timeout,
                max_retries=smtp.max_retries,
                **cls.common_options(config),
            )
        except OSError as e:  # only the CA bundle is read here (ssl.SSLError is an OSError)
            raise ConfigError(
                f"cannot load the CA bundle {str(smtp.ca_file)!r}: {e}",
                file=config.file,
                key="mail.smtp.ca_file",
            ) from e

    def describe(self) -> str:
        return f"{self.name} ({self.host}:{self.port}, {self.security})"

    # --- connections -----------------------------------------------------------------------------

    def open(self) -> bool:
        # Connections are opened lazily, by the worker thread that uses them.
        return True

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for conn in connections:
            _quit(conn)

    def _connection(self) -> smtplib.SMTP:
        """This thread's connection, opened on first use."""
        ident = threading.get_ident()
        with self._lock:
            conn = self._connections.get(ident)
        if conn is None:
            conn = self._open_with_retries()
            with self._lock:
                self._connections[ident] = conn
        return conn

    def _discard(self) -> None:
        """Forget this thread's connection (it broke); the next message opens a new one."""
        with self._lock:
            conn = self._connections.pop(threading.get_ident(), None)
        if conn is not None:
            conn.close()

    def _open_with_retries(self) -> smtplib.SMTP:
        attempt = 0
        while True:
            try:
                return self._open()
            except MailError as e:
                if not e.retryable or attempt >= self.max_retries:
                    raise
                delay = min(self.retry_backoff * 2**attempt, MAX_BACKOFF)
                log.warning("%s; trying again in %.1f s", e, delay)
                if self.stopping.wait(delay):  # asked to stop: give the batch back
                    raise
                attempt += 1

    def _open(self) -> smtplib.SMTP:
        """A connection ready for MAIL FROM: greeted, encrypted as configured, authenticated."""
        where = f"{self.host}:{self.port}"
        # The host goes to the constructor, not to connect(): smtplib takes the name that the
        # certificate must match (server_hostname) from there, for SMTP_SSL and starttls alike.
        try:
            conn = (
                smtplib.SMTP_SSL(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
                if self.security == "tls"
                else smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            )
        except OSError as e:  # smtplib.SMTPConnectError (a greeting other than 220) included
            raise self._connect_error(where, e) from e
        try:
            conn.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                conn.starttls(context=self.ssl_context)
                conn.ehlo_or_helo_if_needed()  # RFC 3207 4.2: forget what was said before TLS
            if self.username is not None:
                assert self._password is not None  # checked in __init__
                conn.login(self.username, self._password)
        except OSError as e:  # every smtplib exception is an OSError
            conn.close()
            raise self._connect_error(where, e) from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_error(self, where: str, e: OSError) -> MailError:
        """Wrap what smtplib, ssl and socket raise while opening a connection (the one place)."""
        # Order matters: every smtplib exception is an OSError, and so is ssl.SSLError.
        if isinstance(e, smtplib.SMTPAuthenticationError):
            return self._error(
                f"{where} refused the credentials of {self.username!r}",
                e.smtp_code,
                e.smtp_error,
                fatal=True,
            )
        if isinstance(e, smtplib.SMTPServerDisconnected):
            return MailError(
                f"{where} closed the connection while it was being opened",
                backend=self.name,
                provider_message=str(e),
                retryable=True,
            )
        if isinstance(e, smtplib.SMTPResponseException):
            return self._error(f"{where} refused the session", e.smtp_code, e.smtp_error)
        if isinstance(e, smtplib.SMTPException):
            # SMTPNotSupportedError (no STARTTLS, no AUTH) or no AUTH mechanism in common:
            # nothing a later attempt would change.
            return MailError(
                f"{where} cannot be used as configured",
                backend=self.name,
                provider_message=str(e),
                fatal=True,
            )
        if isinstance(e, ssl.SSLCertVerificationError):
            return MailError(
                f"the TLS certificate of {where} is not trusted ({e.verify_message}); "
                "set mail.ca_file to the CA that signed it if it is a private one",
                backend=self.name,
                fatal=True,
            )
        if isinstance(e, ssl.SSLError) and not isinstance(
            e, ssl.SSLEOFError | ssl.SSLZeroReturnError
        ):
            return MailError(
                f"the TLS handshake with {where} failed (is mail.security right for this port?)",
                backend=self.name,
                provider_message=str(e),
                fatal=True,
            )
        return MailError(
            f"cannot connect to {where}",
            backend=self.name,
            provider_message=str(e),
            retryable=True,
        )

    def _error(
        self, message: str, code: int, reply: bytes | str, *, fatal: bool = False
    ) -> MailError:
        """A ``MailError`` for an SMTP reply: 4xx is temporary (retryable), 5xx permanent."""
        permanent = fatal or code >= 500
        return MailError(
            message,
            backend=self.name,
            provider_message=_reply(code, reply),
            retryable=not permanent,
            fatal=permanent,
        )

    # --- sending -------------------------------------------------------------------------------

    def send_batch(self, content: PreparedContent, batch: Batch) -> list[DeliveryResult]:
        sender: str = content.once("smtp.sender", lambda: parseaddr(content.content.from_addr)[1])
        if not sender:
            raise MailError(
                f"the sender {content.content.from_addr!r} has no address",
                backend=self.name,
                fatal=True,
            )
        date = clock.now()
        results: list[DeliveryResult] = []
        uncertain: list[Recipient] = []
        for recipient in batch.recipients:
            try:
                msg = build_message(content, recipient, date=date, backend=self.name)
            except MailError as e:
                log.warning("not sent: %s", e)
                results.append(failed_result(recipient, str(e)))
                continue
            payload = msg.as_bytes()
            message_id = str(msg["Message-ID"])
            retried = False
            while True:
                try:
                    result = self._transact(self._connection(), sender, recipient, payload)
                except _ConnectionLost as lost:
                    self._discard()
                    if lost.after_data:
                        log.warning("to %s: %s (%s)", recipient.email, UNCERTAIN, lost.reason)
                        uncertain.append(recipient)
                        results.append(failed_result(recipient, f"{UNCERTAIN} ({lost.reason})"))
                        break
                    if retried:
                        stop = MailError(
                            f"the connection to {self.host}:{self.port} was lost twice "
                            f"while sending to {recipient.email}",
                            backend=self.name,
                            provider_message=lost.reason,
                            retryable=True,
                        )
                        return self._cut_short(batch, results, uncertain, stop)
                    log.info("connection lost before DATA (%s); reconnecting", lost.reason)
                    retried = True
                    continue
                except MailError as stop:  # cannot (re)connect, or the sender is refused
                    return self._cut_short(batch, results, uncertain, stop)
                if result is None:
                    results.append(sent_result(recipient, message_id))
                else:
                    log.warning("not sent to %s: %s", recipient.email, result)
                    results.append(failed_result(recipient, result))
                break
        if uncertain and not _any_sent(results):
            raise self._uncertain(uncertain, "")
        return results

    def _transact(
        self, conn: smtplib.SMTP, sender: str, recipient: Recipient, payload: bytes
    ) -> str | None:
        """One SMTP transaction. Returns None when the server accepted the message, else why it
        was refused; raises ``_ConnectionLost`` (and ``MailError`` when the sender is refused).
        """
        try:
            code, reply = conn.mail(sender)
        except smtplib.SMTPServerDisconnected as e:
            raise _ConnectionLost(str(e), after_data=False) from e
        except smtplib.SMTPResponseException as e:  # an unreadable reply; smtplib closed
            raise _ConnectionLost(_reply(e.smtp_code, e.smtp_error), after_data=False) from e
        if code == 421:
            raise _ConnectionLost(_reply(code, reply), after_data=False)
        if code != 250:
            raise self._error(f"the server refused the sender {sender}", code, reply)

        try:
            code, reply = conn.rcpt(recipient.email)
        except smtplib.SMTPServerDisconnected as e:
            raise _ConnectionLost(str(e), after_data=False) from e
        except smtplib.SMTPResponseException as e:
            raise _ConnectionLost(_reply(e.smtp_code, e.smtp_error), after_data=False) from e
        if code == 421:
            raise _ConnectionLost(_reply(code, reply), after_data=False)
        if code not in (250, 251):  # 251: "user not local; will forward" (RFC 5321 4.2.2)
            self._rset(conn)  # RFC 5321 4.1.1.5: abort this transaction before the next MAIL
            kind = "temporarily refused" if 400 <= code < 500 else "refused"
            return f"{self.name}: the server {kind} the recipient: {_reply(code, reply)}"

        try:
            code, reply = conn.data(payload)
        except smtplib.SMTPDataError as e:  # DATA itself was refused: the message never left
            if e.smtp_code == 421:
                raise _ConnectionLost(_reply(e.smtp_code, e.smtp_error), after_data=False) from e
            self._rset(conn)
            return (
                f"{self.name}: the server refused the message: {_reply(e.smtp_code, e.smtp_error)}"
            )
        except smtplib.SMTPServerDisconnected as e:
            raise _ConnectionLost(str(e), after_data=True) from e
        except smtplib.SMTPResponseException as e:
            raise _ConnectionLost(_reply(e.smtp_code, e.smtp_error), after_data=True) from e
        if code == 250:
            return None
        if code == 421:
            self._discard()  # the server is closing; the next message opens a new connection
        kind = "temporarily refused" if 400 <= code < 500 else "refused"
        return f"{self.name}: the server {kind} the message: {_reply(code, reply)}"

    def _rset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except smtplib.SMTPException:  # lost: the next message opens a new connection
            self._discard()

    def _cut_short(
        self,
        batch: Batch,
        results: list[DeliveryResult],
        uncertain: list[Recipient],
        stop: MailError,
    ) -> list[DeliveryResult]:
        """End a batch that cannot go on, as the module docstring says."""
        self._discard()
        if not _any_sent(results):
            if uncertain:
                raise self._uncertain(uncertain, f"; then: {stop}")
            raise stop
        rest = batch.recipients[len(results) :]
        log.error(
            "%s; this batch had %d messages delivered, so its %d not yet attempted are "
            "recorded as failed rather than re-queued with them",
            stop,
            sum(r.status == DeliveryStatus.SENT for r in results),
            len(rest),
        )
        results.extend(failed_result(r, f"not sent: the batch was cut short: {stop}") for r in rest)
        return results

    def _uncertain(self, recipients: Sequence[Recipient], then: str) -> MailError:
        addresses = ", ".join(r.email for r in recipients)
        return MailError(
            f"the connection was lost after the message to {addresses} was sent (DATA) and "
            f"before the server confirmed it; no message of this batch was confirmed, so the "
            f"batch stays uncertain (re-sending it may deliver that message twice){then}",
            backend=self.name,
            uncertain=True,
        )


# --- helpers ---------------------------------------------------------------------------------


def _plain_auth_problem(host: str, security: str, username: str | None) -> str | None:
    """Why AUTH may not go to ``host`` as configured, or None. Plain-text AUTH sends the
    password readable by anyone on the path; only a relay on this machine is exempt."""
    if username is None or security != "none" or _is_loopback(host):
        return None
    return (
        f"AUTH over plain text is refused for {host!r} (the password would cross the network "
        'unencrypted); use security = "starttls" or "tls"'
    )


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reply(code: int, reply: bytes | str) -> str:
    """An SMTP reply as one line: "550 5.1.1 no such user"."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}".strip()


def _any_sent(results: Sequence[DeliveryResult]) -> bool:
    return any(r.status == DeliveryStatus.SENT for r in results)


def _quit(conn: smtplib.SMTP) -> None:
    """Say goodbye (RFC 5321 4.1.1.10); a connection already gone is simply closed."""
    try:
        conn.quit()
    except OSError:  # smtplib.SMTPException included
        conn.close()
