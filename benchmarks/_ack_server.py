"""A loopback HTTP server that reads each request whole and acknowledges it the way the named
mail provider answers success, nothing more. Run in its own process by benchmarks/send.py so
its CPU and memory are not counted as ours.

GET /_stats returns {"requests": n, "bytes": n, "messages": n, "distinct": n, "duplicates": n,
"first": t, "last": t}; POST /_reset zeroes them. ``distinct`` and ``duplicates`` count
recipients by address (SendGrid, Postmark, Resend and SES payloads), so a benchmark of several
nodes can check, where the messages arrive, that nobody got one twice and nobody none;
``first`` and ``last`` are the arrival times (``time.time()``) of the first and last request.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = self.bytes = self.messages = 0
        self.sample: tuple[str, bytes] | None = None  # (content type, body) of one request
        self.seen: dict[str, int] = {}  # recipient address -> messages received
        self.first = self.last = 0.0


def make_handler(provider: str, stats: Stats) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this, Python's http.server stalls ~40 ms per keep-alive request (Nagle's
        # algorithm against delayed ACKs); the trap the issue measured.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/json")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/_stats":
                with stats.lock:
                    data = {
                        "requests": stats.requests,
                        "bytes": stats.bytes,
                        "messages": stats.messages,
                        "distinct": len(stats.seen),
                        "duplicates": sum(n - 1 for n in stats.seen.values()),
                        "first": stats.first,
                        "last": stats.last,
                    }
                self._reply(200, json.dumps(data).encode())
            elif self.path == "/_sample":
                ctype, body = stats.sample or ("", b"")
                self._reply(200, body, {"X-Sample-Type": ctype})
            else:
                self._reply(404, b"{}")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path == "/_reset":
                with stats.lock:
                    stats.reset()
                self._reply(200, b"{}")
                return
            status, reply, count, headers = acknowledge(provider, body)
            addresses = recipients(provider, body) if self.path != "/baseline" else []
            now = time.time()
            with stats.lock:
                stats.requests += 1
                stats.bytes += length
                stats.messages += count
                for address in addresses:
                    stats.seen[address] = stats.seen.get(address, 0) + 1
                stats.first = stats.first or now
                stats.last = now
                if stats.sample is None:
                    stats.sample = (self.headers.get("Content-Type", ""), body)
            self._reply(status, reply, headers)

    return Handler


def recipients(provider: str, body: bytes) -> list[str]:
    """The addresses a request delivers to (JSON providers; Mailgun is not counted)."""
    if provider == "sendgrid":
        return [t["email"] for p in json.loads(body)["personalizations"] for t in p["to"]]
    if provider == "postmark":
        return [_address(m["To"]) for m in json.loads(body)]
    if provider == "resend":
        return [_address(m["to"][0]) for m in json.loads(body)]
    if provider == "ses":
        entries = json.loads(body)["BulkEmailEntries"]
        return [_address(e["Destination"]["ToAddresses"][0]) for e in entries]
    return []


def _address(text: str) -> str:
    """The address of ``"Name" <address>`` or of a bare address."""
    return text.rpartition("<")[2].rstrip(">")


def acknowledge(provider: str, body: bytes) -> tuple[int, bytes, int, dict[str, str]]:
    """(status, body, messages in the request, headers) as the provider answers success."""
    if provider == "postmark":
        messages = json.loads(body)
        reply = [
            {"ErrorCode": 0, "Message": "OK", "MessageID": str(uuid.uuid4()), "To": m["To"]}
            for m in messages
        ]
        return 200, json.dumps(reply).encode(), len(messages), {}
    if provider == "resend":
        messages = json.loads(body)
        reply = {"data": [{"id": str(uuid.uuid4())} for _ in messages]}
        return 200, json.dumps(reply).encode(), len(messages), {}
    if provider == "ses":  # SES v2 SendBulkEmail; the signature is not checked here
        entries = json.loads(body)["BulkEmailEntries"]
        reply = {
            "BulkEmailEntryResults": [
                {"Status": "SUCCESS", "MessageId": str(uuid.uuid4())} for _ in entries
            ]
        }
        return 200, json.dumps(reply).encode(), len(entries), {}
    if provider == "sendgrid":
        data = json.loads(body)
        count = sum(len(p.get("to", [])) for p in data["personalizations"])
        return 202, b"", count, {"X-Message-Id": uuid.uuid4().hex}
    if provider == "mailgun":
        # multipart/form-data or urlencoded; count the recipient-variables entries
        text = body.decode("utf-8", "replace")
        count = 1
        if "recipient-variables" in text:
            start = text.find("{", text.find("recipient-variables"))
            depth, end = 0, start
            for end in range(start, len(text)):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        break
            try:
                count = len(json.loads(text[start : end + 1]))
            except ValueError:
                count = len(parse_qs(text).get("to", [])) or 1
        reply = {"id": f"<{uuid.uuid4().hex}@bench>", "message": "Queued. Thank you."}
        return 200, json.dumps(reply).encode(), count, {}
    return 200, b"{}", 1, {}


def serve(provider: str, ready: Any) -> None:
    stats = Stats()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(provider, stats))
    server.daemon_threads = True
    ready.send(server.server_address[1])
    server.serve_forever()


if __name__ == "__main__":  # manual use: python _ack_server.py postmark

    class _Print:
        def send(self, port: int) -> None:
            print(f"listening on 127.0.0.1:{port}", flush=True)

    serve(sys.argv[1], _Print())
