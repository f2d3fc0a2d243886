"""Detached Ed25519 signatures and the strict signature document."""

from __future__ import annotations

import json

import pytest

from tinymlops.crypto.keys import generate_signing_key, key_id, public_bytes
from tinymlops.crypto.signing import DetachedSignature, sign, verify, verify_detached
from tinymlops.errors import IntegrityError, SignatureError


def test_sign_verify_and_tamper() -> None:
    key = generate_signing_key()
    sig = sign(key, b"manifest")
    verify(key.public_key(), sig, b"manifest")
    verify(public_bytes(key), sig, b"manifest")
    with pytest.raises(SignatureError, match="does not verify"):
        verify(key.public_key(), sig, b"manifesT")
    with pytest.raises(SignatureError):
        verify(key.public_key(), bytes([sig[0] ^ 1]) + sig[1:], b"manifest")
    with pytest.raises(SignatureError, match="64 bytes"):
        verify(key.public_key(), sig[:-1], b"manifest", member="manifest.sig")
    with pytest.raises(SignatureError):
        verify(generate_signing_key().public_key(), sig, b"manifest")


def test_signature_document_round_trip_and_strictness() -> None:
    key = generate_signing_key()
    doc = DetachedSignature.create(key, b"data")
    raw = doc.encode()
    assert DetachedSignature.decode(raw) == doc
    assert doc.keyid == key_id(key)
    # not canonical: upper-case hex, spaces, reordered keys, extra fields -> refused
    variants = [
        raw.replace(doc.signature.hex().encode(), doc.signature.hex().upper().encode()),
        raw.replace(b":", b": "),
        json.dumps({"sig": doc.signature.hex(), "keyid": doc.keyid}, separators=(",", ":")).encode(),
        raw[:-1] + b',"x":1}',
        b"[]",
        b"\xff",
        b" " * 2000,
    ]
    for bad in variants:
        with pytest.raises(IntegrityError) as info:
            DetachedSignature.decode(bad, member="manifest.sig")
        assert info.value.member == "manifest.sig"


def test_verify_detached_trust() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    raw = DetachedSignature.create(key, b"data").encode()
    assert verify_detached(raw, b"data", [key.public_key()]) == key_id(key)
    assert verify_detached(raw, b"data", [public_bytes(other), public_bytes(key)]) == key_id(key)
    with pytest.raises(SignatureError, match=f"untrusted release key {key_id(key)}") as info:
        verify_detached(raw, b"data", [other.public_key()], member="manifest.sig")
    assert info.value.member == "manifest.sig"
    with pytest.raises(SignatureError, match="no trusted"):
        verify_detached(raw, b"data", [])
    with pytest.raises(SignatureError) as info:
        verify_detached(raw, b"datA", [key], member="manifest.sig", signed_member="manifest.json")
    assert info.value.member == "manifest.json"
