"""Unsubscribe tokens: signed per subscriber and list, refused when forged, altered or reused;
those signed with a previous secret still accepted after a rotation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from newsletter.tokens import ConfirmTokens, TokenError, TokenExpired, UnsubscribeTokens

SECRET = "s3cret-for-tests-only"
LIST = "the-test-weekly.news.example.org"


@pytest.fixture
def tokens() -> UnsubscribeTokens:
    return UnsubscribeTokens(SECRET, LIST)


def test_a_token_verifies_without_a_lookup_and_names_its_subscriber(
    tokens: UnsubscribeTokens,
) -> None:
    token = tokens.make(42, "Ada@Example.com")
    subscriber_id, _tag = tokens.verify(token)
    assert subscriber_id == 42
    assert tokens.matches(token, "ada@example.com")  # addresses compare case-insensitively
    assert token == tokens.make(42, "ada@example.com")  # stable: the link in every issue works
    # URL-safe: it goes into a path segment as it is
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_the_address_is_not_readable_from_the_token(tokens: UnsubscribeTokens) -> None:
    token = tokens.make(7, "grace@example.org")
    assert "grace" not in token and "example" not in token


def test_a_token_for_another_address_does_not_match(tokens: UnsubscribeTokens) -> None:
    token = tokens.make(1, "ada@example.com")
    assert not tokens.matches(token, "eve@example.com")
    # the same subscriber id with another address (an id reused after a deletion) is refused too
    assert tokens.make(1, "eve@example.com") != token


@pytest.mark.parametrize("position", [0, 5, -1, -6])
def test_an_altered_token_is_refused(tokens: UnsubscribeTokens, position: int) -> None:
    token = tokens.make(3, "linus@example.net")
    chars = list(token)
    chars[position] = "A" if chars[position] != "A" else "B"
    altered = "".join(chars)
    with pytest.raises(TokenError):
        tokens.verify(altered)
    assert not tokens.matches(altered, "linus@example.net")


def test_a_payload_swapped_under_a_valid_signature_is_refused(tokens: UnsubscribeTokens) -> None:
    mine = tokens.make(1, "ada@example.com")
    theirs = tokens.make(2, "grace@example.org")
    spliced = theirs.rpartition(".")[0] + "." + mine.rpartition(".")[2]
    with pytest.raises(TokenError):
        tokens.verify(spliced)


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "not-a-token",
        "WzEsImFiYyJd.",  # a plausible payload, no signature
        "WzEsImFiYyJd.c2lnbmF0dXJl",  # with a made-up one
        "1.0123456789ab.c2lnbmF0dXJl",  # the shape of a real one
    ],
)
def test_a_forged_token_is_refused(tokens: UnsubscribeTokens, forged: str) -> None:
    with pytest.raises(TokenError, match="not valid"):
        tokens.verify(forged)


def test_a_token_signed_with_another_secret_is_refused(tokens: UnsubscribeTokens) -> None:
    other = UnsubscribeTokens("another secret", LIST).make(1, "ada@example.com")
    with pytest.raises(TokenError):
        tokens.verify(other)
    assert not tokens.matches(other, "ada@example.com")


def test_a_token_of_another_list_is_refused(tokens: UnsubscribeTokens) -> None:
    # Same secret, another list: the list id is the signing salt.
    other = UnsubscribeTokens(SECRET, "another-list.news.example.org").make(1, "ada@example.com")
    with pytest.raises(TokenError):
        tokens.verify(other)


def test_a_token_signed_with_a_previous_secret_verifies_and_new_ones_use_the_current() -> None:
    old = UnsubscribeTokens("old secret", LIST).make(7, "ada@example.com")
    rotated = UnsubscribeTokens("new secret", LIST, previous=["older secret", "old secret"])
    assert rotated.verify(old)[0] == 7
    assert rotated.matches(old, "ada@example.com")
    new = rotated.make(7, "ada@example.com")
    assert new != old
    # Signed with the current secret alone: valid once the previous ones are dropped.
    assert UnsubscribeTokens("new secret", LIST).verify(new)[0] == 7
    with pytest.raises(TokenError):
        UnsubscribeTokens("new secret", LIST).verify(old)
    with pytest.raises(TokenError):
        UnsubscribeTokens("new secret", LIST, previous=["not it"]).verify(old)


def test_a_confirmation_signed_with_a_previous_secret_verifies_until_it_expires(
    fixed_clock: list[datetime],
) -> None:
    lifetime = timedelta(hours=72)
    old = ConfirmTokens("old secret", LIST, max_age=lifetime).make(7, "ada@example.com")
    rotated = ConfirmTokens("new secret", LIST, max_age=lifetime, previous=["old secret"])
    assert rotated.verify(old)[0] == 7
    with pytest.raises(TokenError):
        ConfirmTokens("new secret", LIST, max_age=lifetime).verify(old)
    fixed_clock[0] += lifetime + timedelta(seconds=1)
    with pytest.raises(TokenExpired):  # an old key does not lengthen a link's life
        rotated.verify(old)
