"""Ed25519 signatures over licenses and usage reports, domain-separated.

Each signature covers a fixed prefix then the document's exact bytes, so a signature made for one
kind of document (a license, by the server's issuer key; a usage report, by the device key) can
never be replayed as another, nor as any other signature tinymlops makes with the same key.

* :func:`sign_license` / :func:`verify_license` — the issuer's key; the verifier passes the issuer
  keys it trusts and gets the parsed :class:`~tinymlops.spec.license.License` back.
* :func:`sign_revocation` / :func:`verify_revocation` — the issuer's key again, under its own
  domain: a revocation of a license the device holds.
* :func:`sign_usage_report` / :func:`verify_usage_report` — the device's key (its key id is the
  report's ``device_id``); over HTTP the signature travels, hex, in :data:`REPORT_SIGNATURE_HEADER`
  beside the report's exact bytes (``POST /v1/devices/me/usage``).

Edge-safe: ``cryptography`` and the standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import ed25519_public, key_id
from tinymlops.crypto.signing import TrustedKey, sign, trusted_key_map, verify
from tinymlops.errors import SignatureError
from tinymlops.spec.license import License, Revocation
from tinymlops.spec.usage_report import UsageReport

LICENSE_DOMAIN = b"tinymlops/license/v1\x00"
USAGE_REPORT_DOMAIN = b"tinymlops/usage-report/v1\x00"
#: the HTTP header carrying the device key's signature over a usage report's exact bytes (128 hex)
REPORT_SIGNATURE_HEADER = "X-Tinymlops-Report-Signature"
REVOCATION_DOMAIN = b"tinymlops/license-revocation/v1\x00"


@dataclass(frozen=True)
class SignedLicense:
    """A license's exact bytes and the issuer's 64-byte signature over them (domain-separated)."""

    data: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedRevocation:
    """A revocation's exact bytes and the issuer's 64-byte signature over them (domain-separated)."""

    data: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedUsageReport:
    """A usage report's exact bytes and the device's 64-byte signature over them (domain-separated)."""

    data: bytes
    signature: bytes


def _sign_issued(doc: License | Revocation, issuer_key: Ed25519PrivateKey, domain: bytes, what: str) -> bytes:
    """The issuer's signature over ``doc`` under ``domain`` (its ``issuer_key_id`` must name the key)."""
    if doc.issuer_key_id != key_id(issuer_key):
        raise SignatureError(
            f"{what} names issuer key {doc.issuer_key_id}, but the signing key is {key_id(issuer_key)}",
            member=_MEMBER[what],
        )
    return sign(issuer_key, domain + doc.to_bytes())


def _check_issuer(
    doc: License | Revocation,
    signed: SignedLicense | SignedRevocation,
    trusted_issuer_keys: Iterable[TrustedKey],
    domain: bytes,
    label: str,
    what: str,
) -> None:
    """Verify ``signed`` (which parsed as ``doc``) with the trusted issuer key the document names."""
    keys = trusted_key_map(trusted_issuer_keys)
    pub = keys.get(doc.issuer_key_id)
    if pub is None:
        raise SignatureError(
            f"{label} is signed by issuer key {doc.issuer_key_id}, which this device does not trust "
            f"(trusted: {', '.join(sorted(keys)) or 'none'})",
            member=_MEMBER[what],
        )
    verify(pub, signed.signature, domain + bytes(signed.data), member=_MEMBER[what])


#: the document member a signature error names
_MEMBER = {"license": "license", "revocation": "license revocation"}


def sign_license(license: License, issuer_key: Ed25519PrivateKey) -> SignedLicense:
    """Sign ``license`` (whose ``issuer_key_id`` must name ``issuer_key``)."""
    return SignedLicense(license.to_bytes(), _sign_issued(license, issuer_key, LICENSE_DOMAIN, "license"))


def verify_license(signed: SignedLicense, trusted_issuer_keys: Iterable[TrustedKey]) -> License:
    """Parse the license strictly and verify its signature with the trusted issuer key it names.

    A malformed license raises :class:`~tinymlops.errors.SpecError`; an issuer that is not trusted,
    or a signature that does not verify over these exact bytes, :class:`SignatureError`."""
    license = License.from_bytes(signed.data)
    _check_issuer(license, signed, trusted_issuer_keys, LICENSE_DOMAIN, f"license {license.license_id}", "license")
    return license


def sign_revocation(revocation: Revocation, issuer_key: Ed25519PrivateKey) -> SignedRevocation:
    """Sign ``revocation`` (whose ``issuer_key_id`` must name ``issuer_key``)."""
    signature = _sign_issued(revocation, issuer_key, REVOCATION_DOMAIN, "revocation")
    return SignedRevocation(revocation.to_bytes(), signature)


def verify_revocation(signed: SignedRevocation, trusted_issuer_keys: Iterable[TrustedKey]) -> Revocation:
    """Parse the revocation strictly and verify it with the trusted issuer key it names
    (:class:`~tinymlops.errors.SpecError` if malformed, :class:`SignatureError` if not trusted or forged)."""
    revocation = Revocation.from_bytes(signed.data)
    label = f"revocation of license {revocation.license_id}"
    _check_issuer(revocation, signed, trusted_issuer_keys, REVOCATION_DOMAIN, label, "revocation")
    return revocation


def sign_usage_report(report: UsageReport, device_key: Ed25519PrivateKey) -> SignedUsageReport:
    if report.device_id != key_id(device_key):
        raise SignatureError(
            f"usage report is for device {report.device_id}, the signing key is {key_id(device_key)}",
            member="usage report",
        )
    data = report.to_bytes()
    return SignedUsageReport(data, sign(device_key, USAGE_REPORT_DOMAIN + data))


def verify_usage_report(signed: SignedUsageReport, device_public_key: TrustedKey) -> UsageReport:
    """Parse the report strictly and verify it was signed by ``device_public_key`` (whose key id must
    be the report's ``device_id``)."""
    report = UsageReport.from_bytes(signed.data)
    pub = ed25519_public(device_public_key)
    if key_id(pub) != report.device_id:
        raise SignatureError(
            f"usage report claims device {report.device_id}, the key offered is {key_id(pub)}", member="usage report"
        )
    verify(pub, signed.signature, USAGE_REPORT_DOMAIN + bytes(signed.data), member="usage report")
    return report


__all__ = [
    "LICENSE_DOMAIN",
    "REPORT_SIGNATURE_HEADER",
    "REVOCATION_DOMAIN",
    "USAGE_REPORT_DOMAIN",
    "SignedLicense",
    "SignedRevocation",
    "SignedUsageReport",
    "sign_license",
    "sign_revocation",
    "sign_usage_report",
    "verify_license",
    "verify_revocation",
    "verify_usage_report",
]
