"""Subscribe, confirm and unsubscribe over real HTTP on 127.0.0.1, with mail in the outbox.

The confirmation mails are sent by the site's own thread in the order asked for; a test that
needs to know a mail was *not* sent subscribes another address afterwards and waits for that
one: once it is out, everything asked for before it has been dealt with.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from newsletter.config import load_config, parse_config
from newsletter.core import make_publisher
from newsletter.exceptions import ConfigError
from newsletter.storage import Storage, schema
from newsletter.tokens import ConfirmTokens, UnsubscribeTokens
from newsletter.types import Digest, DigestCounts, SubscriberStatus
from newsletter.web.proxy import TrustedProxies
from newsletter.web.ratelimit import RateLimiter
from newsletter.web.subscription import retry_after
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
    assert status_of(site, "ada@example.com") == SubscriberStatus.PENDING

    for _ in range(2):  # idempotent
        confirmed = requests.get(link, timeout=10)
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
    assert requests.get(first, timeout=10).status_code == 200  # either link confirms


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


def test_rate_limiter_refills_and_forgets_full_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # a burst of 6, then one every 10 s
    assert [limiter.acquire("a") for _ in range(6)] == [0.0] * 6
    assert 9.9 < limiter.acquire("a") <= 10.0
    assert retry_after(limiter.acquire("a")) == "10"
    assert limiter.acquire("b") == 0.0  # another client has its own bucket
    now[0] += 10
    assert limiter.acquire("a") == 0.0
    now[0] += 120  # "a" and "b" are full again: nothing to remember about them
    limiter.acquire("c")
    assert len(limiter) == 1


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
    expired = requests.get(link, timeout=10)
    assert expired.status_code == 410
    assert "This link has expired" in expired.text and 'href="/subscribe"' in expired.text
    assert status_of(site, "late@example.com") == SubscriberStatus.PENDING


def test_confirming_after_leaving_does_not_bring_back(site: Running) -> None:
    subscribe(site, "gone@example.com")
    message = site.wait_for_mail("gone@example.com")
    left = requests.post(unsubscribe_link(message), data="List-Unsubscribe=One-Click", timeout=10)
    assert left.status_code == 200
    response = requests.get(confirm_link(message), timeout=10)
    assert response.status_code == 410
    assert status_of(site, "gone@example.com") == SubscriberStatus.UNSUBSCRIBED


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
    assert web.mailgun_signing_key_env is None
    web = parse_config(
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
    ).web
    assert web.trusted_proxies == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")
    assert (web.port, web.confirm_hours, web.sendgrid_webhook_key_env) == (9000, 24.0, "SG_KEY")


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


def test_migration_adds_the_subscription_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    storage = Storage(url)
    storage.close()
    # Make it look like a database from before migration 4.
    import sqlite3

    with sqlite3.connect(tmp_path / "old.db") as conn:
        for column in ("confirm_sent_at", "confirmed_at", "status_reason"):
            conn.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO subscribers (email, status, created_at) "
            "VALUES ('old@example.com', 'active', '2026-01-01 00:00:00')"
        )
    storage = Storage(url)
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
