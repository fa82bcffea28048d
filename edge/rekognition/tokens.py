"""Opaque NextToken values that a client can neither forge nor carry to another listing.

A token is ``urlsafe_base64(position || MAC)`` without padding, where MAC is HMAC-SHA256 over a
domain label, the scope and the position, truncated to 128 bits.  The scope names the listing
(``ListFaces:<collection>[:<filter>]``), so a token from collection A, another filter or another
operation fails the MAC.  Tokens are stateless: nothing to store, expire or lose on a restart, and a
stale position is harmless because the store pages by "after this position".

The position travels in the clear (a client may read it; it cannot change it) and is recoverable,
which bounds it: 255 characters of base64 hold 191 bytes, 16 of them the MAC, leaving
`MAX_POSITION_BYTES` = 175 bytes of UTF-8.  Face ids (36) and user ids (128) fit; a 255-character
collection id does not, so a store should page by a compact key such as its integer rowid.
A server-side table would lift the bound, at the cost of state that must be kept, bounded and
expired; compression cannot, since ids are close to random.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from edge.errors import InvalidPaginationTokenException
from edge.files import private_secret

TOKEN_MAX_CHARS = 255  # PaginationToken's max length in Rekognition's model
_MAC_BYTES = 16  # 128 bits: half of SHA-256, the truncation RFC 2104 recommends as the floor
MAX_POSITION_BYTES = TOKEN_MAX_CHARS * 3 // 4 - _MAC_BYTES
_LABEL = b"edge-face NextToken v1\0"  # keeps these MACs apart from any other use of the secret
TOKEN_KEY_FILE = "token.key"


def token_secret(state_dir: Path) -> bytes:
    """The device's token key: made once, kept with the state, readable only by its owner.

    Kept across restarts so that a listing can be resumed after one.
    """
    return private_secret(state_dir / TOKEN_KEY_FILE)


class TokenSigner:
    """Issues and opens NextTokens under one secret, shared by every list operation."""

    def __init__(self, secret: bytes) -> None:
        # A key shorter than the MAC would make guessing the key cheaper than guessing a MAC.
        if len(secret) < _MAC_BYTES:
            raise ValueError(f"the token secret must be at least {_MAC_BYTES} bytes")
        self._secret = secret

    def issue(self, scope: str, position: str) -> str:
        """A token for resuming the listing `scope` at `position`; ValueError if it cannot fit."""
        raw = position.encode()
        if len(raw) > MAX_POSITION_BYTES:
            raise ValueError(f"a token position holds at most {MAX_POSITION_BYTES} bytes of UTF-8, got {len(raw)}")
        return _encode(raw + self._mac(scope, raw))

    def open(self, scope: str, token: str) -> str:
        """The position `token` was issued with, if it was issued by us for this very `scope`."""
        raw = _decode(token)
        if raw is None or len(raw) < _MAC_BYTES:
            raise InvalidPaginationTokenException("Invalid pagination token.")
        position, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(scope, position)):
            raise InvalidPaginationTokenException("Invalid pagination token.")
        return position.decode()

    def _mac(self, scope: str, position: bytes) -> bytes:
        scope_bytes = scope.encode()
        # The scope's length prefix keeps (scope, position) pairs from sharing one message.
        message = _LABEL + len(scope_bytes).to_bytes(4, "big") + scope_bytes + position
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(token: str) -> bytes | None:
    """The token's bytes, or None unless it is the exact spelling `_encode` gives them."""
    if not token.isascii() or len(token) > TOKEN_MAX_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        return None
    # urlsafe_b64decode skips stray characters; insisting on the canonical form refuses them.
    return raw if _encode(raw) == token else None
