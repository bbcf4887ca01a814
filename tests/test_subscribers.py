"""Subscriber list: validation, CSV import with line-numbered rejections, removal."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from newsletter.config import load_config
from newsletter.core import Publisher, make_publisher
from newsletter.exceptions import SubscriberError
from newsletter.types import SubscriberStatus


@pytest.fixture
def publisher(example_project: Path, fixed_clock: list[datetime]) -> Iterator[Publisher]:
    pub = make_publisher(load_config(example_project))
    yield pub
    pub.close()


@pytest.mark.parametrize(
    "address", ["not-an-address", "a@b", "two@@example.com", "x@example.com\nBcc: y@example.com"]
)
def test_invalid_addresses_are_refused(publisher: Publisher, address: str) -> None:
    with pytest.raises(SubscriberError):
        publisher.add_subscriber(address)
    assert publisher.storage.count_subscribers() == 0


def test_add_normalizes_and_does_not_duplicate(publisher: Publisher) -> None:
    sub, created = publisher.add_subscriber("Ada@Example.COM", "  Ada\nLovelace ")
    assert created and sub.email == "ada@example.com" and sub.name == "Ada Lovelace"
    again, created_again = publisher.add_subscriber("ada@example.com")
    assert not created_again and again.id == sub.id


def test_import_reports_bad_rows_by_line_and_keeps_the_good(
    publisher: Publisher, tmp_path: Path
) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(
        "email,name\n"  # line 1: header
        "ok1@example.com,One\n"  # 2
        "broken-address,Two\n"  # 3
        "\n"  # 4: blank, ignored
        "ok2@example.com\n"  # 5
        "OK1@example.com,Duplicate\n"  # 6: same address again
        "also@bad@example.com,Three\n"  # 7
    )
    report = publisher.import_subscribers(csv_file)
    assert report.added == 2
    assert report.already_present == 1
    assert [(line, addr) for line, addr, _ in report.rejected] == [
        (3, "broken-address"),
        (7, "also@bad@example.com"),
    ]
    emails = [s.email for s in publisher.subscribers()]
    assert emails == ["ok1@example.com", "ok2@example.com"]


def test_import_without_header(publisher: Publisher, tmp_path: Path) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("first@example.com,First\nsecond@example.com\n")
    report = publisher.import_subscribers(csv_file)
    assert report.added == 2 and not report.rejected


def test_remove_and_delete(publisher: Publisher) -> None:
    publisher.add_subscriber("a@example.com")
    assert publisher.remove_subscriber("a@example.com") is True
    assert publisher.remove_subscriber("a@example.com") is False  # already unsubscribed
    assert [s.status for s in publisher.subscribers()] == [SubscriberStatus.UNSUBSCRIBED]
    # an explicit add by an editor re-activates, when forced (tests/test_optin.py)
    sub, _ = publisher.add_subscriber("a@example.com", force=True)
    assert sub.status == SubscriberStatus.ACTIVE
    publisher.remove_subscriber("a@example.com", delete=True)
    assert publisher.storage.count_subscribers() == 0
    with pytest.raises(SubscriberError, match="no such subscriber"):
        publisher.remove_subscriber("nobody@example.com")


def test_international_domains_are_stored_in_ascii_form(publisher: Publisher) -> None:
    sub, _ = publisher.add_subscriber("reader@bücher.de")
    assert sub.email == "reader@xn--bcher-kva.de"
    with pytest.raises(SubscriberError, match="SMTPUTF8"):
        publisher.add_subscriber("jörg@example.com")
