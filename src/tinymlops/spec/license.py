"""Prepaid query licenses: what the server signs so a device may serve N predictions offline.

A license (a signed document: unknown fields are kept byte-for-byte, only an unsupported major
``spec_version`` is refused)::

    {
      "spec_version": "1.0",
      "license_id": "<32 hex>",            # random 128 bits
      "device_id": "<16 hex>",             # key id of the device's Ed25519 key (sha256(pub)[:16])
      "device_public_key": "<64 hex>",     # that raw Ed25519 public key
      "model": "digits",                   # the model name the queries are for
      "min_version": 1 | null,             # optional base-version range, inclusive
      "max_version": 3 | null,
      "queries": 1000,                     # >= 1; a top-up adds its queries to the chain
      "valid_from": 1718000000,            # epoch seconds, inclusive
      "valid_until": 1720592000,           # epoch seconds, exclusive
      "issued_at": 1718000000,
      "previous_license_id": "<32 hex>" | null,   # the license this one tops up
      "issuer_key_id": "<16 hex>"          # key id of the server key that signs it
    }

:meth:`License.to_bytes` is canonical JSON (sorted keys, no whitespace, UTF-8); a license parsed
with :meth:`License.from_bytes` keeps its exact bytes (``raw``), which are what the signature
covers. Signing and verification (Ed25519, domain-separated) live in
:mod:`tinymlops.metering.license_signing`; this module is standard library only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tinymlops.errors import SpecError
from tinymlops.spec._parse import HEX16, HEX32, HEX64, check_version, read_hex, read_int
from tinymlops.spec.manifest import canonical_json, parse_json_strict

LICENSE_MAJOR = 1
LICENSE_VERSION = "1.0"
MAX_LICENSE_BYTES = 16 * 1024
MAX_QUERIES = 10**12
MAX_MODEL_CHARS = 128
#: seconds since the epoch must fit this (year ~33658); keeps every value an exact JSON integer
MAX_EPOCH = 10**12

DOC = LICENSE_DOC = "license"
#: a model name as a license (and the metering policy) names it
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_FIELDS = (
    "spec_version",
    "license_id",
    "device_id",
    "device_public_key",
    "model",
    "min_version",
    "max_version",
    "queries",
    "valid_from",
    "valid_until",
    "issued_at",
    "previous_license_id",
    "issuer_key_id",
)


class _IssuedDocument:
    """What a license and a revocation share: a signed document kept as the exact bytes it was parsed
    from (``raw``), else its canonical JSON, and a strict parser with a size cap."""

    DOC: ClassVar[str]
    raw: bytes | None

    if TYPE_CHECKING:  # each document defines these

        def to_dict(self) -> dict[str, Any]: ...

        @classmethod
        def from_dict(cls, data: Any, *, raw: bytes | None = None) -> Any: ...

    def to_bytes(self) -> bytes:
        """The signed bytes: the exact bytes it was parsed from, else canonical JSON."""
        return self.raw if self.raw is not None else canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        """sha256 (hex) of :meth:`to_bytes`: what the device's ledger entry commits to (``ref``)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Any:
        """Parse strictly (size, UTF-8, duplicate keys, NaN refused); keep the exact bytes."""
        raw = bytes(raw)
        if len(raw) > MAX_LICENSE_BYTES:
            raise SpecError(f"{cls.DOC}: {len(raw)} bytes, more than the {MAX_LICENSE_BYTES} accepted")
        return cls.from_dict(parse_json_strict(raw, cls.DOC), raw=raw)


def _read_head(doc: str, data: Any) -> tuple[str, str]:
    """The checks every issued document starts with: an object, a supported major version, a model
    name. Returns (spec_version, model)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
    version = check_version(doc, data, LICENSE_MAJOR)
    model = data.get("model")
    if not isinstance(model, str) or not MODEL_NAME.match(model):
        raise SpecError(f"{doc}: field 'model' must be a model name (letters, digits, . _ -), got {model!r:.80}")
    return version, model


@dataclass(frozen=True)
class License(_IssuedDocument):
    DOC: ClassVar[str] = LICENSE_DOC

    license_id: str
    device_id: str
    device_public_key: str
    model: str
    queries: int
    valid_from: int
    valid_until: int
    issued_at: int
    issuer_key_id: str
    min_version: int | None = None
    max_version: int | None = None
    previous_license_id: str | None = None
    spec_version: str = LICENSE_VERSION
    #: fields a newer issuer added, kept as they were
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the exact bytes this license was parsed from (None: built here, see to_bytes)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # a License built in code must be one from_dict would accept
        if self.raw is None:
            License.from_dict(self.to_dict())

    def covers_version(self, version: int | None) -> bool:
        """Whether a base version is inside the license's range (None: the version is unknown,
        covered only when the license names no range)."""
        if version is None:
            return self.min_version is None and self.max_version is None
        return (self.min_version is None or version >= self.min_version) and (
            self.max_version is None or version <= self.max_version
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            spec_version=self.spec_version,
            license_id=self.license_id,
            device_id=self.device_id,
            device_public_key=self.device_public_key,
            model=self.model,
            min_version=self.min_version,
            max_version=self.max_version,
            queries=self.queries,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            issued_at=self.issued_at,
            previous_license_id=self.previous_license_id,
            issuer_key_id=self.issuer_key_id,
        )
        return out

    @classmethod
    def from_dict(cls, data: Any, *, raw: bytes | None = None) -> License:
        version, model = _read_head(DOC, data)
        if "previous_license_id" not in data:
            raise SpecError(f"{DOC}: missing required field 'previous_license_id'")
        prev = data["previous_license_id"]
        if prev is not None and (not isinstance(prev, str) or not HEX32.match(prev)):
            raise SpecError(f"{DOC}: field 'previous_license_id' must be 32 lowercase hex digits or null")
        lic = cls(
            spec_version=version,
            license_id=read_hex(DOC, data, "license_id", HEX32, "32 lowercase hex digits"),
            device_id=read_hex(DOC, data, "device_id", HEX16, "16 lowercase hex digits"),
            device_public_key=read_hex(DOC, data, "device_public_key", HEX64, "64 lowercase hex digits"),
            model=model,
            min_version=read_int(DOC, data, "min_version", low=0, high=MAX_EPOCH, nullable=True),
            max_version=read_int(DOC, data, "max_version", low=0, high=MAX_EPOCH, nullable=True),
            queries=read_int(DOC, data, "queries", low=1, high=MAX_QUERIES),
            valid_from=read_int(DOC, data, "valid_from", low=0, high=MAX_EPOCH),
            valid_until=read_int(DOC, data, "valid_until", low=0, high=MAX_EPOCH),
            issued_at=read_int(DOC, data, "issued_at", low=0, high=MAX_EPOCH),
            previous_license_id=prev,
            issuer_key_id=read_hex(DOC, data, "issuer_key_id", HEX16, "16 lowercase hex digits"),
            extra={k: v for k, v in data.items() if k not in _FIELDS},
            raw=raw if raw is not None else b"",  # b"" marks "validated" until replaced below
        )
        if lic.valid_until <= lic.valid_from:
            raise SpecError(f"{DOC}: valid_until ({lic.valid_until}) must be after valid_from ({lic.valid_from})")
        if lic.min_version is not None and lic.max_version is not None and lic.min_version > lic.max_version:
            raise SpecError(f"{DOC}: min_version ({lic.min_version}) is above max_version ({lic.max_version})")
        if prev == lic.license_id:
            raise SpecError(f"{DOC}: a license cannot top up itself")
        if hashlib.sha256(bytes.fromhex(lic.device_public_key)).hexdigest()[:16] != lic.device_id:
            raise SpecError(f"{DOC}: device_id {lic.device_id} is not the key id of device_public_key")
        if raw is None:
            object.__setattr__(lic, "raw", None)
        return lic

    @classmethod
    def from_bytes(cls, raw: bytes) -> License:
        return super().from_bytes(raw)  # type: ignore[no-any-return]


REVOCATION_DOC = "license revocation"
MAX_REASON_CHARS = 200
_REVOCATION_FIELDS = ("spec_version", "license_id", "device_id", "model", "revoked_at", "reason", "issuer_key_id")


@dataclass(frozen=True)
class Revocation(_IssuedDocument):
    """The issuer's signed word that a license is revoked (a signed document like :class:`License`)::

        {"spec_version": "1.0", "license_id": "<32 hex>", "device_id": "<16 hex>", "model": "digits",
         "revoked_at": 1718000000, "reason": "chargeback", "issuer_key_id": "<16 hex>"}

    The device learns it at its next contact, writes a ``revoke`` entry into its ledger and refuses
    metered calls until a top-up is installed. Signed by the same issuer key as licenses, under its
    own domain (:func:`tinymlops.metering.license_signing.sign_revocation`)."""

    DOC: ClassVar[str] = REVOCATION_DOC

    license_id: str
    device_id: str
    model: str
    revoked_at: int
    reason: str
    issuer_key_id: str
    spec_version: str = LICENSE_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.raw is None:
            Revocation.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            spec_version=self.spec_version,
            license_id=self.license_id,
            device_id=self.device_id,
            model=self.model,
            revoked_at=self.revoked_at,
            reason=self.reason,
            issuer_key_id=self.issuer_key_id,
        )
        return out

    @classmethod
    def from_dict(cls, data: Any, *, raw: bytes | None = None) -> Revocation:
        doc = REVOCATION_DOC
        version, model = _read_head(doc, data)
        reason = data.get("reason")
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise SpecError(f"{doc}: field 'reason' must be a string of at most {MAX_REASON_CHARS} characters")
        rev = cls(
            spec_version=version,
            license_id=read_hex(doc, data, "license_id", HEX32, "32 lowercase hex digits"),
            device_id=read_hex(doc, data, "device_id", HEX16, "16 lowercase hex digits"),
            model=model,
            revoked_at=read_int(doc, data, "revoked_at", low=0, high=MAX_EPOCH),
            reason=reason,
            issuer_key_id=read_hex(doc, data, "issuer_key_id", HEX16, "16 lowercase hex digits"),
            extra={k: v for k, v in data.items() if k not in _REVOCATION_FIELDS},
            raw=raw if raw is not None else b"",
        )
        if raw is None:
            object.__setattr__(rev, "raw", None)
        return rev

    @classmethod
    def from_bytes(cls, raw: bytes) -> Revocation:
        return super().from_bytes(raw)  # type: ignore[no-any-return]


__all__ = [
    "LICENSE_MAJOR",
    "LICENSE_VERSION",
    "MAX_LICENSE_BYTES",
    "MODEL_NAME",
    "License",
    "Revocation",
    "canonical_json",
]
