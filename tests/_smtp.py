"""A real SMTP server on 127.0.0.1 for tests (aiosmtpd in a thread), recording what it receives.

``smtp_server(**options)`` is a context manager yielding a running ``SMTPServer``; any test
module can use it directly or wrap it in its own fixture (the mail contract suite does). Options
cover what an SMTP client must cope with: STARTTLS or implicit TLS with a certificate from a
throw-away CA (trustme), AUTH with one accepted login, recipients refused at RCPT (550) or
deferred (450), a delay per message, and a connection dropped in the middle of DATA.

Tests assert on the wire: ``received`` holds each accepted message (envelope, raw bytes, the
parsed ``EmailMessage``, whether it came over TLS, who had logged in), ``unacknowledged`` the
message of a dropped DATA, and ``connections`` counts the SMTP sessions opened.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from newsletter.config import MAIL_COMMON_KEYS

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    """One message the server accepted (answered 250 to)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    tls: bool  # the session was encrypted (STARTTLS or implicit TLS)
    login: str | None  # the user AUTH accepted on this session; None without AUTH


class _Controller(Controller):
    """aiosmtpd's threaded controller, listening on a port the OS picks, counting sessions."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, hostname=HOST, port=0, **kwargs)
        self.sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self.sessions.append(smtp)  # called on the server's loop thread, once per connection
        return smtp

    def _trigger_server(self) -> None:
        # aiosmtpd 1.4 probes ``self.port`` once listening, which fails for port 0
        # (aio-libs/aiosmtpd#388): read the port the OS bound first.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SMTPServer:
    """A running server; see ``smtp_server`` for the options."""

    def __init__(
        self,
        *,
        security: str,
        ca_file: Path | None,
        tls_context: ssl.SSLContext | None,
        auth: tuple[str, str] | None,
        refuse: Collection[str],
        defer: Collection[str],
        drop_after: int | None,
        refuse_after_drop: bool,
        delay: float,
    ) -> None:
        self.security = security
        self.ca_file = ca_file
        self.auth = auth
        self.refuse = frozenset(refuse)
        self.defer = frozenset(defer)
        self.drop_after = drop_after
        self.refuse_after_drop = refuse_after_drop
        self.delay = delay
        self._received: list[Received] = []
        self._unacknowledged: list[Received] = []
        self._dropped = False
        self._lock = threading.Lock()
        options: dict[str, Any] = {
            "server_hostname": "mail.test",  # else aiosmtpd asks socket.getfqdn() per session
            # aiosmtpd cannot tell that a socket is wrapped in implicit TLS and would hide AUTH
            # there (aio-libs/aiosmtpd#281); over plain text AUTH is allowed for the client's
            # loopback exception. Only a STARTTLS server insists on TLS before AUTH, and only
            # it requires AUTH before MAIL: aiosmtpd warns (UserWarning) against requiring AUTH
            # without the TLS it can see. Elsewhere ``Received.login`` shows who logged in.
            "auth_require_tls": security == "starttls",
            "auth_required": auth is not None and security == "starttls",
        }
        if auth is not None:
            options["authenticator"] = self._authenticate
        if security == "starttls":
            options.update(tls_context=tls_context, require_starttls=True)
        elif security == "tls":
            options["ssl_context"] = tls_context
        self._controller = _Controller(_Handler(self), **options)
        self._controller.start()
        self._controller.sessions.clear()  # forget the controller's own start-up probe
        self.port: int = self._controller.port

    # --- what the tests read --------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def unacknowledged(self) -> list[Received]:
        """Messages whose DATA the server cut off before replying (``drop_after``)."""
        with self._lock:
            return list(self._unacknowledged)

    @property
    def connections(self) -> int:
        return len(self._controller.sessions)

    def recipients(self) -> list[str]:
        """Every envelope recipient of every accepted message, in order of arrival."""
        return [rcpt for r in self.received for rcpt in r.rcpt_tos]

    def mail_config(self, *, trust_ca: bool = True, **extra: str | int | float) -> str:
        """``[mail]`` choosing the smtp backend and ``[mail.smtp]`` pointing here, plus
        ``extra`` keys (the common ones, such as ``batch_size``, in ``[mail]``).

        ``trust_ca=False`` leaves ``ca_file`` out, so the client checks the certificate against
        the system's trust store (which does not know the test CA).
        """
        values: dict[str, str | int | float] = {
            "host": HOST,
            "port": self.port,
            "security": self.security,
        }
        if self.ca_file is not None and trust_ca:
            values["ca_file"] = str(self.ca_file)
        values.update(extra)
        common = [f"{k} = {_toml(v)}" for k, v in values.items() if k in MAIL_COMMON_KEYS]
        own = [f"{k} = {_toml(v)}" for k, v in values.items() if k not in MAIL_COMMON_KEYS]
        return "\n".join(["[mail]", 'backend = "smtp"', *common, "", "[mail.smtp]", *own, ""])

    # --- what the tests do -----------------------------------------------------------------------

    def drop_connections(self) -> None:
        """Close every open session from the server's side, as an idle timeout would."""

        async def drop() -> None:
            sessions = list(self._controller.sessions)
            for session in sessions:
                if session.transport is not None:
                    session.transport.close()
            while any(session.transport is not None for session in sessions):
                await asyncio.sleep(0.001)

        asyncio.run_coroutine_threadsafe(drop(), self._controller.loop).result(timeout=5)

    def stop(self) -> None:
        self._controller.stop()

    # --- the server's side ----------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        user, password = self.auth
        ok = (
            isinstance(data, LoginPassword)
            and data.login == user.encode()
            and data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _record(self, server: SMTP, session: Session, envelope: Envelope) -> Received:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        transport = server.transport
        data = session.auth_data
        login = data.login.decode() if isinstance(data, LoginPassword) else None
        return Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            message=message,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
            login=login,
        )


class _Handler:
    """aiosmtpd hooks; they run on the server's event loop thread."""

    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.server.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address in self.server.defer:
            return f"450 4.2.1 <{address}>: Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        outer = self.server
        received = outer._record(server, session, envelope)
        with outer._lock:
            drop = (
                outer.drop_after is not None
                and not outer._dropped
                and len(outer._received) >= outer.drop_after
            )
            if drop:
                outer._dropped = True
                outer._unacknowledged.append(received)
        if drop:
            if outer.refuse_after_drop:
                assert outer._controller.server is not None
                outer._controller.server.close()  # stop listening: reconnecting is refused
            assert isinstance(server.transport, asyncio.Transport)
            # The message is in, no reply goes out: the client cannot tell whether it was
            # accepted. abort() marks the connection lost at once, so nothing more is written;
            # connection_lost then cancels this session's task, ending the wait below.
            server.transport.abort()
            await asyncio.Event().wait()
        if outer.delay:
            await asyncio.sleep(outer.delay)
        with outer._lock:
            outer._received.append(received)
        return "250 2.0.0 OK: queued"


@contextmanager
def smtp_server(
    *,
    security: str = "none",
    auth: tuple[str, str] | None = None,
    refuse: Collection[str] = (),
    defer: Collection[str] = (),
    drop_after: int | None = None,
    refuse_after_drop: bool = False,
    delay: float = 0.0,
    certificate_for: tuple[str, ...] = (HOST, "localhost"),
) -> Iterator[SMTPServer]:
    """Run an SMTP server on 127.0.0.1 for the duration of the ``with`` block.

    - ``security``: "none", "starttls" (STARTTLS offered and required) or "tls" (implicit TLS),
      as in ``[mail] security``. With TLS the certificate is issued by a new test CA for the
      names in ``certificate_for``, and ``server.ca_file`` holds that CA (for ``ca_file``).
    - ``auth``: (username, password) accepted by AUTH; with STARTTLS, AUTH is then required
      before MAIL (elsewhere only offered: see ``Received.login``).
    - ``refuse`` / ``defer``: addresses answered 550 / 450 at RCPT TO.
    - ``drop_after``: accept this many messages, then cut the connection during the next
      message's DATA, after reading it and before replying (once); ``refuse_after_drop`` also
      stops listening, so the client cannot reconnect.
    - ``delay``: seconds to wait before accepting each message.
    """
    if security not in ("none", "starttls", "tls"):
        raise ValueError(f"unknown security {security!r}")
    with ExitStack() as stack:
        ca_file: Path | None = None
        tls_context: ssl.SSLContext | None = None
        if security != "none":
            ca = trustme.CA()
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(*certificate_for).configure_cert(tls_context)
            ca_file = Path(stack.enter_context(ca.cert_pem.tempfile()))
        server = SMTPServer(
            security=security,
            ca_file=ca_file,
            tls_context=tls_context,
            auth=auth,
            refuse=refuse,
            defer=defer,
            drop_after=drop_after,
            refuse_after_drop=refuse_after_drop,
            delay=delay,
        )
        try:
            yield server
        finally:
            server.stop()


def _toml(value: str | int | float) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
