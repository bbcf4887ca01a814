"""Subscriber input from every door: CSV rows that are not UTF-8 or not CSV, names with control
characters, RFC 2047 encoded-words in addresses. The CLI runs as a real process; the web form
is the real public site on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from newsletter.addresses import validate_address
from newsletter.config import load_config
from newsletter.core import make_publisher
from newsletter.exceptions import SubscriberError
from tests.test_cli import newsletter
from tests.test_cli_input import assert_clean
from tests.test_web_feeds import Running, link_secret, running_site

__all__ = ["link_secret"]  # the autouse fixture, imported to apply here too


def test_import_reports_undecodable_rows_and_keeps_the_good(
    example_project: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_bytes(
        b"email,name\n"  # 1
        b"good@example.com,G\n"  # 2
        b"\xff\xfebad@example.com,B\n"  # 3: not UTF-8 in the address
        b"named@example.com,N\xe9\n"  # 4: Latin-1 in the name
        b"later@example.com,L\xc3\xa9a\n"  # 5: good UTF-8
        b'ctl@example.com,"Bel\x07l"\n'  # 6: a control character in the name
    )
    result = newsletter("--config", str(example_project), "subscribers", "import", str(csv_file))
    assert_clean(result)
    assert result.returncode == 3
    assert "imported 2, already present 0, rejected 3" in result.stdout
    assert f"{csv_file}:3: " in result.stderr and "not valid UTF-8 (byte 0xff)" in result.stderr
    assert f"{csv_file}:4: 'named@example.com': not valid UTF-8 (byte 0xe9)" in result.stderr
    assert f"{csv_file}:6: 'ctl@example.com': a name must not contain control" in result.stderr
    with make_publisher(load_config(example_project)) as publisher:
        assert [(s.email, s.name) for s in publisher.subscribers()] == [
            ("good@example.com", "G"),
            ("later@example.com", "Léa"),
        ]


def test_import_reports_a_malformed_record_and_goes_on(
    example_project: Path, tmp_path: Path
) -> None:
    csv_file = tmp_path / "people.csv"
    # A field over the csv module's limit (131,072 characters) is a csv.Error for that record.
    csv_file.write_text(f'one@example.com\n"{"x" * 200_000}"\ntwo@example.com\n')
    with make_publisher(load_config(example_project)) as publisher:
        report = publisher.import_subscribers(csv_file)
        emails = [s.email for s in publisher.subscribers()]
    assert report.added == 2
    assert [(line, reason.split(":")[0]) for line, _, reason in report.rejected] == [
        (2, "not a readable CSV row")
    ]
    assert emails == ["one@example.com", "two@example.com"]


@pytest.mark.parametrize(
    "name", ["A\x00da", "Esc\x1b[31m", "Bell\x07", "Back\x08", "Del\x7f", "C1\x9b", "Lone\ud800"]
)
def test_subscribers_add_refuses_control_characters_in_a_name(
    example_project: Path, name: str
) -> None:
    with make_publisher(load_config(example_project)) as publisher:
        with pytest.raises(SubscriberError, match="must not contain control characters"):
            publisher.add_subscriber("x@example.com", name)
        with pytest.raises(SubscriberError, match="must not contain control characters"):
            publisher.request_subscription("y@example.com", name)
        assert publisher.storage.count_subscribers() == 0


def test_subscribers_add_cli_refuses_a_control_character(example_project: Path) -> None:
    cfg = str(example_project)
    result = newsletter("--config", cfg, "subscribers", "add", "x@example.com", "--name", "A\x1bB")
    assert_clean(result)
    assert result.returncode == 1
    assert "error: a name must not contain control characters (found \\x1b)" in result.stderr
    # Line breaks and tabs are whitespace: folded, as before.
    ok = newsletter("--config", cfg, "subscribers", "add", "y@example.com", "--name", "A\n\tB")
    assert ok.returncode == 0, ok.stderr
    with make_publisher(load_config(example_project)) as publisher:
        assert [(s.email, s.name) for s in publisher.subscribers()] == [("y@example.com", "A B")]


@pytest.mark.parametrize(
    "address", ["=?utf-8?q?x?=@example.com", "a=?ISO-8859-1?B?QQ==?=b@example.com"]
)
def test_encoded_words_in_an_address_are_refused(address: str) -> None:
    with pytest.raises(SubscriberError, match="RFC 2047"):
        validate_address(address)


@pytest.fixture
def site(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Running]:
    with running_site(example_project) as running:
        yield running


@pytest.mark.parametrize(
    ("email", "name"),
    [
        ("ada@example.com", "Ada\x1b[2J"),
        ("ada@example.com", "Nul\x00"),
        ("=?utf-8?q?x?=@example.com", ""),
    ],
)
def test_the_web_form_answers_400_for_what_no_delivery_could_carry(
    site: Running, email: str, name: str
) -> None:
    form = requests.post(site.url + "/subscribe", data={"email": email, "name": name}, timeout=10)
    assert form.status_code == 400
    as_json = requests.post(
        site.url + "/subscribe", json={"email": email, "name": name}, timeout=10
    )
    assert as_json.status_code == 400 and "error" in as_json.json()
    with site.publisher() as publisher:
        assert publisher.storage.count_subscribers() == 0
