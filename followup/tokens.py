"""Signed tokens for links in messages (one-click unsubscribe). HMAC-SHA256, no state.

A token names what it acts on and carries a signature over it with FOLLOWUP_SECRET_KEY;
a forged or altered token does not verify and changes nothing.
"""

from __future__ import annotations

import base64
import hmac


def _sign(secret: str, purpose: str, subject: str) -> str:
    mac = hmac.digest(secret.encode(), f"{purpose}:{subject}".encode(), "sha256")
    return base64.urlsafe_b64encode(mac[:18]).decode().rstrip("=")


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
