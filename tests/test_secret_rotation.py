"""Setting and rotating the link secret breaks no link already in an inbox (issue 12, item 1).

Through the real command in child processes: digests sent by ``run --once`` into the outbox,
their List-Unsubscribe links opened on a real ``serve`` on 127.0.0.1 after the environment
changed, as a reader would open them days later.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests

from newsletter.config import load_config
from newsletter.core import SECRET_META_KEY, make_publisher
from newsletter.tokens import TokenError, UnsubscribeTokens
from tests._project import add_article, serving

ADDRESS = "reader@example.com"
SECRET_VARS = ("NEWSLETTER_SECRET", "NEWSLETTER_PREVIOUS_SECRETS")


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    return {**env, "COLUMNS": "300", **values}


def newsletter(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def send_digest(config: Path, env: dict[str, str], number: int) -> tuple[str, str]:
    """A new article, one ``run --once``: digest ``number``'s (unsubscribe token, list id)."""
    add_article(config, f"news-{number}", f"News {number}", datetime(2026, 11, number, tzinfo=UTC))
    newsletter(config, "run", "--once", env=env)
    (path,) = (config.parent / "outbox" / str(number)).glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    found = re.match(r"<https?://[^>]+/unsubscribe/([^>]+)>", str(message["List-Unsubscribe"]))
    assert found is not None, message["List-Unsubscribe"]
    return found.group(1), str(message["List-Id"]).strip("<>")


def opens(base: str, token: str) -> bool:
    """Whether the unsubscribe link opens the page naming the reader (and unsubscribes no
    one: the GET only shows the button)."""
    page = requests.get(f"{base}/unsubscribe/{token}", timeout=10)
    if page.status_code == 400:
        assert "This link is not valid" in page.text
        return False
    assert page.status_code == 200, page.text
    assert ADDRESS in page.text
    return True


def add_reader(config: Path) -> None:
    with make_publisher(load_config(config)) as publisher:
        publisher.add_subscriber(ADDRESS)


def test_a_link_made_before_the_secret_was_set_still_works_after(example_project: Path) -> None:
    config = example_project
    add_reader(config)
    unset = environment()
    before, list_id = send_digest(config, unset, 1)  # signed with the database's secret
    with serving(config, unset, "-v") as (base, log):
        assert opens(base, before)
        # An edited config is read again, by a Publisher of its own: no second warning.
        config.write_text(config.read_text() + "\n# edited\n")
        assert opens(base, before)
    stderr = log.read_text()
    assert "changed: reloaded" in stderr
    assert stderr.count("$NEWSLETTER_SECRET is not set") == 1, stderr
    assert "export NEWSLETTER_SECRET=$(python3 -c" in stderr  # what to do about it

    chosen = environment(NEWSLETTER_SECRET="chosen-by-the-operator")
    after, _ = send_digest(config, chosen, 2)
    assert after != before  # same subscriber and list: another key signed it
    stranger = UnsubscribeTokens("nobody's secret", list_id).make(1, ADDRESS)
    assert stranger.rsplit(".", 1)[0] == after.rsplit(".", 1)[0]  # only the signature differs
    with serving(config, chosen) as (base, log):
        assert opens(base, before)
        assert opens(base, after)
        assert not opens(base, stranger)
    assert "is not set" not in log.read_text()


def test_after_a_rotation_old_and_new_links_work(
    example_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = example_project
    add_reader(config)
    old, list_id = send_digest(config, environment(NEWSLETTER_SECRET="first-secret"), 1)

    rotated = environment(
        NEWSLETTER_SECRET="second-secret", NEWSLETTER_PREVIOUS_SECRETS=" first-secret, "
    )
    new, _ = send_digest(config, rotated, 2)
    assert new != old
    stranger = UnsubscribeTokens("neither-secret", list_id).make(1, ADDRESS)
    with serving(config, rotated) as (base, _):
        assert opens(base, old)
        assert opens(base, new)
        assert not opens(base, stranger)
    # The previous secret is what keeps the old link valid: without it, only the new works.
    monkeypatch.setenv("NEWSLETTER_SECRET", "second-secret")
    monkeypatch.delenv("NEWSLETTER_PREVIOUS_SECRETS", raising=False)
    with make_publisher(load_config(config)) as publisher:
        assert publisher.subscriber_for_unsubscribe(new).email == ADDRESS
        with pytest.raises(TokenError):
            publisher.subscriber_for_unsubscribe(old)
        # A secret always set: none was ever made up and kept in the database.
        assert publisher.storage.get_meta(SECRET_META_KEY) is None


def test_init_prints_a_new_secret_and_never_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "newsletter.toml"
    out = newsletter(path, "init", str(path), env=environment()).stdout
    found = re.search(r"^export NEWSLETTER_SECRET=([A-Za-z0-9_-]{43})$", out, re.M)
    assert found is not None, out
    assert found.group(1) not in path.read_text()
