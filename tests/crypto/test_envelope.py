"""AES-256-GCM member encryption (bound to bundle and member) and X25519 key wrapping."""

from __future__ import annotations

import dataclasses

import pytest

from tinymlops.crypto.envelope import (
    WRAPPED_KEY_BYTES,
    decrypt_member,
    encrypt_member,
    new_content_key,
    unwrap_key,
    wrap_key,
)
from tinymlops.crypto.keys import DeviceKeys, generate_wrapping_key, key_id, public_bytes
from tinymlops.errors import IntegrityError, KeyMismatchError, UsageError

BID = "0" * 32


def test_member_round_trip_and_aad_binding() -> None:
    key = new_content_key()
    nonce, ct = encrypt_member(key, BID, "model.enc", b"secret model bytes")
    assert b"secret" not in ct and len(ct) == len(b"secret model bytes") + 16
    assert decrypt_member(key, BID, "model.enc", nonce, ct) == b"secret model bytes"
    # moved to another bundle or another position, tampered, truncated, or the wrong key
    attempts = [
        (key, "1" * 32, "model.enc", nonce, ct),
        (key, BID, "models/small.enc", nonce, ct),
        (key, BID, "model.enc", nonce, ct[:-1] + bytes([ct[-1] ^ 1])),
        (key, BID, "model.enc", nonce, ct[:10]),
        (key, BID, "model.enc", bytes(12), ct),
        (new_content_key(), BID, "model.enc", nonce, ct),
    ]
    for args in attempts:
        with pytest.raises(IntegrityError) as info:
            decrypt_member(*args)
        assert info.value.member == args[2]
    with pytest.raises(UsageError):
        encrypt_member(b"short", BID, "m", b"x")


def test_nonces_are_fresh() -> None:
    key = new_content_key()
    assert encrypt_member(key, BID, "m", b"x")[0] != encrypt_member(key, BID, "m", b"x")[0]


def test_wrap_unwrap_for_the_right_key_only() -> None:
    device = DeviceKeys.generate()
    content = new_content_key()
    wrapped = wrap_key(content, device.wrapping_public, context=b"bundle-1")
    assert wrapped.recipient_key_id == device.wrapping_key_id
    assert len(wrapped.wrapped_key) == WRAPPED_KEY_BYTES
    assert content not in repr(wrapped).encode() and "wrapped_key=<48 bytes>" in repr(wrapped)
    assert unwrap_key(wrapped, device.wrapping, context=b"bundle-1") == content
    other = generate_wrapping_key()
    with pytest.raises(KeyMismatchError, match="not for this device/fleet key") as info:
        unwrap_key(wrapped, other, context=b"bundle-1")
    assert info.value.details["wrapped_to"] == device.wrapping_key_id
    # the wrap is bound to its context (the bundle id) and its recipient
    with pytest.raises(KeyMismatchError):
        unwrap_key(wrapped, device.wrapping, context=b"bundle-2")
    forged = dataclasses.replace(wrapped, recipient_key_id=key_id(other))
    with pytest.raises(KeyMismatchError):
        unwrap_key(forged, other, context=b"bundle-1")
    tampered = dataclasses.replace(wrapped, wrapped_key=bytes([wrapped.wrapped_key[0] ^ 1]) + wrapped.wrapped_key[1:])
    with pytest.raises(KeyMismatchError):
        unwrap_key(tampered, device.wrapping, context=b"bundle-1")
    with pytest.raises(UsageError):
        unwrap_key(wrapped, device.signing, context=b"bundle-1")  # type: ignore[arg-type]


def test_each_wrap_uses_a_fresh_ephemeral_key_and_salt() -> None:
    pub = public_bytes(generate_wrapping_key())
    a, b = wrap_key(new_content_key(), pub), wrap_key(new_content_key(), pub)
    assert a.ephemeral_public != b.ephemeral_public and a.salt != b.salt
