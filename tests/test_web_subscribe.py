"""Subscribe, confirm and unsubscribe over real HTTP on 127.0.0.1, with mail in the outbox.

The confirmation mails are sent by the site's own thread in the order asked for; a test that
needs to know a mail was *not* sent subscribes another address afterwards and waits for that
one: once it is out, everything asked for before it has been dealt with.

Several ``serve`` processes on one database are several apps (or mailers, or storages) with
nothing shared but the database; where a test counts mail that a second copy would overwrite
in the outbox, it counts at a real SMTP server instead. The storage-level tests run on SQLite
and on a real PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text, update

from newsletter.config import load_config, parse_config
from newsletter.core import make_publisher
from newsletter.exceptions import ConfigError
from newsletter.storage import SqlStorage, schema
from newsletter.tokens import ConfirmTokens, UnsubscribeTokens
from newsletter.types import Digest, DigestCounts, SubscriberStatus
from newsletter.web.proxy import TrustedProxies
from newsletter.web.public import create_public_app
from newsletter.web.ratelimit import RateLimiter
from newsletter.web.site import Site
from newsletter.web.subscription import MAX_ATTEMPTS, ConfirmationMailer, retry_after
from tests._browser import ServerThread, wait_for
from tests._smtp import SMTPServer, smtp_server
from tests.test_web_feeds import (
    SECRET,
    Running,
    confirm_link,
    link_secret,
    running_site,
    unsubscribe_link,
)

__all__ = ["link_secret"]  # the autouse fixture, imported to apply here too


@pytest.fixture
def site(example_project: Path, fixed_clock: list[datetime]) -> Running:
    with running_site(example_project) as running:
        yield running


def subscribe(site: Running, address: str, name: str = "", **headers: str) -> requests.Response:
    return requests.post(
        site.url + "/subscribe",
        data={"email": address, "name": name},
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        timeout=10,
    )


def status_of(site: Running, address: str) -> SubscriberStatus | None:
    with site.publisher() as publisher:
        found = publisher.storage.get_subscriber(address)
    return found.status if found else None


def settle(site: Running, marker: str) -> None:
    """Wait until every confirmation asked for so far has been dealt with (see docstring)."""
    assert subscribe(site, marker).status_code == 200
    site.wait_for_mail(marker)


# --- subscribe and confirm ----------------------------------------------------------------------


def test_subscribe_confirm_activates(site: Running) -> None:
    form = requests.get(site.url + "/subscribe", timeout=10)
    assert form.status_code == 200 and 'name="email"' in form.text

    response = subscribe(site, "Ada@Example.com", "Ada Lovelace")
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    assert status_of(site, "ada@example.com") == SubscriberStatus.PENDING

    message = site.wait_for_mail("ada@example.com")
    assert message["Subject"] == "Confirm your subscription to The Example Weekly"
    assert "Ada Lovelace" in str(message["To"])
    link = confirm_link(message)
    assert link.startswith(site.url + "/confirm/")
    html = message.get_body(preferencelist=("html",))
    assert html is not None and link in html.get_content().replace("&amp;", "&")
    # The confirmation carries the subscriber's own unsubscribe link, RFC 8058 style.
    assert unsubscribe_link(message).startswith(site.url + "/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    head = requests.head(link, timeout=10)  # a probe is not a confirmation
    assert head.status_code == 200
    # Nor is a GET, which mail filters make for every link: it shows the button.
    for _ in range(3):
        shown = requests.get(link, timeout=10)
        assert shown.status_code == 200
        assert 'id="confirm-form" method="post"' in shown.text and "ada@example.com" in shown.text
        assert shown.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
    assert status_of(site, "ada@example.com") == SubscriberStatus.PENDING

    for _ in range(2):  # idempotent
        confirmed = requests.post(link, timeout=10)
        assert confirmed.status_code == 200
        assert "You are subscribed" in confirmed.text and "ada@example.com" in confirmed.text
        assert confirmed.headers["cache-control"] == "no-store"
        assert confirmed.headers["referrer-policy"] == "same-origin"
    assert status_of(site, "ada@example.com") == SubscriberStatus.ACTIVE


def test_json_subscribe(site: Running) -> None:
    response = requests.post(
        site.url + "/subscribe", json={"email": "json@example.com", "name": "J"}, timeout=10
    )
    assert response.status_code == 202
    assert response.json() == {"status": "check your inbox", "email": "json@example.com"}
    site.wait_for_mail("json@example.com")
    bad = requests.post(site.url + "/subscribe", json={"email": "nope"}, timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()
    wrong_type = requests.post(
        site.url + "/subscribe",
        data=b"email=x@example.com",
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert wrong_type.status_code == 415
    huge = requests.post(site.url + "/subscribe", data={"email": "x" * 20_000}, timeout=10)
    assert huge.status_code == 413


def test_invalid_address_shows_the_form_again(site: Running) -> None:
    response = subscribe(site, "not-an-address", "Someone <b>bold</b>")
    assert response.status_code == 400
    assert 'id="error"' in response.text
    assert 'value="not-an-address"' in response.text
    assert "<b>bold</b>" not in response.text and "&lt;b&gt;bold&lt;/b&gt;" in response.text
    with site.publisher() as publisher:
        assert publisher.storage.count_subscribers() == 0


def test_a_repeated_subscribe_reveals_nothing(site: Running) -> None:
    with site.publisher() as publisher:
        publisher.add_subscriber("active@example.com")
        publisher.add_subscriber("left@example.com")
        publisher.remove_subscriber("left@example.com")
        publisher.add_subscriber("bounced@example.com")
        publisher.suppress("bounced@example.com", SubscriberStatus.BOUNCED, "test")

    def answer(address: str) -> tuple[int, str]:
        response = subscribe(site, address)
        # The page repeats the address typed; everything else must be the same.
        return response.status_code, response.text.replace(address, "ADDRESS")

    first = answer("new@example.com")
    assert answer("new@example.com") == first  # pending, asked again at once
    assert answer("active@example.com") == first
    assert answer("bounced@example.com") == first
    assert answer("left@example.com") == first
    settle(site, "marker@example.com")

    mails = site.mails()
    assert "new@example.com" in mails  # once: the second request within minutes sent nothing
    assert "left@example.com" in mails  # an unsubscribed address goes through confirmation
    assert "active@example.com" not in mails and "bounced@example.com" not in mails
    assert status_of(site, "active@example.com") == SubscriberStatus.ACTIVE
    assert status_of(site, "bounced@example.com") == SubscriberStatus.BOUNCED
    assert status_of(site, "left@example.com") == SubscriberStatus.PENDING


def test_pending_address_gets_another_mail_after_a_while(
    site: Running, fixed_clock: list[datetime]
) -> None:
    subscribe(site, "slow@example.com")
    first = confirm_link(site.wait_for_mail("slow@example.com"))
    fixed_clock[0] += timedelta(minutes=11)
    subscribe(site, "slow@example.com")
    settle(site, "marker@example.com")
    second = confirm_link(site.mails()["slow@example.com"])  # the same file, rewritten
    assert second != first
    assert requests.post(first, timeout=10).status_code == 200  # either link confirms
    assert status_of(site, "slow@example.com") == SubscriberStatus.ACTIVE


def test_rate_limit_per_client_address(example_project: Path) -> None:
    with running_site(example_project, rate=3) as site:
        answers = [subscribe(site, f"r{i}@example.com").status_code for i in range(4)]
        assert answers == [200, 200, 200, 429]
        refused = subscribe(site, "r9@example.com")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        assert status_of(site, "r9@example.com") is None
        # 127.0.0.1 is a trusted proxy by default: the client it forwards for is counted.
        other = subscribe(site, "r10@example.com", X_Forwarded_For="203.0.113.7")
        assert other.status_code == 200
        json_refused = requests.post(site.url + "/subscribe", json={"email": "a@b.c"}, timeout=5)
        assert json_refused.status_code == 429 and "retry-after" in json_refused.headers


def test_forwarded_headers_count_only_from_trusted_proxies(example_project: Path) -> None:
    with running_site(example_project, rate=1, web='trusted_proxies = ["10.0.0.0/8"]\n') as site:
        assert subscribe(site, "p1@example.com", X_Forwarded_For="203.0.113.7").status_code == 200
        # Not from a trusted proxy: the header is the client's own claim and changes nothing.
        assert subscribe(site, "p2@example.com", X_Forwarded_For="203.0.113.8").status_code == 429


T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
RESEND = timedelta(minutes=10)
LEASE = timedelta(minutes=5)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database for one test: a SQLite file, or a fresh database on the test PostgreSQL
    server, as the test's ``db_url`` parameter says (see ``ENGINES``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


ENGINES = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@contextmanager
def two_processes(url: str) -> Iterator[tuple[SqlStorage, SqlStorage]]:
    """Two storages on one database, as two ``serve`` processes hold them: nothing shared but
    the database (each has its own engine and connections)."""
    a, b = SqlStorage(url), SqlStorage(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def bucket_keys(storage: SqlStorage) -> list[str]:
    with storage.engine.connect() as conn:
        return sorted(conn.execute(select(schema.rate_buckets.c.key)).scalars())


@ENGINES
def test_rate_limiter_refills_and_forgets_full_buckets(db_url: str) -> None:
    now = [0.0]
    # A burst of 6, then one every 10 s.
    limiter = RateLimiter(6, clock=lambda: T0 + timedelta(seconds=now[0]))
    with two_processes(db_url) as (a, b):
        # One bucket per client whichever process answers: three tokens through each.
        assert [limiter.acquire(s, "a") for s in (a, b, a, b, a, b)] == [0.0] * 6
        assert 9.9 < limiter.acquire(b, "a") <= 10.0
        assert retry_after(limiter.acquire(a, "a")) == "10"
        assert limiter.acquire(a, "b") == 0.0  # another client has its own bucket
        now[0] += 10
        assert limiter.acquire(b, "a") == 0.0
        assert limiter.acquire(a, "a") > 0  # that was the one token back
        now[0] += 120  # "a" and "b" are full again: nothing to remember about them
        limiter.acquire(b, "c")
        keys = bucket_keys(a)
    assert len(keys) == 1 and re.fullmatch(r"[0-9a-f]{64}", keys[0])  # a hash, never the key


@ENGINES
def test_the_rate_limit_is_one_limit_across_processes(db_url: str) -> None:
    limiter = RateLimiter(0.5, burst=10)  # one token back every two minutes: none in this test
    with two_processes(db_url) as (a, b):

        def hit(i: int) -> float:
            return limiter.acquire((a, b)[i % 2], "203.0.113.7")

        with ThreadPoolExecutor(8) as pool:
            waits = list(pool.map(hit, range(40)))
        assert waits.count(0.0) == 10  # the burst, once, for both processes together
        assert all(100 < wait <= 120 for wait in waits if wait)
        keys = bucket_keys(b)
    assert len(keys) == 1 and "203.0.113.7" not in keys[0]


@ENGINES
def test_webhook_tokens_are_accepted_once_across_processes(db_url: str) -> None:
    keep = T0 + timedelta(minutes=20)
    with two_processes(db_url) as (a, b):

        def remember(i: int) -> bool:
            storage = (a, b)[i % 2]
            return storage.remember_webhook_token("mailgun", "tok-1", expires_at=keep, now=T0)

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(remember, range(16))).count(True) == 1
        assert not a.remember_webhook_token("mailgun", "tok-1", expires_at=keep, now=T0)
        assert a.remember_webhook_token("other", "tok-1", expires_at=keep, now=T0)  # its own
        b.forget_webhook_token("mailgun", "tok-1")  # the request failed on our side
        assert a.remember_webhook_token("mailgun", "tok-1", expires_at=keep, now=T0)
        # Expired tokens go with the next call: the table holds the last window's only.
        later = keep + timedelta(seconds=1)
        assert b.remember_webhook_token(
            "mailgun", "tok-2", expires_at=later + timedelta(minutes=20), now=later
        )
        with a.engine.connect() as conn:
            keys = list(conn.execute(select(schema.webhook_tokens.c.key)).scalars())
    assert len(keys) == 1 and "tok" not in keys[0]


@ENGINES
def test_confirmation_claims_never_overlap(db_url: str) -> None:
    with two_processes(db_url) as (a, b):
        for i in range(30):
            _, send = a.request_subscription(f"c{i}@example.com", None, T0, resend_after=RESEND)
            assert send
        claimed: list[int] = []
        lock = threading.Lock()

        def mailer(storage: SqlStorage) -> None:
            while claims := storage.claim_confirmations(limit=2, lease=LEASE):
                for claim in claims:
                    assert claim.attempts == 1
                    assert storage.finish_confirmation(claim, retry_in=None)
                    with lock:
                        claimed.append(claim.subscriber.id)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(mailer, [a, b] * 3))
        assert len(claimed) == 30 and len(set(claimed)) == 30
        assert a.claim_confirmations(limit=10, lease=LEASE) == []


def due_at(storage: SqlStorage, address: str) -> tuple[datetime | None, int]:
    sub = schema.subscribers
    with storage.engine.connect() as conn:
        row = conn.execute(
            select(sub.c.confirm_due_at, sub.c.confirm_attempts).where(sub.c.email == address)
        ).one()
    return row.confirm_due_at, row.confirm_attempts


@ENGINES
def test_a_claim_left_by_a_dead_process_is_taken_again(db_url: str) -> None:
    with two_processes(db_url) as (a, b):
        x, _ = a.request_subscription("x@example.com", None, T0, resend_after=RESEND)
        # Process a claims it and dies before it can close the claim.
        [dead] = a.claim_confirmations(limit=5, lease=timedelta(milliseconds=300))
        assert b.claim_confirmations(limit=5, lease=LEASE) == []  # held, not waited for
        time.sleep(0.4)
        [again] = b.claim_confirmations(limit=5, lease=LEASE)
        assert (again.subscriber.id, again.attempts) == (x.id, 2)
        assert not a.finish_confirmation(dead, retry_in=None)  # no longer a's claim
        assert b.finish_confirmation(again, retry_in=timedelta(hours=1))  # failed: later
        assert a.claim_confirmations(limit=5, lease=LEASE) == []
        assert due_at(a, "x@example.com")[1] == 2
        # A new request (past the resend throttle) is due at once, its attempts counted anew.
        _, send = a.request_subscription("x@example.com", None, T0 + RESEND, resend_after=RESEND)
        assert send
        [fresh] = b.claim_confirmations(limit=5, lease=LEASE)
        assert fresh.attempts == 1 and b.finish_confirmation(fresh, retry_in=None)
        assert due_at(a, "x@example.com") == (None, 1)
        # Confirmed (or gone) before its mail went: nothing to send, and the mark is dropped.
        y, _ = a.request_subscription("y@example.com", None, T0, resend_after=RESEND)
        a.confirm_subscriber(y.id, T0)
        assert b.claim_confirmations(limit=5, lease=LEASE) == []
        assert due_at(a, "y@example.com")[0] is None


@contextmanager
def another_process(site: Running) -> Iterator[Running]:
    """A second public app on the same config and database, as a second ``newsletter serve``
    behind the same load balancer: its own Site, Publisher, engine, limiter and mailer."""
    app = create_public_app(
        site.config, trusted_proxies=load_config(site.config).web.trusted_proxies
    )
    with ServerThread(app) as server:
        yield Running(url=server.url, config=site.config, server=server)


def test_two_serve_processes_share_the_rate_limit(example_project: Path) -> None:
    with running_site(example_project, rate=3) as site, another_process(site) as other:
        answers = [
            subscribe(s, f"r{i}@example.com").status_code
            for i, s in enumerate((site, other, site, other))
        ]
        assert answers == [200, 200, 200, 429]
        refused = subscribe(site, "r9@example.com")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        with site.publisher() as publisher:
            assert isinstance(publisher.storage, SqlStorage)
            keys = bucket_keys(publisher.storage)
        assert len(keys) == 1 and "127.0.0.1" not in keys[0]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with smtp_server(defer={"busy@example.com"}) as server:
        yield server


def mail_through(config: Path, smtp: SMTPServer, *, storage_url: str | None = None) -> Path:
    """Point the project's [mail] at the SMTP server (which counts every message, where the
    outbox would overwrite a second copy) and, given a URL, its [storage] at that database."""
    body = re.sub(r"\[mail\]\n(?:[^\[].*\n|\n)*", smtp.mail_config() + "\n", config.read_text())
    if storage_url is not None:
        body = re.sub(r'(?m)^path = "newsletter.db".*$', f'url = "{storage_url}"', body)
    config.write_text(body)
    return config


def test_a_confirmation_left_due_by_a_crashed_process_is_sent_once(
    example_project: Path, smtp: SMTPServer
) -> None:
    config = mail_through(example_project, smtp)
    with make_publisher(load_config(config)) as publisher:
        # A process answered this request (the mark is committed with it) and died before
        # its thread sent the mail.
        assert publisher.request_subscription("left@example.com", "Left Behind") is not None
    with running_site(config) as site:
        received = wait_for(lambda: smtp.received, timeout=10)[0]  # at start, unasked
        assert received.rcpt_tos == ("left@example.com",)
        settle_smtp(site, smtp, "marker@example.com")
        assert Counter(smtp.recipients())["left@example.com"] == 1
        with site.publisher() as publisher:
            assert isinstance(publisher.storage, SqlStorage)
            assert due_at(publisher.storage, "left@example.com") == (None, 1)
        assert requests.post(confirm_link(received.message), timeout=10).status_code == 200
        assert status_of(site, "left@example.com") == SubscriberStatus.ACTIVE


def settle_smtp(site: Running, smtp: SMTPServer, marker: str) -> None:
    """``settle`` for mail that goes to the SMTP server."""
    assert subscribe(site, marker).status_code == 200
    wait_for(lambda: marker in smtp.recipients(), timeout=10)


@ENGINES
def test_two_mailers_never_send_a_confirmation_twice(
    example_project: Path, smtp: SMTPServer, db_url: str
) -> None:
    config = mail_through(example_project, smtp, storage_url=db_url)
    addresses = [f"m{i}@example.com" for i in range(40)]
    with make_publisher(load_config(config)) as publisher:
        for address in addresses:
            publisher.request_subscription(address)
        # And one whose sender died mid-send, holding its claim for another second.
        publisher.request_subscription("mid@example.com")
        claims = publisher.storage.claim_confirmations(limit=1, lease=timedelta(seconds=1))
        assert [c.subscriber.email for c in claims] == ["m0@example.com"]
    sites = [Site(config), Site(config)]
    mailers = [ConfirmationMailer(s, poll_seconds=0.1) for s in sites]
    try:
        for mailer in mailers:
            mailer.start()
        wait_for(lambda: len(smtp.recipients()) >= 41, timeout=30)
        time.sleep(0.5)  # time enough for a second copy to arrive, were one sent
    finally:
        for mailer in mailers:
            mailer.stop()
        for s in sites:
            s.close()
    assert Counter(smtp.recipients()) == Counter([*addresses, "mid@example.com"])


def test_a_failed_confirmation_is_tried_again_a_bounded_number_of_times(
    example_project: Path, smtp: SMTPServer
) -> None:
    config = mail_through(example_project, smtp)
    with running_site(config) as site:
        assert subscribe(site, "busy@example.com").status_code == 200  # the server says 450
        settle_smtp(site, smtp, "marker@example.com")
        with site.publisher() as publisher:
            storage = publisher.storage
            assert isinstance(storage, SqlStorage)
            due, attempts = wait_for(lambda: due_at(storage, "busy@example.com"), timeout=5)
            assert attempts == 1 and due is not None and due > datetime.now(UTC)  # due again
            # The last attempt, now: it fails too, and the confirmation is given up.
            with storage.engine.begin() as conn:
                conn.execute(
                    update(schema.subscribers)
                    .where(schema.subscribers.c.email == "busy@example.com")
                    .values(confirm_due_at=datetime.now(UTC), confirm_attempts=MAX_ATTEMPTS - 1)
                )
            settle_smtp(site, smtp, "marker2@example.com")
            assert due_at(storage, "busy@example.com") == (None, MAX_ATTEMPTS)
        assert "busy@example.com" not in smtp.recipients()


def proxied_scope(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)

    middleware = TrustedProxies(app, ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])
    scope = {"type": "http", "client": (peer, 5000), "scheme": "http", "headers": headers}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    return seen


def test_proxy_headers_are_read_from_the_right() -> None:
    xff = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.1.2.3")]
    # The client wrote 6.6.6.6 itself; 10.1.2.3 is a proxy of ours; 203.0.113.9 is the client.
    assert proxied_scope("127.0.0.1", xff)["client"] == ("203.0.113.9", 0)
    assert proxied_scope("192.0.2.50", xff)["client"] == ("192.0.2.50", 5000)  # untrusted peer
    split = [(b"x-forwarded-for", b"203.0.113.9:4711"), (b"x-forwarded-for", b"10.0.0.1")]
    assert proxied_scope("::ffff:127.0.0.1", split)["client"] == ("203.0.113.9", 0)
    v6 = [(b"x-forwarded-for", b"[2001:db8::7]:443, 2a00:1450::1")]
    assert proxied_scope("2001:db8::1", v6)["client"] == ("2a00:1450::1", 0)
    forwarded = proxied_scope(
        "10.0.0.1",
        [
            (b"host", b"127.0.0.1:8080"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"news.example.org"),
        ],
    )
    assert forwarded["scheme"] == "https"
    assert (b"host", b"news.example.org") in forwarded["headers"]
    junk = proxied_scope(
        "10.0.0.1",
        [(b"host", b"a"), (b"x-forwarded-host", b"evil/x y"), (b"x-forwarded-proto", b"gopher")],
    )
    assert junk["scheme"] == "http" and (b"host", b"a") in junk["headers"]


def test_forms_from_other_sites_are_refused(site: Running) -> None:
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": site.url, "Sec-Fetch-Site": "cross-site"},
    ):
        response = subscribe(site, "csrf@example.com", **headers)
        assert response.status_code == 403, headers
    assert status_of(site, "csrf@example.com") is None
    assert subscribe(site, "same@example.com", Origin=site.url).status_code == 200
    assert subscribe(site, "fetch@example.com", Sec_Fetch_Site="same-origin").status_code == 200
    # Behind a proxy the public origin is the forwarded one.
    proxied = subscribe(
        site,
        "proxied@example.com",
        Origin="https://news.example.net",
        X_Forwarded_Proto="https",
        X_Forwarded_Host="news.example.net",
    )
    assert proxied.status_code == 200


def test_bad_or_expired_confirmation_links(site: Running, fixed_clock: list[datetime]) -> None:
    subscribe(site, "late@example.com")
    link = confirm_link(site.wait_for_mail("late@example.com"))
    token = link.rsplit("/", 1)[1]

    tampered = requests.get(site.url + "/confirm/" + token[:-2] + "xx", timeout=10)
    assert tampered.status_code == 400 and "This link is not valid" in tampered.text
    with site.publisher() as publisher:
        sub = publisher.storage.get_subscriber("late@example.com")
        assert sub is not None
        unsubscribe_token = publisher.tokens.make(sub.id, sub.email)
    # An unsubscribe token is no confirmation token (another salt).
    assert requests.get(site.url + "/confirm/" + unsubscribe_token, timeout=10).status_code == 400
    # A genuine token for another subscriber's id but this address's tag is refused too.
    forged = ConfirmTokens(SECRET, "the-example-weekly.news.example.org", max_age=timedelta(1))
    assert (
        requests.get(
            site.url + "/confirm/" + forged.make(sub.id + 1000, sub.email), timeout=10
        ).status_code
        == 400
    )
    assert status_of(site, "late@example.com") == SubscriberStatus.PENDING

    fixed_clock[0] += timedelta(hours=72, seconds=1)
    for expired in (requests.get(link, timeout=10), requests.post(link, timeout=10)):
        assert expired.status_code == 410
        assert "This link has expired" in expired.text and 'href="/subscribe"' in expired.text
    assert status_of(site, "late@example.com") == SubscriberStatus.PENDING


def test_confirming_after_leaving_does_not_bring_back(site: Running) -> None:
    subscribe(site, "gone@example.com")
    message = site.wait_for_mail("gone@example.com")
    left = requests.post(unsubscribe_link(message), data="List-Unsubscribe=One-Click", timeout=10)
    assert left.status_code == 200
    for response in (
        requests.get(confirm_link(message), timeout=10),
        requests.post(confirm_link(message), timeout=10),
    ):
        assert response.status_code == 410
    assert status_of(site, "gone@example.com") == SubscriberStatus.UNSUBSCRIBED


def test_confirm_button_from_another_site_is_refused(site: Running) -> None:
    subscribe(site, "csrf@example.com")
    link = confirm_link(site.wait_for_mail("csrf@example.com"))
    forged = requests.post(
        link,
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        timeout=10,
    )
    assert forged.status_code == 403
    assert status_of(site, "csrf@example.com") == SubscriberStatus.PENDING


# --- unsubscribe ---------------------------------------------------------------------------------


def token_for(site: Running, address: str) -> str:
    with site.publisher() as publisher:
        sub, _ = publisher.add_subscriber(address)
        return publisher.tokens.make(sub.id, sub.email)


def test_get_shows_a_button_and_changes_nothing(site: Running) -> None:
    url = f"{site.url}/unsubscribe/{token_for(site, 'keep@example.com')}"
    for _ in range(3):  # a link scanner, a prefetch, the person
        page = requests.get(url, timeout=10)
        assert page.status_code == 200
        assert 'id="unsubscribe" method="post"' in page.text
        assert "keep@example.com" in page.text
        assert page.headers["cache-control"] == "no-store"
        # No other site may frame the button under something else (clickjacking).
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert requests.head(url, timeout=10).status_code == 200
    assert status_of(site, "keep@example.com") == SubscriberStatus.ACTIVE


def test_one_click_post_unsubscribes_idempotently(site: Running) -> None:
    url = f"{site.url}/unsubscribe/{token_for(site, 'leave@example.com')}"
    # RFC 8058 3.2: the provider POSTs the List-Unsubscribe-Post value, with no cookies.
    for body, content_type in (
        ("List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"),
        (
            '--b\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            "One-Click\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
    ):
        response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)
        assert response.status_code == 200
        assert "You are unsubscribed" in response.text
        assert status_of(site, "leave@example.com") == SubscriberStatus.UNSUBSCRIBED
    again = requests.get(url, timeout=10)
    assert again.status_code == 200 and "You are unsubscribed" in again.text


def test_bad_unsubscribe_links_get_a_clear_page(site: Running) -> None:
    token = token_for(site, "stay@example.com")
    other_list = UnsubscribeTokens(SECRET, "another-list.example.org")
    with site.publisher() as publisher:
        sub = publisher.storage.get_subscriber("stay@example.com")
        assert sub is not None
        # Valid signature, this subscriber's id, but made for another address.
        wrong_address = publisher.tokens.make(sub.id, "someone-else@example.com")
    for bad in (
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        "nothing-like-a-token",
        other_list.make(sub.id, sub.email),
        wrong_address,
    ):
        for method in ("GET", "POST"):
            response = requests.request(
                method,
                f"{site.url}/unsubscribe/{bad}",
                data="List-Unsubscribe=One-Click",
                timeout=10,
            )
            assert response.status_code == 400, (bad, method)
            assert "This link is not valid" in response.text
    assert status_of(site, "stay@example.com") == SubscriberStatus.ACTIVE


def test_unsubscribed_address_is_skipped_by_the_unfinished_digest(site: Running) -> None:
    with site.publisher() as publisher:
        publisher.gather()
        for address in ("one@example.com", "two@example.com", "three@example.com"):
            publisher.add_subscriber(address)
        two = publisher.storage.get_subscriber("two@example.com")
        assert two is not None
        url = f"{site.url}/unsubscribe/{publisher.tokens.make(two.id, two.email)}"
        answers: list[int] = []

        def created(digest: Digest, counts: DigestCounts) -> None:
            # The digest exists and its recipients are frozen (two@ among them); nothing is
            # sent yet. The one-click request arrives now, over HTTP.
            assert counts.pending == 3
            answers.append(
                requests.post(url, data="List-Unsubscribe=One-Click", timeout=10).status_code
            )

        report = publisher.send_digest(on_start=created)
        assert answers == [200]
        assert report.digest_id is not None
        assert (report.sent, report.skipped) == (2, 1)
        folder = site.project / "outbox" / str(report.digest_id)
        assert sorted(p.name.split("-", 1)[1] for p in folder.iterdir()) == [
            "one@example.com.eml",
            "three@example.com.eml",
        ]
        counts = publisher.storage.digest_counts(report.digest_id)
        assert (counts.sent, counts.skipped) == (2, 1)
        # ...and the next digest does not take them in at all.
        nxt = publisher.send_digest(force=True)
        assert nxt.digest_id is not None and nxt.digest_id != report.digest_id
        assert publisher.storage.digest_counts(nxt.digest_id).total == 2


# --- config and schema ---------------------------------------------------------------------------


BASE = """
[newsletter]
title = "T"
site_url = "https://example.org/"
sender = "T <t@example.org>"
postal_address = "1 Street"
"""


def test_web_config_defaults_and_values() -> None:
    web = parse_config(BASE).web
    assert (web.host, web.port, web.trusted_proxies) == ("127.0.0.1", 8080, ("127.0.0.1", "::1"))
    assert (web.subscribe_rate_per_minute, web.confirm_hours) == (5.0, 72.0)
    assert parse_config(BASE).mail.provider("mailgun") is None
    config = parse_config(
        BASE
        + """
[web]
host = "0.0.0.0"
port = 9000
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
subscribe_rate_per_minute = 2
confirm_hours = 24
postmark_webhook_user_env = "PM_USER"
postmark_webhook_password_env = "PM_PASSWORD"
sendgrid_webhook_key_env = "SG_KEY"
mailgun_signing_key_env = "MG_KEY"
"""
    )
    web = config.web
    assert web.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")
    assert (web.port, web.confirm_hours) == (9000, 24.0)
    # The webhook keys of the release before [mail.<backend>] tables: read as the providers'.
    assert config.mail.provider("sendgrid").webhook_key_env == "SG_KEY"
    assert config.mail.provider("mailgun").webhook_signing_key_env == "MG_KEY"
    assert config.mail.provider("postmark").webhook_password_env == "PM_PASSWORD"
    assert len(config.deprecations) == 4


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('trusted_proxies = ["nginx"]', "web.trusted_proxies", "expected IP addresses"),
        ("trusted_proxies = 5", "web.trusted_proxies", "expected a list"),
        ('mailgun_signing_key_env = "MG_SIGNING_KEY"', None, None),  # a NAME: accepted
        ('mailgun_signing_key_env = "key 3a-x6"', "web.mailgun_signing_key_env", "NAME"),
        ('postmark_webhook_user_env = "U"', "web.postmark_webhook_password_env", "both"),
        ("subscribe_rate_per_minute = 0", "web.subscribe_rate_per_minute", "at least"),
        ("port = 70000", "web.port", "at most 65535"),
        ('hots = "x"', "web.hots", "did you mean 'host'"),
    ],
)
def test_web_config_errors(table: str, key: str | None, message: str | None) -> None:
    text = BASE + "\n[web]\n" + table + "\n"
    if key is None:
        parse_config(text)
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.key == key
    assert message is not None and message in str(caught.value)


# What migration 6 adds, taken away again: a database as migration 5 left it.
UNDO_MIGRATION_6 = (
    "DROP TABLE rate_buckets",
    "DROP TABLE webhook_tokens",
    "DROP INDEX ix_subscribers_confirm_due",
    "ALTER TABLE subscribers DROP COLUMN confirm_due_at",
    "ALTER TABLE subscribers DROP COLUMN confirm_attempts",
)


@ENGINES
def test_migration_6_adds_the_shared_web_state(db_url: str) -> None:
    storage = SqlStorage(db_url)
    # Pending from before: its mail was queued in memory then, and the database cannot know.
    storage.request_subscription("old@example.com", None, T0, resend_after=RESEND)
    with storage.engine.begin() as conn:
        for statement in UNDO_MIGRATION_6:
            conn.execute(text(statement))
        conn.execute(
            update(schema.meta).where(schema.meta.c.key == "schema_version").values(value="5")
        )
    storage.close()
    with two_processes(db_url) as (a, b):
        with a.engine.connect() as conn:
            version = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).scalar_one()
        assert version == str(schema.VERSION)
        assert due_at(a, "old@example.com") == (None, 0)
        assert a.take_rate_token("k", per_minute=1, burst=1, now=T0) == 0.0
        assert b.take_rate_token("k", per_minute=1, burst=1, now=T0) == pytest.approx(60, abs=0.01)
        assert a.remember_webhook_token("mailgun", "t", expires_at=T0 + LEASE, now=T0)
        new, _ = b.request_subscription("new@example.com", None, T0, resend_after=RESEND)
        assert [c.subscriber.id for c in a.claim_confirmations(limit=5, lease=LEASE)] == [new.id]


def test_migration_adds_the_subscription_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    storage = SqlStorage(url)
    storage.close()
    # Make it look like a database from before migration 4 (and so before migration 5).
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        for statement in UNDO_MIGRATION_6:
            conn.execute(statement)
        for table in ("batches", "runs", "nodes"):
            conn.execute(f"DROP TABLE {table}")
        for index in ("ux_digests_number", "ux_digests_fire"):
            conn.execute(f"DROP INDEX {index}")
        for column in ("number", "fire"):
            conn.execute(f"ALTER TABLE digests DROP COLUMN {column}")
        for column in ("confirm_sent_at", "confirmed_at", "status_reason"):
            conn.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO subscribers (email, status, created_at) "
            "VALUES ('old@example.com', 'active', '2026-01-01 00:00:00')"
        )
    storage = SqlStorage(url)
    try:
        now = datetime.now().astimezone()
        sub, send = storage.request_subscription(
            "new@example.com", None, now, resend_after=timedelta(minutes=10)
        )
        assert send and sub.status == SubscriberStatus.PENDING
        assert storage.suppress("old@example.com", SubscriberStatus.BOUNCED, "gone", now)
    finally:
        storage.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(schema.VERSION),
        )
        assert conn.execute(
            "SELECT status, status_reason FROM subscribers WHERE email = 'old@example.com'"
        ).fetchone() == ("bounced", "gone")


def test_tokens_do_not_cross(example_project: Path) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        sub, _ = publisher.add_subscriber("cross@example.com")
        unsubscribe = publisher.tokens.make(sub.id, sub.email)
        confirm = publisher.confirm_tokens.make(sub.id, sub.email)
        assert re.fullmatch(r"\d+\.[0-9a-f]{12}\.[\w-]+\.[\w-]+", confirm)
        assert publisher.tokens.matches(unsubscribe, sub.email)
        assert not publisher.tokens.matches(confirm, sub.email)
