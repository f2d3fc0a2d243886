"""Envelope encryption: AES-256-GCM content encryption and X25519 key wrapping.

Content
    Every encrypted member gets its own random 96-bit nonce under one random 256-bit content key.
    The AAD binds the ciphertext to the bundle and to its position in it
    (``b"tinymlops/bundle-member/v1\\0" + bundle_id + b"\\0" + member name``), so a member cannot
    be moved to another bundle or another slot of the same bundle and still decrypt.

Key wrap (to a device's or a fleet's X25519 public key)
    1. a fresh ephemeral X25519 key pair; ECDH with the recipient's public key;
    2. HKDF-SHA256 (random 32-byte salt, ``info = b"tinymlops/bundle-key-wrap/v1" + recipient
       key id``) derives a 256-bit wrapping key;
    3. AES-256-GCM encrypts the content key with a random nonce; the AAD is the ephemeral public
       key plus the caller's context (the bundle id), so a wrap cannot be lifted into another bundle.

Unwrapping with another private key is a :class:`KeyMismatchError` ("this bundle is not for
this device/fleet key"). Edge-safe: imports only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tinymlops.crypto.keys import PUBLIC_KEY_BYTES, key_id, public_bytes, x25519_public
from tinymlops.errors import IntegrityError, KeyMismatchError, UsageError

CONTENT_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_BYTES = 32
WRAPPED_KEY_BYTES = CONTENT_KEY_BYTES + TAG_BYTES
WRAP_INFO = b"tinymlops/bundle-key-wrap/v1"
MEMBER_AAD = b"tinymlops/bundle-member/v1"


def new_content_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def member_aad(bundle_id: str, member: str) -> bytes:
    return MEMBER_AAD + b"\x00" + bundle_id.encode("utf-8") + b"\x00" + member.encode("utf-8")


def encrypt_member(content_key: bytes, bundle_id: str, member: str, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt one member; returns ``(nonce, ciphertext_with_tag)``."""
    _check_content_key(content_key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(content_key).encrypt(nonce, bytes(plaintext), member_aad(bundle_id, member))


def decrypt_member(content_key: bytes, bundle_id: str, member: str, nonce: bytes, ciphertext: bytes) -> bytes:
    """Decrypt one member; a failed tag (tampered, swapped, truncated) is an IntegrityError naming it."""
    _check_content_key(content_key)
    if len(nonce) != NONCE_BYTES:
        raise IntegrityError(f"{member}: nonce must be {NONCE_BYTES} bytes, got {len(nonce)}", member=member)
    if len(ciphertext) < TAG_BYTES:
        raise IntegrityError(f"{member}: ciphertext shorter than its authentication tag", member=member)
    try:
        return AESGCM(content_key).decrypt(bytes(nonce), bytes(ciphertext), member_aad(bundle_id, member))
    except InvalidTag:
        raise IntegrityError(
            f"{member}: decryption failed (authentication tag mismatch: tampered, truncated or moved "
            "from another bundle)",
            member=member,
        ) from None


def _check_content_key(content_key: bytes) -> None:
    if len(content_key) != CONTENT_KEY_BYTES:
        raise UsageError(f"content key must be {CONTENT_KEY_BYTES} bytes, got {len(content_key)}")


@dataclass(frozen=True)
class WrappedKey:
    """A content key wrapped to one recipient's X25519 public key."""

    recipient_key_id: str
    ephemeral_public: bytes
    salt: bytes
    nonce: bytes
    wrapped_key: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(recipient_key_id={self.recipient_key_id!r}, wrapped_key=<{len(self.wrapped_key)} bytes>)"


def _derive(shared: bytes, salt: bytes, recipient_kid: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=WRAP_INFO + recipient_kid.encode("ascii"))
    return hkdf.derive(shared)


def wrap_key(content_key: bytes, recipient: X25519PublicKey | bytes, *, context: bytes = b"") -> WrappedKey:
    """Wrap ``content_key`` to ``recipient``; ``context`` (e.g. the bundle id) is bound as AAD."""
    _check_content_key(content_key)
    recipient_pub = x25519_public(recipient)
    kid = key_id(recipient_pub)
    ephemeral = X25519PrivateKey.generate()
    eph_pub = public_bytes(ephemeral)
    try:
        shared = ephemeral.exchange(recipient_pub)
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise UsageError(f"recipient key {kid} is not a usable X25519 public key") from exc
    salt = os.urandom(SALT_BYTES)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_derive(shared, salt, kid)).encrypt(nonce, content_key, eph_pub + context)
    return WrappedKey(kid, eph_pub, salt, nonce, wrapped)


def unwrap_key(wrapped: WrappedKey, private_key: X25519PrivateKey, *, context: bytes = b"") -> bytes:
    """Recover the content key with the recipient's private key, or raise :class:`KeyMismatchError`."""
    if not isinstance(private_key, X25519PrivateKey):
        raise UsageError(f"unwrapping needs an X25519 private key, got {type(private_key).__name__}")
    mine = key_id(private_key)
    if mine != wrapped.recipient_key_id:
        raise KeyMismatchError(
            f"this bundle is not for this device/fleet key: it is wrapped to key {wrapped.recipient_key_id}, "
            f"the key offered is {mine}",
            wrapped_to=wrapped.recipient_key_id,
            offered=mine,
        )
    if (
        len(wrapped.ephemeral_public) != PUBLIC_KEY_BYTES
        or len(wrapped.salt) != SALT_BYTES
        or len(wrapped.nonce) != NONCE_BYTES
        or len(wrapped.wrapped_key) != WRAPPED_KEY_BYTES
    ):
        raise KeyMismatchError("this bundle's key wrap is malformed (field sizes); it cannot be opened")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(wrapped.ephemeral_public))
        return AESGCM(_derive(shared, wrapped.salt, mine)).decrypt(
            wrapped.nonce, wrapped.wrapped_key, wrapped.ephemeral_public + context
        )
    except (InvalidTag, ValueError):
        raise KeyMismatchError(
            f"this bundle is not for this device/fleet key: the content key does not unwrap with key {mine}",
            offered=mine,
        ) from None


__all__ = [
    "CONTENT_KEY_BYTES",
    "NONCE_BYTES",
    "SALT_BYTES",
    "WRAPPED_KEY_BYTES",
    "WRAP_INFO",
    "WrappedKey",
    "decrypt_member",
    "encrypt_member",
    "member_aad",
    "new_content_key",
    "unwrap_key",
    "wrap_key",
]
