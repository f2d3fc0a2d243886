"""Detached Ed25519 signatures, and the small signature document a bundle carries.

:func:`sign` / :func:`verify` work on raw 64-byte signatures. A :class:`DetachedSignature` is what
travels next to a signed document (``manifest.sig`` in a bundle): the signer's key id and the
signature, as canonical JSON ``{"keyid":"<16 hex>","sig":"<128 lowercase hex>"}``. Its parser is
strict — the bytes must be exactly the canonical encoding — so no bit of it can change without
being refused (hex case, whitespace and key order are not free).

The key id is only a hint for choosing the key; trust comes from verifying with a key the
caller passed in as trusted. Edge-safe: imports only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.crypto.keys import ed25519_public, key_id
from tinymlops.errors import IntegrityError, SignatureError

SIGNATURE_BYTES = 64
#: a signature document is ~170 bytes; anything much larger is refused before parsing
MAX_SIGNATURE_DOC_BYTES = 1024

_KEYID = re.compile(r"^[0-9a-f]{16}$")
_SIG = re.compile(r"^[0-9a-f]{128}$")

TrustedKey = Ed25519PublicKey | Ed25519PrivateKey | bytes


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """A detached 64-byte Ed25519 signature over ``data``."""
    return key.sign(bytes(data))


def verify(public_key: Ed25519PublicKey | bytes, signature: bytes, data: bytes, *, member: str | None = None) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public_key``'s signature over ``data``."""
    pub = ed25519_public(public_key)
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"a signature is {SIGNATURE_BYTES} bytes, got {len(signature)}", member=member)
    try:
        pub.verify(bytes(signature), bytes(data))
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {key_id(pub)} does not verify over {member or 'the data'} "
            "(the signed data or the signature was changed)",
            member=member,
        ) from None


@dataclass(frozen=True)
class DetachedSignature:
    keyid: str
    signature: bytes

    @classmethod
    def create(cls, key: Ed25519PrivateKey, data: bytes) -> DetachedSignature:
        return cls(key_id(key), sign(key, data))

    def encode(self) -> bytes:
        doc = {"keyid": self.keyid, "sig": self.signature.hex()}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes, *, member: str | None = None) -> DetachedSignature:
        """Parse strictly; anything but the canonical encoding is an :class:`IntegrityError`."""
        if len(raw) > MAX_SIGNATURE_DOC_BYTES:
            raise IntegrityError(f"signature document is {len(raw)} bytes, far too large", member=member)
        try:
            doc = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise IntegrityError("signature document is not valid JSON", member=member) from None
        if not isinstance(doc, dict) or set(doc) != {"keyid", "sig"}:
            raise IntegrityError("signature document must hold exactly 'keyid' and 'sig'", member=member)
        keyid, sig = doc["keyid"], doc["sig"]
        if not isinstance(keyid, str) or not _KEYID.match(keyid):
            raise IntegrityError("signature document: 'keyid' must be 16 lowercase hex digits", member=member)
        if not isinstance(sig, str) or not _SIG.match(sig):
            raise IntegrityError("signature document: 'sig' must be 128 lowercase hex digits", member=member)
        out = cls(keyid, bytes.fromhex(sig))
        if out.encode() != bytes(raw):
            raise IntegrityError("signature document is not in canonical form", member=member)
        return out


def trusted_key_map(trusted: Iterable[TrustedKey]) -> dict[str, Ed25519PublicKey]:
    """Trusted Ed25519 public keys by key id."""
    out: dict[str, Ed25519PublicKey] = {}
    for k in trusted:
        pub = ed25519_public(k)
        out[key_id(pub)] = pub
    return out


def verify_detached(
    signature_doc: bytes,
    data: bytes,
    trusted: Iterable[TrustedKey],
    *,
    member: str | None = None,
    signed_member: str | None = None,
) -> str:
    """Verify a :class:`DetachedSignature` document over ``data`` with one of the ``trusted`` keys.

    Returns the signer's key id. A key that is not trusted raises :class:`SignatureError` naming
    ``member`` (the signature document); a signature that does not verify one naming
    ``signed_member`` (the signed data, default ``member``); a malformed document raises
    :class:`IntegrityError` naming ``member``.
    """
    doc = DetachedSignature.decode(signature_doc, member=member)
    keys = trusted_key_map(trusted)
    if not keys:
        raise SignatureError("no trusted release keys were given: nothing can verify this signature", member=member)
    pub = keys.get(doc.keyid)
    if pub is None:
        raise SignatureError(
            f"signed by an untrusted release key {doc.keyid} (trusted: {', '.join(sorted(keys))})",
            member=member,
            keyid=doc.keyid,
        )
    verify(pub, doc.signature, data, member=signed_member or member)
    return doc.keyid


__all__ = [
    "SIGNATURE_BYTES",
    "DetachedSignature",
    "TrustedKey",
    "sign",
    "trusted_key_map",
    "verify",
    "verify_detached",
]
