"""Issuer signatures over licenses and revocations: each verifies only as the kind of document it was
made for (domain separation in every direction, usage reports included), only with a trusted issuer
key the document names, and a document is signed only by the key it names."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import key_id, public_bytes
from tinymlops.errors import SignatureError
from tinymlops.metering.license_signing import (
    LICENSE_DOMAIN,
    REVOCATION_DOMAIN,
    USAGE_REPORT_DOMAIN,
    SignedLicense,
    SignedRevocation,
    sign_license,
    sign_revocation,
    verify_license,
    verify_revocation,
)
from tinymlops.spec.license import License, Revocation

ISSUER = Ed25519PrivateKey.generate()
DEVICE = Ed25519PrivateKey.generate()
DOMAINS = (LICENSE_DOMAIN, REVOCATION_DOMAIN, USAGE_REPORT_DOMAIN, b"")


def _license(issuer: Ed25519PrivateKey = ISSUER) -> License:
    return License(
        license_id="1" * 32,
        device_id=key_id(DEVICE),
        device_public_key=public_bytes(DEVICE).hex(),
        model="digits",
        queries=10,
        valid_from=0,
        valid_until=100,
        issued_at=0,
        issuer_key_id=key_id(issuer),
    )


def _revocation(issuer: Ed25519PrivateKey = ISSUER) -> Revocation:
    return Revocation(
        license_id="1" * 32,
        device_id=key_id(DEVICE),
        model="digits",
        revoked_at=5,
        reason="chargeback",
        issuer_key_id=key_id(issuer),
    )


KINDS = {
    "license": (_license, SignedLicense, verify_license, LICENSE_DOMAIN),
    "revocation": (_revocation, SignedRevocation, verify_revocation, REVOCATION_DOMAIN),
}


@pytest.mark.parametrize(("kind", "domain"), list(itertools.product(KINDS, DOMAINS)))
def test_a_signature_verifies_only_under_its_own_domain(kind: str, domain: bytes) -> None:
    build, signed_type, verify, own = KINDS[kind]
    data = build().to_bytes()
    signed = signed_type(data, ISSUER.sign(domain + data))
    if domain == own:
        assert verify(signed, [ISSUER.public_key()]) == build()
    else:
        with pytest.raises(SignatureError, match="does not verify"):
            verify(signed, [ISSUER.public_key()])


@pytest.mark.parametrize("kind", list(KINDS))
def test_only_a_trusted_issuer_named_by_the_document_verifies(kind: str) -> None:
    build, signed_type, verify, own = KINDS[kind]
    stranger = Ed25519PrivateKey.generate()
    data = build(stranger).to_bytes()
    with pytest.raises(SignatureError, match="does not trust"):
        verify(signed_type(data, stranger.sign(own + data)), [ISSUER.public_key()])
    # names the trusted issuer, signed by another key
    data = build().to_bytes()
    with pytest.raises(SignatureError, match="does not verify"):
        verify(signed_type(data, stranger.sign(own + data)), [ISSUER.public_key()])
    # the altered bytes of a genuine document
    genuine = signed_type(data, ISSUER.sign(own + data))
    altered = signed_type(data.replace(b'"digits"', b'"digitz"'), genuine.signature)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(altered, [ISSUER.public_key()])


def test_a_document_is_signed_only_by_the_key_it_names() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="names issuer key"):
        sign_license(_license(), other)
    with pytest.raises(SignatureError, match="names issuer key"):
        sign_revocation(_revocation(), other)
    assert verify_license(sign_license(_license(), ISSUER), [ISSUER.public_key()]) == _license()
    assert verify_revocation(sign_revocation(_revocation(), ISSUER), [ISSUER.public_key()]) == _revocation()


def test_the_parsed_documents_keep_their_exact_bytes_and_digest() -> None:
    for doc in (_license(), _revocation()):
        raw = doc.to_bytes()
        parsed = type(doc).from_bytes(raw)
        assert parsed == doc and parsed.to_bytes() == raw and parsed.digest == doc.digest
        spaced = raw.replace(b",", b", ")  # the same document, other bytes: another digest
        assert type(doc).from_bytes(spaced).digest != doc.digest
