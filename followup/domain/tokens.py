"""Signed tokens for links in messages (one-click unsubscribe). HMAC-SHA256, no state.

A token names what it acts on and carries a signature over it with FOLLOWUP_SECRET_KEY;
a forged or altered token does not verify and changes nothing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from typing import Any

_BLOCK = 64  # SHA-256's block size
_INNER = bytes(byte ^ 0x36 for byte in range(256))
_OUTER = bytes(byte ^ 0x5C for byte in range(256))


@functools.lru_cache(maxsize=16)
def _keyed(secret: str) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with the key already absorbed: the inner and outer hashes after
    the padded key, copied for each token (cheaper than setting up an HMAC every time)."""
    key = secret.encode()
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_INNER)), hashlib.sha256(key.translate(_OUTER))


def _sign(secret: str, purpose: str, subject: str) -> str:
    inner, outer = _keyed(secret)
    inner, outer = inner.copy(), outer.copy()
    inner.update(f"{purpose}:{subject}".encode())
    outer.update(inner.digest())
    return base64.urlsafe_b64encode(outer.digest()[:18]).decode().rstrip("=")


def make(secret: str, purpose: str, subject: int | str) -> str:
    return f"{subject}.{_sign(secret, purpose, str(subject))}"


def verify(secret: str, purpose: str, token: str) -> str | None:
    """The subject of a valid token, or None."""
    subject, _, signature = token.rpartition(".")
    if not subject or not signature:
        return None
    expected = _sign(secret, purpose, subject)
    if not signature.isascii():
        return None
    return subject if hmac.compare_digest(expected.encode(), signature.encode()) else None
