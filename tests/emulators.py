"""Loopback emulators of the mail providers' HTTP APIs: what our backends rely on, executable.

Each emulator is a real HTTP server on ("127.0.0.1", 0) in a thread. It checks every request
against what the provider documents (the pages cited in ``newsletter/mail/<provider>.py``),
answers as the provider does, and records:

- ``requests``: every request received (method, path, headers, body);
- ``deliveries``: every message accepted, as its recipient would see it (substitutions done),
  with the message id answered and the request's idempotency key;
- ``problems``: every way a request broke the documented contract. The provider would refuse
  those too (and the emulator answers as it would); the tests' fixtures assert none happened.

Faults are scripted per test and consumed by the next requests, in order:

- ``fail(status, times=n, retry_after=s, **detail)``: answer the provider's error for ``status``;
- ``drop(times=n)``: take the request (deliver it) and close the connection without answering;
- ``slow(seconds, times=n)``: take the request and answer only after ``seconds``;
- ``reject(address, reason)``: the provider refuses that recipient, the way it does (a
  per-message error for Postmark and Resend, a whole-request 400 for SendGrid and Mailgun).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import re
import sys
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl

TOKEN = "test-token-1234"


@dataclass(frozen=True)
class Seen:
    """One request as received. Header names are lower-cased."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True, strict_parsing=True)


@dataclass(frozen=True)
class Delivery:
    """One message accepted, as its recipient would see it."""

    to: str  # the address alone
    message_id: str  # what the provider answered for it
    request: int  # index in ``requests`` of the request that delivered it
    key: str | None  # that request's Idempotency-Key
    from_: str
    subject: str
    html: str
    text: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None  # bytes or str as they are, anything else as JSON
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Fault:
    kind: str  # "fail", "drop" or "slow"
    status: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    seconds: float = 0.0


class Refused(Exception):
    """Raised inside ``handle`` to answer with ``answer`` instead."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout tests) closes its end; that is expected.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class Emulator:
    """The server, the fault script and the records; subclasses implement ``handle``."""

    name: ClassVar[str]

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.requests: list[Seen] = []
        self.deliveries: list[Delivery] = []
        self.problems: list[str] = []
        self.rejected: dict[str, str] = {}  # address (lower-case) -> the provider's reason
        self._faults: deque[_Fault] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # records and faults; handle() runs under it too
        self._stopping = threading.Event()
        self._idle = threading.Condition()  # notified when a request is no longer being taken
        self._reading = 0  # requests being read, handled or answered
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = 10  # an idle keep-alive connection does not outlive a test by much

            def do_POST(self) -> None:
                outer._serve(self)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- scripting -------------------------------------------------------------------------

    def fail(
        self, status: int, *, times: int = 1, retry_after: float | None = None, **detail: Any
    ) -> None:
        with self._lock:
            for _ in range(times):
                self._faults.append(_Fault("fail", status, detail, retry_after))

    def drop(self, *, times: int = 1) -> None:
        with self._lock:
            self._faults.extend(_Fault("drop") for _ in range(times))

    def slow(self, seconds: float, *, times: int = 1) -> None:
        with self._lock:
            self._faults.extend(_Fault("slow", seconds=seconds) for _ in range(times))

    def clear_faults(self) -> None:
        """Forget the faults not consumed yet: from now on every request is answered."""
        with self._lock:
            self._faults.clear()

    def reject(self, address: str, reason: str | None = None) -> None:
        self.rejected[address.lower()] = reason or self.rejection

    rejection: ClassVar[str] = "the address was refused"

    # --- reading ---------------------------------------------------------------------------

    def delivered_to(self) -> list[str]:
        return [d.to for d in self.deliveries]

    def close(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- for subclasses --------------------------------------------------------------------

    def handle(self, seen: Seen, index: int) -> Answer:
        """Check the request, record its deliveries, answer. Raise ``Refused`` to refuse."""
        raise NotImplementedError

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        """The provider's error answer for ``status``."""
        raise NotImplementedError

    def problem(self, status: int, message: str, **detail: Any) -> Refused:
        """A breach of the documented contract: recorded, and refused as the provider would."""
        self.problems.append(message)
        return Refused(self.error(status, message, **detail))

    def deny(self, status: int, message: str | None = None, **detail: Any) -> Refused:
        """A refusal that is the provider doing its job (a wrong key, a rejected address)."""
        return Refused(self.error(status, message, **detail))

    def new_id(self) -> str:
        return f"{self.name}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def deliver(self, seen: Seen, index: int, **fields: Any) -> Delivery:
        delivery = Delivery(request=index, key=seen.headers.get("idempotency-key"), **fields)
        self.deliveries.append(delivery)
        return delivery

    def need_type(self, seen: Seen, expected: str) -> None:
        content_type = seen.headers.get("content-type", "").split(";")[0].strip()
        if content_type != expected:
            raise self.problem(415, f"Content-Type {content_type!r}, expected {expected}")

    def check_bodies(self, *bodies: str) -> None:
        for body in bodies:
            if "nlvar:" in body:
                self.problems.append("a placeholder (nlvar:) reached the recipient")

    # --- the server ------------------------------------------------------------------------

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being read, handled or answered: after its client was
        killed, what the client had sent is then either taken (in ``deliveries``) or dropped."""
        with self._idle:
            self._idle.wait_for(lambda: self._reading == 0, timeout)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        with self._idle:
            self._reading += 1
        try:
            self._take(h)
        finally:
            with self._idle:
                self._reading -= 1
                self._idle.notify_all()

    def _take(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        seen = Seen(
            method=h.command,
            path=h.path,
            headers={k.lower(): v for k, v in h.headers.items()},
            body=h.rfile.read(length),
        )
        with self._lock:
            index = len(self.requests)
            self.requests.append(seen)
            fault = self._faults.popleft() if self._faults else None
            if fault is not None and fault.kind == "fail":
                answer = self.error(fault.status, **fault.detail)
                if fault.retry_after is not None:
                    answer = Answer(
                        answer.status,
                        answer.body,
                        {**answer.headers, "Retry-After": f"{fault.retry_after:g}"},
                    )
            else:
                try:
                    answer = self.handle(seen, index)
                except Refused as refused:
                    answer = refused.answer
        if fault is not None and fault.kind == "drop":
            h.close_connection = True  # taken, then the connection closes without an answer
            return
        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.seconds):
            h.close_connection = True
            return
        body = answer.body
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, bytes):
            data, content_type = body, "application/octet-stream"
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        h.send_response(answer.status)
        h.send_header("Content-Type", content_type)
        for name, value in answer.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def _one_address(value: str) -> str | None:
    """The address of a ``Name <address>`` or bare address field, if it holds exactly one."""
    found = getaddresses([value])
    if len(found) != 1 or "@" not in found[0][1]:
        return None
    return found[0][1]


def _header_items(value: Any) -> dict[str, str] | None:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    return None


# --- Postmark ---------------------------------------------------------------------------------


class PostmarkEmulator(Emulator):
    """``POST /email/batch``: https://postmarkapp.com/developer/user-guide/send-email-with-api/
    batch-emails, errors from https://postmarkapp.com/developer/api/overview."""

    name = "postmark"
    rejection = "You tried to send to a recipient that has been marked as inactive."
    MAX_MESSAGES = 500
    MAX_BYTES = 50 * 1000 * 1000

    def __init__(self, token: str = TOKEN, *, stream: str = "broadcast") -> None:
        super().__init__(token)
        self.stream = stream
        self.confirmed_sender = True  # False: every message fails with ErrorCode 401

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        if status >= 500:
            return Answer(status, "Internal Server Error")
        code = detail.get("code", {401: 10, 429: 429, 413: 413}.get(status, 300))
        return Answer(status, {"ErrorCode": code, "Message": message or f"error {code}"})

    def handle(self, seen: Seen, index: int) -> Answer:
        if seen.method != "POST" or seen.path != "/email/batch":
            raise self.problem(404, f"no endpoint {seen.method} {seen.path}")
        if seen.headers.get("x-postmark-server-token") != self.token:
            raise self.deny(401, "Request does not contain a valid Server token.", code=10)
        if seen.headers.get("accept") != "application/json":
            raise self.problem(422, "Accept: application/json is required", code=409)
        self.need_type(seen, "application/json")
        if len(seen.body) > self.MAX_BYTES:
            raise self.problem(413, "the batch is over 50 MB")
        try:
            messages = seen.json()
        except ValueError:
            raise self.problem(422, "Invalid JSON", code=402) from None
        if not isinstance(messages, list) or not messages:
            raise self.problem(422, "expected a JSON array of messages", code=300)
        if len(messages) > self.MAX_MESSAGES:
            raise self.problem(422, "Too many batch messages", code=410)
        return Answer(200, [self._message(seen, index, m) for m in messages])

    def _message(self, seen: Seen, index: int, m: Any) -> dict[str, Any]:
        """One entry of the answer: Postmark validates and answers each message on its own."""
        invalid = {"ErrorCode": 300, "Message": "Invalid email request"}
        if not isinstance(m, dict):
            self.problems.append("a batch entry is not an object")
            return invalid
        headers = m.get("Headers", [])
        ok = isinstance(headers, list) and all(
            isinstance(h, dict) and set(h) == {"Name", "Value"} for h in headers
        )
        header_map = {h["Name"]: h["Value"] for h in headers} if ok else {}
        to = _one_address(str(m.get("To", "")))
        missing = [k for k in ("From", "To", "Subject", "HtmlBody", "TextBody") if not m.get(k)]
        if missing or not ok or to is None:
            self.problems.append(f"invalid message: missing {missing}, headers ok: {ok}, To {to}")
            return invalid
        if not self.confirmed_sender:
            return {"ErrorCode": 401, "Message": "Sender signature not confirmed."}
        if m.get("MessageStream") != self.stream:
            self.problems.append(f"MessageStream {m.get('MessageStream')!r}, not {self.stream!r}")
            return {"ErrorCode": 1235, "Message": "The message stream does not exist."}
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "Message-ID"):
            if name not in header_map:
                self.problems.append(f"no {name} header")
        if to.lower() in self.rejected:
            return {"ErrorCode": 406, "Message": self.rejected[to.lower()], "To": m["To"]}
        self.check_bodies(m["HtmlBody"], m["TextBody"])
        if m.get("ReplyTo"):
            header_map["Reply-To"] = m["ReplyTo"]
        delivery = self.deliver(
            seen,
            index,
            to=to,
            message_id=self.new_id(),
            from_=m["From"],
            subject=m["Subject"],
            html=m["HtmlBody"],
            text=m["TextBody"],
            headers=header_map,
        )
        return {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": delivery.message_id,
            "To": m["To"],
            "SubmittedAt": "2026-11-22T08:00:00Z",
        }


# --- SendGrid ---------------------------------------------------------------------------------


class SendGridEmulator(Emulator):
    """``POST /v3/mail/send``: https://www.twilio.com/docs/sendgrid/api-reference/mail-send,
    limits and errors from https://docs.sendgrid.com/api-reference/mail-send/limitations and
    https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors."""

    name = "sendgrid"
    rejection = "Does not contain a valid address."
    MAX_PERSONALIZATIONS = 1000
    MAX_BYTES = 30 * 1000 * 1000
    MAX_SUBSTITUTIONS = 50_000

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        default = {
            401: "The provided authorization grant is invalid, expired, or revoked",
            429: "too many requests",
        }.get(status, "Bad Request" if status < 500 else "internal server error")
        error = {"message": message or default, "field": detail.get("field"), "help": None}
        return Answer(status, {"errors": [error]})

    def handle(self, seen: Seen, index: int) -> Answer:
        if seen.method != "POST" or seen.path != "/v3/mail/send":
            raise self.problem(404, f"no endpoint {seen.method} {seen.path}")
        if seen.headers.get("authorization") != f"Bearer {self.token}":
            raise self.deny(401)
        self.need_type(seen, "application/json")
        if len(seen.body) > self.MAX_BYTES:
            raise self.problem(413, "the request is over 30 MB")
        try:
            mail = seen.json()
            people = mail["personalizations"]
            content = {c["type"]: c["value"] for c in mail["content"]}
            order = [c["type"] for c in mail["content"]]
            sender = mail["from"]["email"]
        except (ValueError, KeyError, TypeError):
            raise self.problem(400, "personalizations, from and content are required") from None
        if not isinstance(people, list) or not 1 <= len(people) <= self.MAX_PERSONALIZATIONS:
            raise self.problem(400, "1 to 1000 personalizations", field="personalizations")
        if order[:2] != ["text/plain", "text/html"]:
            raise self.problem(400, "text/plain must come first, then text/html", field="content")
        subject = mail.get("subject")
        if not sender:
            raise self.problem(400, "from.email is required", field="from.email")
        if not subject:
            raise self.problem(400, "The subject is required.", field="subject")

        errors, seen_addresses, tags = [], set(), None
        for i, person in enumerate(people):
            to, subs = person.get("to"), person.get("substitutions", {})
            if not isinstance(to, list) or len(to) != 1 or "email" not in to[0]:
                raise self.problem(400, "one `to` per personalization", field=f"p.{i}.to")
            address, name = str(to[0]["email"]), str(to[0].get("name", ""))
            if ";" in name or "," in name:
                raise self.problem(400, "to.name cannot hold ; or ,", field=f"p.{i}.to.0.name")
            if address.lower() in seen_addresses:
                raise self.problem(400, f"{address} is included more than once")
            seen_addresses.add(address.lower())
            if not isinstance(subs, dict) or not all(isinstance(v, str) for v in subs.values()):
                raise self.problem(400, "substitutions must map strings to strings")
            if len(json.dumps(subs).encode()) > self.MAX_SUBSTITUTIONS:
                raise self.problem(400, "substitutions over 50,000 bytes")
            if tags is None:
                tags = set(subs)
            elif set(subs) != tags:
                self.problems.append(f"personalization {i} has other substitution tags")
            if address.lower() in self.rejected:
                field_path = f"personalizations.{i}.to.0.email"
                errors.append({"message": self.rejected[address.lower()], "field": field_path})
        if errors:  # SendGrid refuses the whole request
            return Answer(400, {"errors": [{**e, "help": None} for e in errors]})
        for tag in tags or ():
            if not any(tag in text for text in (*content.values(), subject)):
                self.problems.append(f"substitution tag {tag!r} is used nowhere")

        message_id = self.new_id()
        for person in people:
            subs = person.get("substitutions", {})
            bodies = [_substitute(content[t], subs) for t in ("text/html", "text/plain")]
            self.check_bodies(*bodies)
            headers = {**mail.get("headers", {}), **person.get("headers", {})}
            if "reply_to" in mail:
                headers["Reply-To"] = mail["reply_to"]["email"]
            self.deliver(
                seen,
                index,
                to=person["to"][0]["email"],
                message_id=message_id,
                from_=_address_text(mail["from"]),
                subject=_substitute(subject, subs),
                html=bodies[0],
                text=bodies[1],
                headers=headers,
            )
        return Answer(202, b"", {"X-Message-Id": message_id})


def _substitute(text: str, substitutions: Mapping[str, str]) -> str:
    # Longest tags first, so that no tag is replaced inside a longer one.
    for tag in sorted(substitutions, key=len, reverse=True):
        text = text.replace(tag, substitutions[tag])
    return text


def _address_text(address: Mapping[str, str]) -> str:
    name = address.get("name")
    return f"{name} <{address['email']}>" if name else address["email"]


# --- Mailgun ----------------------------------------------------------------------------------


class MailgunEmulator(Emulator):
    """``POST /v3/<domain>/messages``: https://documentation.mailgun.com/docs/mailgun/
    user-manual/sending-messages and .../sending-messages/batch-sending."""

    name = "mailgun"
    rejection = "'to' parameter is not a valid address. please check documentation"
    MAX_RECIPIENTS = 1000
    MAX_BYTES = 25 * 1000 * 1000
    VARIABLE = re.compile(r"%recipient\.([A-Za-z0-9_.-]+)%")

    def __init__(self, token: str = TOKEN, *, domain: str = "mg.news.example.org") -> None:
        super().__init__(token)
        self.domain = domain

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        if status == 401:
            return Answer(401, "Forbidden")
        if status >= 500:
            return Answer(status, "Internal Server Error")
        return Answer(status, {"message": message or f"error {status}"})

    def handle(self, seen: Seen, index: int) -> Answer:
        if seen.method != "POST" or seen.path != f"/v3/{self.domain}/messages":
            raise self.problem(404, f"no endpoint {seen.method} {seen.path}")
        expected = "Basic " + base64.b64encode(f"api:{self.token}".encode()).decode()
        if seen.headers.get("authorization") != expected:
            raise self.deny(401)
        # Mailgun takes multipart/form-data too; our backend sends url-encoded forms.
        self.need_type(seen, "application/x-www-form-urlencoded")
        if len(seen.body) > self.MAX_BYTES:
            raise self.problem(400, "the message is over 25 MB")
        fields: dict[str, list[str]] = {}
        for key, value in seen.form():
            fields.setdefault(key, []).append(value)
        single = {k: v[0] for k, v in fields.items() if len(v) == 1}
        for name in ("from", "subject", "text", "html", "recipient-variables"):
            if name not in single:
                raise self.problem(400, f"exactly one {name!r} is required")
        to = fields.get("to", [])
        if not 1 <= len(to) <= self.MAX_RECIPIENTS:
            raise self.problem(400, "1 to 1000 'to' recipients")
        try:
            variables = json.loads(single["recipient-variables"])
        except ValueError:
            raise self.problem(400, "recipient-variables is not JSON") from None
        addresses = [_one_address(t) for t in to]
        if None in addresses:
            raise self.problem(400, self.rejection)
        headers = {k[2:]: v for k, v in single.items() if k.startswith("h:")}
        templates = [single["subject"], single["text"], single["html"], *headers.values()]
        used = {m for text in templates for m in self.VARIABLE.findall(text)}
        for address in addresses:
            mine = variables.get(address) if isinstance(variables, dict) else None
            if not isinstance(mine, dict):
                # Without them Mailgun sends one message showing every recipient in To.
                raise self.problem(400, f"no recipient-variables for {address}")
            if missing := used - set(mine):
                self.problems.append(f"{address} has no value for {sorted(missing)}")
        if any(a is not None and a.lower() in self.rejected for a in addresses):
            raise self.deny(400, self.rejection)  # one bad address refuses the request

        message_id = f"<{self.new_id()}@{self.domain}>"
        for address in addresses:
            assert address is not None
            values = variables[address]

            def fill(text: str, values: Mapping[str, str] = values) -> str:
                return self.VARIABLE.sub(lambda m: str(values.get(m[1], "")), text)

            bodies = fill(single["html"]), fill(single["text"])
            self.check_bodies(*bodies)
            self.deliver(
                seen,
                index,
                to=address,
                message_id=message_id,
                from_=single["from"],
                subject=fill(single["subject"]),
                html=bodies[0],
                text=bodies[1],
                headers={name: fill(value) for name, value in headers.items()},
            )
        return Answer(200, {"id": message_id, "message": "Queued. Thank you."})


# --- Resend -----------------------------------------------------------------------------------


class ResendEmulator(Emulator):
    """``POST /emails/batch``: https://resend.com/docs/api-reference/emails/send-batch-emails,
    https://resend.com/docs/dashboard/emails/idempotency-keys, .../batch-validation-modes and
    https://resend.com/docs/api-reference/errors."""

    name = "resend"
    rejection = "Invalid `to` field."
    MAX_EMAILS = 100
    MAX_KEY = 256
    UNSUPPORTED = ("attachments", "scheduled_at")

    def __init__(self, token: str = TOKEN) -> None:
        super().__init__(token)
        # Idempotency-Key -> (payload digest, answer); None while the first request runs.
        self.keys: dict[str, tuple[str, Answer] | None] = {}

    NAMES: ClassVar[dict[int, str]] = {
        400: "validation_error",
        401: "missing_api_key",
        403: "invalid_api_key",
        409: "invalid_idempotent_request",
        422: "validation_error",
        429: "rate_limit_exceeded",
    }

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        name = detail.get("name") or self.NAMES.get(status, "internal_server_error")
        return Answer(status, {"statusCode": status, "name": name, "message": message or name})

    def handle(self, seen: Seen, index: int) -> Answer:
        if seen.method != "POST" or seen.path != "/emails/batch":
            raise self.problem(404, f"no endpoint {seen.method} {seen.path}")
        authorization = seen.headers.get("authorization")
        if not authorization:
            raise self.deny(401, "Missing API key in the authorization header.")
        if authorization != f"Bearer {self.token}":
            raise self.deny(403, "API key is invalid")
        self.need_type(seen, "application/json")
        key = seen.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= self.MAX_KEY:
            raise self.problem(400, "The key must be between 1-256 chars.")
        digest = hashlib.sha256(seen.body).hexdigest()
        if key is not None and key in self.keys:
            stored = self.keys[key]
            if stored is None:
                raise self.deny(409, name="concurrent_idempotent_requests")
            if stored[0] != digest:
                raise self.deny(409, "Same idempotency key used with a different request payload.")
            return stored[1]  # the same answer, nothing sent again
        mode = seen.headers.get("x-batch-validation", "strict")
        if mode not in ("strict", "permissive"):
            raise self.problem(422, f"unknown x-batch-validation {mode!r}")
        try:
            emails = seen.json()
        except ValueError:
            raise self.problem(422, "invalid JSON") from None
        if not isinstance(emails, list) or not 1 <= len(emails) <= self.MAX_EMAILS:
            raise self.problem(422, "send 1 to 100 emails per batch")

        errors: list[dict[str, Any]] = []
        for i, email in enumerate(emails):
            reason = self._invalid(email)
            if reason is not None:
                errors.append({"index": i, "message": reason})
        if errors and mode == "strict":
            raise self.deny(422, errors[0]["message"])
        failed = {e["index"] for e in errors}
        data = []
        for i, email in enumerate(emails):
            if i in failed:
                continue
            headers = dict(email.get("headers") or {})
            if email.get("reply_to"):
                headers["Reply-To"] = email["reply_to"]
            self.check_bodies(email["html"], email["text"])
            delivery = self.deliver(
                seen,
                index,
                to=_one_address(_first(email["to"])) or "",
                message_id=self.new_id(),
                from_=email["from"],
                subject=email["subject"],
                html=email["html"],
                text=email["text"],
                headers=headers,
            )
            data.append({"id": delivery.message_id})
        answer = Answer(200, {"data": data, **({"errors": errors} if mode == "permissive" else {})})
        if key is not None:
            self.keys[key] = (digest, answer)
        return answer

    def _invalid(self, email: Any) -> str | None:
        """Why Resend would not create this email (a problem when it is our fault)."""
        if not isinstance(email, dict):
            self.problems.append("a batch entry is not an object")
            return "The email must be an object."
        for name in self.UNSUPPORTED:
            if name in email:
                self.problems.append(f"{name} is not supported by the batch endpoint")
                return f"The `{name}` field is not supported."
        missing = [k for k in ("from", "to", "subject", "html", "text") if not email.get(k)]
        if missing:
            self.problems.append(f"an email misses {missing}")
            return f"The `{missing[0]}` field is missing."
        to = email["to"] if isinstance(email["to"], list) else [email["to"]]
        if len(to) != 1 or _one_address(str(to[0])) is None:
            self.problems.append(f"to {email['to']!r} is not one address")
            return self.rejection
        if _header_items(email.get("headers", {})) is None:
            self.problems.append("headers must be an object of strings")
            return "The `headers` field is invalid."
        address = _one_address(str(to[0])) or ""
        return self.rejected.get(address.lower())

    def begin(self, key: str) -> None:
        """Mark ``key`` as held by a request still running (for the concurrency answer)."""
        with self._lock:
            self.keys[key] = None


def _first(value: Any) -> str:
    return str(value[0] if isinstance(value, list) else value)


# --- Amazon SES (API v2) ------------------------------------------------------------------------

AWS_ACCESS_KEY = "AKIAEMULATOR0000TEST"
AWS_SECRET_KEY = "emulator/secret/key/0123456789abcdefTEST"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s]+)/(?P<day>\d{8})/(?P<region>[^/\s]+)/"
    r"(?P<service>[^/\s]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_HANDLEBARS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What Handlebars' escapeExpression replaces in a {{double}} mustache.
_HANDLEBARS_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&#x27;",
        "`": "&#x60;",
        "=": "&#x3D;",
    }
)


class RenderingFailure(Exception):
    """The template does not render with an entry's data (SES drops that message and reports
    a Rendering Failure event; the API call itself still answers SUCCESS)."""


def render_handlebars(template: str, data: Mapping[str, Any]) -> str:
    """The subset of Handlebars the SES backend may use: ``{{{name}}}`` (raw) and ``{{name}}``
    (HTML-escaped) with plain variable names. Anything else that Handlebars would read as
    syntax (a helper call, a block, a comment, an escaped ``\\{{``) raises ``RenderingFailure``:
    an article's text that reaches SES unescaped is caught here."""
    out: list[str] = []
    position = 0
    while True:
        start = template.find("{{", position)
        if start < 0:
            out.append(template[position:])
            return "".join(out)
        literal = template[position:start]
        if literal.endswith("\\"):
            raise RenderingFailure(
                f"an escaped mustache at {start}: {template[start - 1 : start + 20]!r}"
            )
        out.append(literal)
        triple = template.startswith("{{{", start)
        if template.startswith("{{{{", start):
            raise RenderingFailure(f"a raw block at {start}")
        opener, closer = ("{{{", "}}}") if triple else ("{{", "}}")
        end = template.find(closer, start + len(opener))
        if end < 0:
            raise RenderingFailure(f"an unclosed mustache at {start}")
        name = template[start + len(opener) : end].strip()
        if not _HANDLEBARS_NAME.fullmatch(name):
            raise RenderingFailure(f"not a variable: {{{{{name}}}}}")
        if name not in data:
            raise RenderingFailure(f"no value for {name!r}")
        value = str(data[name])
        out.append(value if triple else value.translate(_HANDLEBARS_ESCAPES))
        position = end + len(closer)


class SESEmulator(Emulator):
    """``POST /v2/email/outbound-bulk-emails``, SES API v2 ``SendBulkEmail``: the request is
    checked against the ``sesv2`` model botocore ships (botocore's ``ParamValidator``, plus the
    ``max`` and ``pattern`` constraints it leaves to the server) and its SigV4 signature is
    recomputed with botocore. Each entry's message is rendered from the inline template with
    its ``ReplacementTemplateData``, headers merged as API_BulkEmailEntry.html says.

    Scripting beyond the base class: ``fail(400, code="ThrottlingException", message=...)`` for
    a coded error; ``fail_entry(address, status, times=n)`` answers ``status`` (e.g.
    ``ACCOUNT_THROTTLED``) for that address's next ``n`` entries; ``reject`` answers
    ``MESSAGE_REJECTED``."""

    name = "ses"
    rejection = "Address blacklisted."
    MAX_ENTRIES = 50
    MAX_SKEW = 300  # seconds: SigV4 requests older than 5 minutes are refused
    CODES: ClassVar[dict[int, str]] = {
        400: "BadRequestException",
        403: "UnrecognizedClientException",
        404: "NotFoundException",
        429: "TooManyRequestsException",
    }

    def __init__(
        self,
        access_key: str = AWS_ACCESS_KEY,
        *,
        secret_key: str = AWS_SECRET_KEY,
        region: str = "us-east-1",
        configuration_sets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(access_key)
        self.secret_key = secret_key
        self.region = region
        self.configuration_sets = set(configuration_sets)
        self.entry_faults: dict[str, deque[tuple[str, str]]] = {}
        self.rendering_failures: list[str] = []

    def fail_entry(self, address: str, status: str, *, times: int = 1, error: str = "") -> None:
        with self._lock:
            queue = self.entry_faults.setdefault(address.lower(), deque())
            queue.extend((status, error or f"{status.lower()} (scripted)") for _ in range(times))

    def error(self, status: int, message: str | None = None, **detail: Any) -> Answer:
        code = detail.get("code") or self.CODES.get(status, "InternalFailure")
        return Answer(
            status,
            {"message": message or code},
            {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"},
        )

    def handle(self, seen: Seen, index: int) -> Answer:
        if seen.method != "POST" or seen.path != "/v2/email/outbound-bulk-emails":
            raise self.problem(404, f"no endpoint {seen.method} {seen.path}")
        self._check_signature(seen)
        self.need_type(seen, "application/json")
        try:
            request = seen.json()
        except ValueError:
            raise self.problem(400, "the body is not JSON", code="SerializationException") from None
        self._validate(request)
        entries = request["BulkEmailEntries"]
        if not 1 <= len(entries) <= self.MAX_ENTRIES:
            raise self.problem(400, "1 to 50 BulkEmailEntries")
        config_set = request.get("ConfigurationSetName")
        if config_set is not None and config_set not in self.configuration_sets:
            raise self.deny(404, f"Configuration set <{config_set}> does not exist.")
        template = request["DefaultContent"].get("Template", {})
        content = template.get("TemplateContent")
        if not isinstance(content, dict) or not all(
            content.get(k) for k in ("Subject", "Text", "Html")
        ):
            raise self.problem(400, "an inline TemplateContent with Subject, Text and Html")
        sender = request.get("FromEmailAddress", "")
        for address in [sender, *request.get("ReplyToAddresses", [])]:
            if not address.isascii() or _one_address(address) is None:
                raise self.problem(400, f"not one 7-bit address: {address!r}")
        common = {h["Name"]: h["Value"] for h in template.get("Headers", [])}
        for name in ("Message-ID", "Date"):
            if any(n.lower() == name.lower() for n in common):
                self.problems.append(f"{name} is set, but SES overwrites it")
        results = [self._entry(seen, index, request, template, common, e) for e in entries]
        return Answer(200, {"BulkEmailEntryResults": results})

    def _entry(
        self,
        seen: Seen,
        index: int,
        request: Mapping[str, Any],
        template: Mapping[str, Any],
        common: Mapping[str, str],
        entry: Mapping[str, Any],
    ) -> dict[str, Any]:
        to = entry["Destination"].get("ToAddresses", [])
        if (
            len(to) != 1
            or entry["Destination"].get("CcAddresses")
            or entry["Destination"].get("BccAddresses")
        ):
            self.problems.append(f"an entry is not for exactly one To address: {to!r}")
            return {"Status": "INVALID_PARAMETER", "Error": "one To address expected"}
        if not to[0].isascii() or _one_address(to[0]) is None:
            # SES has no SMTPUTF8 (API_Destination.html).
            self.problems.append(f"not a 7-bit address: {to[0]!r}")
            return {
                "Status": "INVALID_PARAMETER",
                "Error": "Local address contains control or whitespace",
            }
        address = _one_address(to[0]) or ""
        scripted = self.entry_faults.get(address.lower())
        if scripted:
            status, error = scripted.popleft()
            return {"Status": status, "Error": error}
        if address.lower() in self.rejected:
            return {"Status": "MESSAGE_REJECTED", "Error": self.rejected[address.lower()]}
        replacement = entry.get("ReplacementEmailContent", {}).get("ReplacementTemplate", {})
        raw_data = replacement.get("ReplacementTemplateData", template.get("TemplateData", "{}"))
        message_id = f"0100018c{uuid.uuid4().hex}-{next(self._ids):06d}-000000"
        try:
            data = json.loads(raw_data)
            if not isinstance(data, dict):
                raise RenderingFailure("the template data is not a JSON object")
            content = template["TemplateContent"]
            subject, text, html = (
                render_handlebars(content[k], data) for k in ("Subject", "Text", "Html")
            )
        except (ValueError, RenderingFailure) as e:
            # SES answers SUCCESS and drops the message with a Rendering Failure event.
            self.rendering_failures.append(f"{address}: {e}")
            self.problems.append(f"rendering failure for {address}: {e}")
            return {"Status": "SUCCESS", "MessageId": message_id}
        headers = dict(common)
        for header in entry.get("ReplacementHeaders", []):
            for name in [n for n in headers if n.lower() == header["Name"].lower()]:
                del headers[name]  # the entry's header takes precedence
            headers[header["Name"]] = header["Value"]
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post"):
            if name not in headers:
                self.problems.append(f"no {name} header for {address}")
        if request.get("ReplyToAddresses"):
            headers["Reply-To"] = request["ReplyToAddresses"][0]
        self.check_bodies(html, text)
        self.deliver(
            seen,
            index,
            to=address,
            message_id=message_id,
            from_=request["FromEmailAddress"],
            subject=subject,
            html=html,
            text=text,
            headers=headers,
        )
        return {"Status": "SUCCESS", "MessageId": message_id}

    def _validate(self, request: Any) -> None:
        """The request against the ``SendBulkEmail`` input shape of botocore's sesv2 model."""
        from botocore.validate import ParamValidator

        shape = _sesv2_operation().input_shape
        report = ParamValidator().validate(request, shape)
        if report.has_errors():
            raise self.problem(400, report.generate_report())
        for problem in _constraints(request, shape, "input"):
            raise self.problem(400, problem)

    def _check_signature(self, seen: Seen) -> None:
        """The Authorization header is SigV4's, for this key, region and ``ses``, and its
        signature is the one botocore computes for the request as received."""
        from datetime import UTC, datetime

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        authorization = seen.headers.get("authorization", "")
        match = _AUTHORIZATION.fullmatch(authorization)
        if match is None:
            raise self.problem(
                400,
                f"malformed Authorization {authorization[:80]!r}",
                code="IncompleteSignatureException",
            )
        if match["key"] != self.token:
            raise self.deny(403, "The security token included in the request is invalid.")
        amz_date = seen.headers.get("x-amz-date", "")
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise self.problem(
                400, f"X-Amz-Date {amz_date!r}", code="IncompleteSignatureException"
            ) from None
        if abs((datetime.now(UTC) - when).total_seconds()) > self.MAX_SKEW:
            raise self.problem(
                403, f"Signature expired: {amz_date}", code="InvalidSignatureException"
            )
        scope = (match["day"], match["region"], match["service"])
        if scope != (amz_date[:8], self.region, "ses"):
            raise self.problem(403, f"credential scope {scope}", code="InvalidSignatureException")
        signed = match["signed"].split(";")
        if not {"host", "x-amz-date"} <= set(signed) or any(h not in seen.headers for h in signed):
            raise self.problem(403, f"SignedHeaders {signed}", code="InvalidSignatureException")
        request = AWSRequest(
            method=seen.method,
            url=f"http://{seen.headers['host']}{seen.path}",
            data=seen.body,
            headers={name: seen.headers[name] for name in signed},
        )
        request.context["timestamp"] = amz_date
        token = seen.headers.get("x-amz-security-token")
        signer = SigV4Auth(Credentials(self.token, self.secret_key, token), "ses", self.region)
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, match["signature"]):
            raise self.problem(
                403,
                "The request signature we calculated does not match the signature you provided.",
                code="InvalidSignatureException",
            )


@functools.cache
def _sesv2_operation() -> Any:
    """The model, loaded once (loading it takes longer than handling a request)."""
    import botocore.session

    return (
        botocore.session.get_session().get_service_model("sesv2").operation_model("SendBulkEmail")
    )


def _constraints(value: Any, shape: Any, path: str) -> list[str]:
    """Where ``value`` breaks the ``max`` and ``pattern`` of its shape (ParamValidator checks
    types, required members and ``min`` only)."""
    found: list[str] = []
    limit = shape.metadata.get("max")
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                found += _constraints(value[name], member, f"{path}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        if limit is not None and len(value) > limit:
            found.append(f"{path}: {len(value)} items, at most {limit}")
        for i, item in enumerate(value):
            found += _constraints(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "string" and isinstance(value, str):
        if limit is not None and len(value) > limit:
            found.append(f"{path}: {len(value)} characters, at most {limit}")
        pattern = shape.metadata.get("pattern")
        if pattern is not None and not re.fullmatch(pattern.strip("^$"), value):
            found.append(f"{path}: {value[:60]!r} does not match {pattern}")
    return found


def aws_environment(folder: Any, **extra: str) -> dict[str, str]:
    """Environment variables for a hermetic AWS credential chain: the emulator's keys, empty
    shared config and credentials files in ``folder``, no instance metadata, no container
    credentials, no profile; so botocore never looks beyond 127.0.0.1 or the test's files."""
    config, credentials = folder / "aws-config", folder / "aws-credentials"
    for path in (config, credentials):
        if not path.exists():
            path.write_text("")
    return {
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        **extra,
    }


# Variables of the chain that a developer's shell may hold and that must not reach a test.
AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
