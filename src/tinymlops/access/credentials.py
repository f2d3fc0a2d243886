"""Bearer secrets: API keys, enrolment tokens and device tokens share one shape and one check.

A secret is ``<prefix>_<id>_<secret>``: ``prefix`` says what it is (``tmk`` API key, ``tme``
enrolment token, ``tmd`` device bearer token), ``id`` is 16 random lower-case hex digits (the
row to look up, not secret), ``secret`` 32 random bytes as 43 base64url characters. Only the
SHA-256 of the whole string is stored — the secrets are 256-bit random, so a fast hash is enough
and a leaked database does not leak usable credentials — and comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from tinymlops.errors import AuthenticationError

API_KEY_PREFIX = "tmk"
ENROLMENT_TOKEN_PREFIX = "tme"
DEVICE_TOKEN_PREFIX = "tmd"
SECRET_BYTES = 32
ID_HEX = 16

_SHAPE = re.compile(r"^(tm[a-z])_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def new_secret(prefix: str) -> tuple[str, str, str]:
    """A fresh ``(id, secret, sha256 of secret)``."""
    ident = secrets.token_hex(ID_HEX // 2)
    body = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")
    secret = f"{prefix}_{ident}_{body}"
    return ident, secret, secret_hash(secret)


def parse_secret(secret: str, prefix: str, what: str) -> tuple[str, str]:
    """``(id, sha256)`` of a well-formed secret of kind ``prefix``; else :class:`AuthenticationError`
    naming ``what`` (never echoing the secret)."""
    match = _SHAPE.fullmatch(secret) if isinstance(secret, str) else None
    if match is None:
        raise AuthenticationError(f"malformed {what} (expected {prefix}_<16 hex>_<43 base64url characters>)")
    if match.group(1) != prefix:
        raise AuthenticationError(f"expected {_article(what)} {what} ({prefix}_…), got a {match.group(1)}_… credential")
    return match.group(2), secret_hash(secret)


def hashes_match(stored: str, offered: str) -> bool:
    return hmac.compare_digest(stored.encode("ascii"), offered.encode("ascii"))


def kind_of(secret: str) -> str | None:
    """The prefix of a well-formed secret (``tmk``, ``tme``, ``tmd``), else ``None``."""
    match = _SHAPE.fullmatch(secret)
    return match.group(1) if match else None


__all__ = [
    "API_KEY_PREFIX",
    "DEVICE_TOKEN_PREFIX",
    "ENROLMENT_TOKEN_PREFIX",
    "hashes_match",
    "kind_of",
    "new_secret",
    "parse_secret",
    "secret_hash",
]
