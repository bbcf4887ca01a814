"""The outbox backend through the real send loop, and the messages it writes."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter import clock
from newsletter.config import Config
from newsletter.exceptions import ConfigError, MailError
from newsletter.mail import make_backend
from newsletter.mail.base import PreparedContent, SendCounts
from newsletter.mail.message import build_message, message_id
from newsletter.mail.outbox import OutboxBackend
from newsletter.render.digest import DigestRenderer
from newsletter.types import DeliveryStatus, MessageContent, Recipient
from tests._factories import ListLedger, make_article, make_config, make_recipient

DATE = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)


recipient = make_recipient


RECIPIENTS = [
    recipient(1, "ada@example.com", "Ada Lovelace"),
    recipient(2, "grace@example.org", None),
    recipient(3, "zoe@example.net", "Zoë <b>&amp; Ünïcode"),
]


def content(**changes: object) -> MessageContent:
    values: dict[str, object] = {
        "digest_id": 7,
        "digest_uid": "a1b2c3d4e5f60718",
        "subject": "The Test Weekly: Grüße aus Köln 😀 — und mehr",
        "from_addr": "The Test Weekly <weekly@news.example.org>",
        "html": (
            '<html><body><p>Hi nlvar:first_name,</p><p><a href="nlvar:unsubscribe_url">'
            "Unsubscribe</a></p></body></html>"
        ),
        "text": "Hi nlvar:first_name,\n\nUnsubscribe: nlvar:unsubscribe_url\n",
        "reply_to": "editor@news.example.org",
        "list_id": "the-test-weekly.news.example.org",
        "message_id_domain": "news.example.org",
        "unsubscribe_mailto": "mailto:weekly@news.example.org?subject=unsubscribe",
    }
    values.update(changes)
    return MessageContent(**values)  # type: ignore[arg-type]


def read(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> dict[str, str]:
    """Decoded bodies by content type, with the wire's CRLF line ends as "\\n"."""
    out = {}
    for part in msg.iter_parts():
        assert isinstance(part, EmailMessage)
        out[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
    return out


@pytest.fixture(autouse=True)
def fixed_date() -> Iterator[None]:
    clock.set_now(lambda: DATE)
    yield
    clock.set_now(None)


def test_one_eml_per_recipient_through_the_send_loop(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path / "outbox", batch_size=2)
    ledger = ListLedger(RECIPIENTS)
    assert backend.send(content(), ledger) == SendCounts(sent=3)
    assert ledger.claims == [2, 1]
    assert [r.status for r in ledger.results] == [DeliveryStatus.SENT] * 3
    files = sorted((tmp_path / "outbox" / "7").iterdir())
    assert [f.name for f in files] == [
        "1-ada@example.com.eml",
        "2-grace@example.org.eml",
        "3-zoe@example.net.eml",
    ]
    for path, rcpt, result in zip(files, RECIPIENTS, ledger.results, strict=True):
        msg = read(path)
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        for header in (
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
            "Reply-To",
        ):
            assert msg[header], header
        assert msg["To"].addresses[0].addr_spec == rcpt.email
        assert msg["To"].addresses[0].display_name == (rcpt.name or "")
        assert msg["From"] == "The Test Weekly <weekly@news.example.org>"
        assert msg["Date"].datetime == DATE
        assert (
            msg["Message-ID"]
            == result.message_id
            == f"<a1b2c3d4e5f60718.{rcpt.subscriber_id}@news.example.org>"
        )
        unsubscribe = rcpt.values["unsubscribe_url"]
        assert msg["List-Unsubscribe"] == (
            f"<{unsubscribe}>, <mailto:weekly@news.example.org?subject=unsubscribe>"
        )
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == "<the-test-weekly.news.example.org>"
        assert [p for p in msg.iter_parts() if p["MIME-Version"]] == []  # top level only


def test_bodies_are_filled_per_recipient_and_escaped_in_html(tmp_path: Path) -> None:
    OutboxBackend(tmp_path).send(content(), ListLedger(RECIPIENTS))
    zoe = parts(read(tmp_path / "7" / "3-zoe@example.net.eml"))
    assert zoe["text/plain"].startswith("Hi Zoë,\n")
    assert "Unsubscribe: https://news.example.org/unsubscribe/token-3?x=1&y=2" in zoe["text/plain"]
    assert "Hi Zoë,</p>" in zoe["text/html"]
    assert 'href="https://news.example.org/unsubscribe/token-3?x=1&amp;y=2"' in zoe["text/html"]
    grace = parts(read(tmp_path / "7" / "2-grace@example.org.eml"))
    assert grace["text/plain"].startswith("Hi there,\n")
    html = content(html="<p>nlvar:name</p>")
    OutboxBackend(tmp_path / "b").send(html, ListLedger(RECIPIENTS[2:]))
    assert (
        "<p>Zoë &lt;b&gt;&amp;amp; Ünïcode</p>"
        in parts(read(tmp_path / "b" / "7" / "3-zoe@example.net.eml"))["text/html"]
    )


def test_non_ascii_subject_and_names_round_trip_in_a_7bit_message(tmp_path: Path) -> None:
    OutboxBackend(tmp_path).send(content(), ListLedger(RECIPIENTS))
    path = tmp_path / "7" / "3-zoe@example.net.eml"
    raw = path.read_bytes()
    assert raw.isascii()  # encoded words and quoted-printable: safe on any relay
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = read(path)
    assert msg["Subject"] == "The Test Weekly: Grüße aus Köln 😀 — und mehr"
    assert msg["To"].addresses[0].display_name == "Zoë <b>&amp; Ünïcode"


def test_a_long_unsubscribe_url_stays_one_literal_line(tmp_path: Path) -> None:
    # The email package would fold a long header into RFC 2047 encoded words, which no
    # mailbox provider decodes in List-Unsubscribe.
    url = "https://news.example.org/unsubscribe/" + "t" * 150
    rcpt = replace(RECIPIENTS[0], values={**RECIPIENTS[0].values, "unsubscribe_url": url})
    OutboxBackend(tmp_path).send(content(), ListLedger([rcpt]))
    raw = (tmp_path / "7" / "1-ada@example.com.eml").read_bytes()
    assert f"\r\nList-Unsubscribe: <{url}>, <mailto:".encode() in raw


def test_sending_the_same_batch_twice_leaves_one_file_per_recipient(tmp_path: Path) -> None:
    backend = OutboxBackend(tmp_path)
    first, second = ListLedger(RECIPIENTS), ListLedger(RECIPIENTS)
    backend.send(content(), first)
    backend.send(content(), second)
    assert len(list(tmp_path.rglob("*"))) == 4  # the digest folder and three messages
    assert [r.message_id for r in first.results] == [r.message_id for r in second.results]
    assert [r.status for r in second.results] == [DeliveryStatus.SENT] * 3


@pytest.mark.parametrize(
    ("bad", "header"),
    [
        (recipient(9, "eve@example.com", "Eve\r\nBcc: victim@example.com"), "To"),
        (recipient(9, "eve@example.com\nBcc: victim@example.com", "Eve"), "To"),
        (replace(recipient(9, "eve@example.com", "Eve"), values={}), "unsubscribe_url"),
        (recipient(9, "not-an-address", "Eve"), "To"),
    ],
)
def test_a_bad_recipient_fails_alone(tmp_path: Path, bad: Recipient, header: str) -> None:
    ledger = ListLedger([RECIPIENTS[0], bad, RECIPIENTS[1]])
    assert OutboxBackend(tmp_path).send(content(), ledger) == SendCounts(sent=2, failed=1)
    statuses = [(r.subscriber_id, r.status) for r in ledger.results]
    assert statuses == [
        (1, DeliveryStatus.SENT),
        (9, DeliveryStatus.FAILED),
        (2, DeliveryStatus.SENT),
    ]
    failed = ledger.results[1]
    assert failed.error is not None and header in failed.error
    assert failed.error.startswith("outbox: ")
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == [
        "1-ada@example.com.eml",
        "2-grace@example.org.eml",
    ]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"subject": "Hello\nBcc: victim@example.com"}, "Subject header would contain a line"),
        ({"subject": "  "}, "Subject header is empty"),
        ({"from_addr": "Weekly <weekly@news.example.org>\r\nBcc: x@y"}, "From header"),
        ({"list_id": "list\n.example.org"}, "List-Id header"),
        ({"message_id_domain": "bad domain"}, "invalid Message-ID"),
        ({"from_addr": "no address here"}, "From header is not one valid address"),
    ],
)
def test_build_message_refuses_bad_shared_content(changes: dict[str, str], fragment: str) -> None:
    with pytest.raises(MailError, match=fragment) as info:
        build_message(PreparedContent(content(**changes)), RECIPIENTS[0], date=DATE)
    assert info.value.backend == "message"


def test_build_message_refuses_a_non_http_unsubscribe_url_and_a_naive_date() -> None:
    rcpt = replace(RECIPIENTS[0], values={"unsubscribe_url": "nlvar:unsubscribe_url"})
    with pytest.raises(MailError, match="http"):
        build_message(PreparedContent(content()), rcpt, date=DATE)
    with pytest.raises(MailError, match="timezone"):
        build_message(PreparedContent(content()), RECIPIENTS[0], date=DATE.replace(tzinfo=None))


def test_optional_headers_are_left_out_when_not_configured() -> None:
    bare = content(reply_to=None, list_id=None, unsubscribe_mailto=None)
    msg = build_message(PreparedContent(bare), RECIPIENTS[0], date=DATE)
    assert msg["Reply-To"] is None and msg["List-Id"] is None
    assert msg["List-Unsubscribe"] == f"<{RECIPIENTS[0].values['unsubscribe_url']}>"


def test_message_id_is_deterministic() -> None:
    assert message_id(content(), RECIPIENTS[1]) == "<a1b2c3d4e5f60718.2@news.example.org>"
    msg = build_message(PreparedContent(content()), RECIPIENTS[1], date=DATE)
    assert msg["Message-ID"] == message_id(content(), RECIPIENTS[1])


def test_a_rendered_digest_goes_out_whole(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    rendered = DigestRenderer(config).render([make_article(0), make_article(1)], now=DATE)
    shared = content(subject=rendered.subject, html=rendered.html, text=rendered.text)
    OutboxBackend(tmp_path / "outbox").send(shared, ListLedger(RECIPIENTS))
    msg = read(tmp_path / "outbox" / "7" / "1-ada@example.com.eml")
    assert msg["Subject"] == rendered.subject
    bodies = parts(msg)
    for body in bodies.values():
        assert "nlvar:" not in body
        assert "https://news.example.org/unsubscribe/token-1?x=1" in body
    assert "Hi Ada," in bodies["text/plain"]
    assert "@media (prefers-color-scheme: dark)" in bodies["text/html"]


def test_make_backend(tmp_path: Path) -> None:
    table = '[mail]\nbatch_size = 5\n[mail.outbox]\noutbox_dir = "out"\n'
    config: Config = make_config(tmp_path, table)
    backend = make_backend(config)
    assert isinstance(backend, OutboxBackend)
    assert backend.directory == tmp_path / "out" and backend.batch_size == 5
    assert backend.idempotent
    unknown = replace(config, mail=replace(config.mail, backend="carrier-pigeon"))
    with pytest.raises(ConfigError) as info:
        make_backend(unknown)
    assert info.value.key == "mail.backend"
    assert "carrier-pigeon" in str(info.value)


def test_a_file_that_cannot_be_written_stops_the_send_and_fails_nobody(tmp_path: Path) -> None:
    """The machine's fault, not the recipient's: the send stops naming the path and the
    reason, what was written is recorded, the rest is given back (pending), none failed."""
    backend = OutboxBackend(tmp_path)
    blocked = backend.path_for(7, RECIPIENTS[1])
    blocked.mkdir(parents=True)  # a folder where the message should go
    ledger = ListLedger(RECIPIENTS)
    counts = backend.send(content(), ledger)
    assert (counts.sent, counts.failed) == (1, 0)
    assert counts.stopped is not None and counts.stopped.fatal
    assert str(blocked) in str(counts.stopped) and "Is a directory" in str(counts.stopped)
    assert [r.email for r in ledger.results] == [RECIPIENTS[0].email]
    assert all(r.status == DeliveryStatus.SENT for r in ledger.results)
    assert [r.email for r in ledger.pending] == [r.email for r in RECIPIENTS[1:]]
