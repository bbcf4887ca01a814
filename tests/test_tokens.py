"""Unsubscribe tokens: signed per subscriber and list, refused when forged, altered or reused."""

from __future__ import annotations

import pytest

from newsletter.tokens import TokenError, UnsubscribeTokens

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
