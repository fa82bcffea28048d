"""NextTokens round-trip, fit Rekognition's 255 characters, and cannot be forged or moved."""

from __future__ import annotations

import base64
import re

import pytest

from edge.errors import InvalidPaginationTokenException
from edge.rekognition.tokens import MAX_POSITION_BYTES, TOKEN_MAX_CHARS, TokenSigner
from edge.server.app import http_status

SECRET = b"0123456789abcdef0123456789abcdef"
SCOPE = "ListFaces:collection-a"
FACE = "ce7ed422-2132-4a11-ab14-06c5c410f29f"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(SECRET)


@pytest.mark.parametrize("position", ["", "42", FACE, "user:alice.1", "é☃𝄞", "x" * MAX_POSITION_BYTES])
def test_round_trip_within_255_urlsafe_characters(signer: TokenSigner, position: str) -> None:
    token = signer.issue(SCOPE, position)
    assert len(token) <= TOKEN_MAX_CHARS
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert signer.open(SCOPE, token) == position


def test_the_longest_position_fills_the_token_exactly(signer: TokenSigner) -> None:
    assert len(signer.issue(SCOPE, "x" * MAX_POSITION_BYTES)) == TOKEN_MAX_CHARS
    with pytest.raises(ValueError, match="at most 175 bytes"):
        signer.issue(SCOPE, "x" * (MAX_POSITION_BYTES + 1))
    with pytest.raises(ValueError):
        signer.issue(SCOPE, "é" * 88)  # 176 bytes of UTF-8 in 88 characters


def test_every_single_character_change_is_refused(signer: TokenSigner) -> None:
    token = signer.issue(SCOPE, FACE)
    for i, char in enumerate(token):
        for replacement in {"A", "B", "-"} - {char}:
            with pytest.raises(InvalidPaginationTokenException):
                signer.open(SCOPE, token[:i] + replacement + token[i + 1 :])


@pytest.mark.parametrize(
    "scope",
    ["ListFaces:collection-b", "ListUsers:collection-a", "ListFaces:collection-a:user=alice", "ListCollections", ""],
)
def test_a_token_is_refused_in_any_other_scope(signer: TokenSigner, scope: str) -> None:
    with pytest.raises(InvalidPaginationTokenException):
        signer.open(scope, signer.issue(SCOPE, FACE))


def test_scope_and_position_cannot_trade_characters(signer: TokenSigner) -> None:
    # Without the scope's length in the MAC, ("ListFaces:ab", "c") would sign ("ListFaces:a", "bc").
    token = signer.issue("ListFaces:ab", "c")
    mac = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))[1:]
    moved = base64.urlsafe_b64encode(b"bc" + mac).rstrip(b"=").decode()
    assert signer.open("ListFaces:ab", token) == "c"
    with pytest.raises(InvalidPaginationTokenException):
        signer.open("ListFaces:a", moved)


def test_a_token_from_another_secret_is_refused(signer: TokenSigner) -> None:
    other = TokenSigner(b"another secret of 32 bytes......")
    with pytest.raises(InvalidPaginationTokenException):
        signer.open(SCOPE, other.issue(SCOPE, FACE))


@pytest.mark.parametrize(
    "garbage",
    ["", "A", "AAAA", "not a token!", "%%%%", "é", "A" * 256, "A" * 21, "A" * 22],
)
def test_garbage_and_empty_tokens_are_refused(signer: TokenSigner, garbage: str) -> None:
    with pytest.raises(InvalidPaginationTokenException, match="Invalid pagination token"):
        signer.open(SCOPE, garbage)


def test_only_the_canonical_spelling_is_accepted(signer: TokenSigner) -> None:
    # The bytes decode the same, but a token has exactly one spelling.
    token = signer.issue(SCOPE, "~~~~~~")  # b"~~~" encodes to "fn5-", so the token holds a "-"
    assert "-" in token
    for variant in (token + "=", token + "==", " " + token, token + "\n", token.replace("-", "+")):
        with pytest.raises(InvalidPaginationTokenException):
            signer.open(SCOPE, variant)


def test_the_error_is_rekognitions(signer: TokenSigner) -> None:
    with pytest.raises(InvalidPaginationTokenException) as caught:
        signer.open(SCOPE, "bogus")
    assert (caught.value.code, http_status(caught.value)) == ("InvalidPaginationTokenException", 400)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TokenSigner(b"short")
