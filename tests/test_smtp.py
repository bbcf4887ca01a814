"""The SMTP backend through the real send loop, against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from newsletter.config import Config
from newsletter.exceptions import ConfigError
from newsletter.mail import make_backend
from newsletter.mail.base import SendCounts
from newsletter.mail.smtp import SMTPBackend
from newsletter.types import DeliveryResult, DeliveryStatus, MessageContent, Recipient
from tests._factories import ListLedger, make_config
from tests._smtp import SMTPServer, smtp_server

SENDER = "weekly@news.example.org"  # the address in tests._factories' [newsletter] sender


def recipient(n: int) -> Recipient:
    address = f"reader{n}@example.com"
    return Recipient(
        subscriber_id=n,
        email=address,
        name=f"Reader {n}",
        values={
            "email": address,
            "name": f"Reader {n}",
            "first_name": f"Reader{n}",
            "unsubscribe_url": f"https://news.example.org/unsubscribe/token-{n}",
        },
    )


def recipients(count: int) -> list[Recipient]:
    return [recipient(n) for n in range(1, count + 1)]


def content(config: Config) -> MessageContent:
    return MessageContent(
        digest_id=7,
        digest_uid="a1b2c3d4e5f60718",
        subject="The Test Weekly: this week",
        from_addr=config.newsletter.sender,
        html='<html><body><p>Hi nlvar:first_name,</p><a href="nlvar:unsubscribe_url">x</a>',
        text="Hi nlvar:first_name,\n\nUnsubscribe: nlvar:unsubscribe_url\n",
        list_id="the-test-weekly.news.example.org",
        message_id_domain="news.example.org",
        unsubscribe_mailto=f"mailto:{SENDER}?subject=unsubscribe",
    )


def send(
    tmp_path: Path,
    server: SMTPServer,
    to: Sequence[Recipient],
    *,
    trust_ca: bool = True,
    progress: Callable[[Sequence[DeliveryResult]], None] | None = None,
    **mail: str | int | float,
) -> tuple[SendCounts, ListLedger]:
    """Configure the backend for ``server`` from a real config and run the real send loop."""
    mail.setdefault("concurrency", 1)
    config = make_config(tmp_path, server.mail_config(trust_ca=trust_ca, **mail))
    backend = SMTPBackend.from_config(config)
    ledger = ListLedger(to)
    counts = backend.send(content(config), ledger, progress=progress)
    return counts, ledger


def by_email(ledger: ListLedger) -> dict[str, DeliveryResult]:
    return {r.email: r for r in ledger.results}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- delivery ------------------------------------------------------------------------------------


def test_plain_batch_each_recipient_gets_one_well_formed_message(tmp_path: Path) -> None:
    to = recipients(3)
    with smtp_server() as server:
        counts, ledger = send(tmp_path, server, to)

    assert counts == SendCounts(sent=3)
    assert ledger.claims == [3]  # one batch ...
    assert server.connections == 1  # ... over one connection
    assert Counter(server.recipients()) == Counter(r.email for r in to)
    results = by_email(ledger)
    for received in server.received:
        (address,) = received.rcpt_tos
        n = int(address.removeprefix("reader").partition("@")[0])
        msg = received.message
        assert received.mail_from == SENDER
        assert not received.tls
        assert msg["To"].addresses[0].addr_spec == address
        assert msg["From"].addresses[0].addr_spec == SENDER
        assert msg.get_content_type() == "multipart/alternative"
        text, html = msg.iter_parts()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        assert f"Hi Reader{n}," in text.get_content()
        assert msg["List-Unsubscribe"] == (
            f"<https://news.example.org/unsubscribe/token-{n}>, "
            f"<mailto:{SENDER}?subject=unsubscribe>"
        )
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert results[address].status == DeliveryStatus.SENT
        assert results[address].message_id == msg["Message-ID"]


def test_one_connection_is_reused_across_the_batches_of_a_thread(tmp_path: Path) -> None:
    with smtp_server() as server:
        counts, ledger = send(tmp_path, server, recipients(7), batch_size=2)

    assert ledger.claims == [2, 2, 2, 1]
    assert counts.sent == 7
    assert server.connections == 1


def test_concurrent_batches_use_one_connection_per_thread(tmp_path: Path) -> None:
    to = recipients(24)
    # The delay keeps the first three batches in flight together, so three threads start.
    with smtp_server(delay=0.02) as server:
        counts, ledger = send(tmp_path, server, to, batch_size=4, concurrency=3)

    assert len(ledger.claims) == 6
    assert counts.sent == 24
    assert Counter(server.recipients()) == Counter(r.email for r in to)
    assert server.connections == 3


# --- TLS -----------------------------------------------------------------------------------------


def test_starttls_with_the_private_ca_from_ca_file(tmp_path: Path) -> None:
    with smtp_server(security="starttls") as server:
        counts, _ = send(tmp_path, server, recipients(2))

    assert counts.sent == 2
    assert [r.tls for r in server.received] == [True, True]


def test_starttls_with_an_untrusted_certificate_stops_before_sending(tmp_path: Path) -> None:
    with smtp_server(security="starttls") as server:
        counts, ledger = send(tmp_path, server, recipients(2), trust_ca=False)

    assert counts.sent == 0
    assert counts.stopped is not None and counts.stopped.fatal
    assert "certificate" in str(counts.stopped) and "not trusted" in str(counts.stopped)
    assert "mail.ca_file" in str(counts.stopped)
    assert server.received == []
    assert len(ledger.released) == 1 and ledger.results == []


def test_the_certificate_must_name_the_host(tmp_path: Path) -> None:
    # Signed by the trusted CA, but for another name than the 127.0.0.1 we connect to.
    with smtp_server(security="starttls", certificate_for=("mail.example.test",)) as server:
        counts, ledger = send(tmp_path, server, recipients(1))

    assert counts.stopped is not None and counts.stopped.fatal
    assert "mismatch" in str(counts.stopped)
    assert server.received == []
    assert len(ledger.released) == 1


def test_implicit_tls(tmp_path: Path) -> None:
    with smtp_server(security="tls") as server:
        counts, _ = send(tmp_path, server, recipients(2))

    assert counts.sent == 2
    assert [r.tls for r in server.received] == [True, True]


# --- AUTH ----------------------------------------------------------------------------------------


def test_auth_over_starttls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "correct horse")
    with smtp_server(security="starttls", auth=("editor", "correct horse")) as server:
        counts, _ = send(
            tmp_path, server, recipients(2), username="editor", password_env="SMTP_PASSWORD"
        )

    assert counts.sent == 2
    assert [r.login for r in server.received] == ["editor", "editor"]


def test_a_wrong_password_stops_the_send_and_releases_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "wrong")
    with smtp_server(security="starttls", auth=("editor", "correct horse")) as server:
        counts, ledger = send(
            tmp_path,
            server,
            recipients(3),
            batch_size=2,
            username="editor",
            password_env="SMTP_PASSWORD",
        )

    assert counts.stopped is not None and counts.stopped.fatal
    assert "credentials of 'editor'" in str(counts.stopped) and "535" in str(counts.stopped)
    assert counts.sent == counts.failed == 0
    assert server.received == []
    assert [len(b) for b in ledger.released] == [2]
    assert len(ledger.pending) == 3  # nothing lost: all still to send
    assert ledger.results == []


def test_a_server_requiring_auth_refuses_the_sender_without_it(tmp_path: Path) -> None:
    with smtp_server(security="starttls", auth=("editor", "correct horse")) as server:
        counts, ledger = send(tmp_path, server, recipients(2))

    assert counts.stopped is not None and counts.stopped.fatal
    assert "refused the sender" in str(counts.stopped) and "530" in str(counts.stopped)
    assert len(ledger.released) == 1 and ledger.results == []


def test_plain_text_auth_to_this_machine_works_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "correct horse")
    with smtp_server(auth=("editor", "correct horse")) as server:
        counts, _ = send(
            tmp_path, server, recipients(1), username="editor", password_env="SMTP_PASSWORD"
        )

    assert counts.sent == 1
    assert server.received[0].login == "editor"
    assert any(
        r.levelno == logging.WARNING and "plain text" in r.getMessage() for r in caplog.records
    )


def test_plain_text_auth_to_another_host_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "correct horse")
    mail = """
[mail]
backend = "smtp"

[mail.smtp]
host = "mail.example.com"
security = "none"
username = "editor"
password_env = "SMTP_PASSWORD"
"""
    with pytest.raises(ConfigError) as raised:
        SMTPBackend.from_config(make_config(tmp_path, mail))
    assert raised.value.key == "mail.smtp.security"
    assert "plain text" in str(raised.value)


# --- per-recipient failures and connection trouble -----------------------------------------------


def test_a_refused_recipient_fails_and_the_others_are_sent(tmp_path: Path) -> None:
    to = recipients(4)
    refused, deferred = to[1].email, to[2].email
    with smtp_server(refuse={refused}, defer={deferred}) as server:
        counts, ledger = send(tmp_path, server, to)

    assert (counts.sent, counts.failed, counts.stopped) == (2, 2, None)
    results = by_email(ledger)
    assert results[to[0].email].status == results[to[3].email].status == DeliveryStatus.SENT
    assert results[refused].status == results[deferred].status == DeliveryStatus.FAILED
    assert "550 5.1.1" in str(results[refused].error)
    assert "User unknown" in str(results[refused].error)
    assert "temporarily" in str(results[deferred].error)
    assert "450 4.2.1" in str(results[deferred].error)
    assert server.recipients() == [to[0].email, to[3].email]
    assert server.connections == 1  # RSET after a refusal keeps the connection usable


def test_an_unreachable_server_is_retryable_and_releases_the_batch(tmp_path: Path) -> None:
    mail = f"""
[mail]
backend = "smtp"
concurrency = 1

[mail.smtp]
host = "127.0.0.1"
port = {closed_port()}
security = "none"
max_retries = 1
"""
    backend = SMTPBackend.from_config(make_config(tmp_path, mail))
    ledger = ListLedger(recipients(3))
    started = time.monotonic()
    counts = backend.send(content(make_config(tmp_path)), ledger)

    assert time.monotonic() - started < 5  # one retry after a short backoff, then stop
    assert counts.stopped is not None
    assert counts.stopped.retryable and not counts.stopped.fatal
    assert "cannot connect to 127.0.0.1" in str(counts.stopped)
    assert [len(b) for b in ledger.released] == [3]
    assert ledger.results == [] and len(ledger.pending) == 3


def test_an_idle_connection_closed_by_the_server_is_reopened(tmp_path: Path) -> None:
    to = recipients(4)
    with smtp_server() as server:
        # The loop reports each batch before it starts the next one (concurrency 1): drop the
        # connection in between, as a server's idle timeout would.
        counts, _ = send(
            tmp_path, server, to, batch_size=2, progress=lambda _: server.drop_connections()
        )

    assert counts == SendCounts(sent=4)
    assert Counter(server.recipients()) == Counter(r.email for r in to)
    assert server.connections == 2


def test_a_connection_lost_during_data_makes_that_message_uncertain(tmp_path: Path) -> None:
    to = recipients(3)
    with smtp_server(drop_after=1) as server:
        counts, ledger = send(tmp_path, server, to)

    # Accepted before and after the drop; the one cut off is not sent again.
    assert (counts.sent, counts.failed, counts.uncertain) == (2, 1, 0)
    assert ledger.released == []
    results = by_email(ledger)
    lost = results[to[1].email]
    assert lost.status == DeliveryStatus.FAILED
    assert lost.error is not None and lost.error.startswith("uncertain:")
    assert "may have been delivered" in lost.error
    assert [m.rcpt_tos for m in server.unacknowledged] == [(to[1].email,)]
    assert server.recipients() == [to[0].email, to[2].email]
    assert server.connections == 2


def test_a_server_gone_mid_batch_keeps_what_was_delivered(tmp_path: Path) -> None:
    to = recipients(5)
    with smtp_server(drop_after=1, refuse_after_drop=True) as server:
        counts, ledger = send(tmp_path, server, to, batch_size=3, max_retries=0)

    # Batch 1: one delivered (recorded SENT, never sent again), one uncertain, one not
    # attempted; recorded as a whole. Batch 2 cannot connect: released, and the send stops.
    assert (counts.sent, counts.failed, counts.uncertain) == (1, 2, 0)
    results = by_email(ledger)
    assert results[to[0].email].status == DeliveryStatus.SENT
    uncertain, not_sent = results[to[1].email], results[to[2].email]
    assert uncertain.error is not None and uncertain.error.startswith("uncertain:")
    assert not_sent.status == DeliveryStatus.FAILED
    assert not_sent.error is not None and not_sent.error.startswith("not sent:")
    assert "cannot connect" in not_sent.error
    assert counts.stopped is not None and counts.stopped.retryable
    assert [[r.email for r in b.recipients] for b in ledger.released] == [
        [to[3].email, to[4].email]
    ]
    assert server.recipients() == [to[0].email]


def test_a_batch_with_nothing_confirmed_but_one_maybe_delivered_stays_uncertain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    to = recipients(3)
    with smtp_server(drop_after=0, refuse_after_drop=True) as server:
        counts, ledger = send(tmp_path, server, to, max_retries=0)

    assert (counts.sent, counts.failed, counts.uncertain) == (0, 0, 3)
    assert ledger.results == [] and ledger.released == []  # left in flight, as a whole
    assert [m.rcpt_tos for m in server.unacknowledged] == [(to[0].email,)]
    assert server.received == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("3 recipients uncertain" in e and to[0].email in e for e in errors)


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("tls", 465), ("none", 25)])
def test_default_ports(tmp_path: Path, security: str, port: int) -> None:
    mail = '[mail]\nbackend = "smtp"\n[mail.smtp]\nhost = "mail.example.com"\n'
    mail += f'security = "{security}"\n'
    backend = make_backend(make_config(tmp_path, mail))
    assert isinstance(backend, SMTPBackend)
    assert (backend.port, backend.max_batch_size, backend.idempotent) == (port, 100, False)
    assert backend.describe() == f"smtp (mail.example.com:{port}, {security})"


@pytest.mark.parametrize("layout", ["table", "flat"])
@pytest.mark.parametrize(
    ("keys", "key", "message", "at_load"),
    [
        ('username = "editor"\npassword_env = "NL_TEST_UNSET"', "password_env", "not set", False),
        ('password_env = "NL_TEST_UNSET"', "username", "required", True),
        ('security = "none"\nca_file = "ca.pem"', "ca_file", "only used", True),
        ('ca_file = "missing.pem"', "ca_file", "cannot load", False),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    keys: str,
    key: str,
    message: str,
    at_load: bool,
) -> None:
    """In ``[mail.smtp]`` and in the deprecated flat ``[mail]``: a key found wrong while the
    file is read is named as written; one found wrong when connecting by its new place."""
    monkeypatch.delenv("NL_TEST_UNSET", raising=False)
    if layout == "table":
        mail = f'[mail]\nbackend = "smtp"\n\n[mail.smtp]\nhost = "mail.example.com"\n{keys}\n'
    else:
        mail = f'[mail]\nbackend = "smtp"\nhost = "mail.example.com"\n{keys}\n'
    with pytest.raises(ConfigError) as raised:
        SMTPBackend.from_config(make_config(tmp_path, mail))
    flat_at_load = layout == "flat" and at_load
    assert raised.value.key == (f"mail.{key}" if flat_at_load else f"mail.smtp.{key}")
    assert message in str(raised.value)


def test_the_batch_size_over_the_smtp_limit_names_the_common_key(tmp_path: Path) -> None:
    mail = '[mail]\nbackend = "smtp"\nbatch_size = 101\n\n[mail.smtp]\nhost = "mail.example.com"\n'
    with pytest.raises(ConfigError) as raised:
        SMTPBackend.from_config(make_config(tmp_path, mail))
    assert raised.value.key == "mail.batch_size"
    assert "at most 100" in str(raised.value)
