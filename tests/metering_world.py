"""Shared helpers for the metering tests: an issuer, a device, and licenses signed for it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import key_id, public_bytes
from tinymlops.metering.license_signing import SignedLicense, sign_license
from tinymlops.spec.license import License

T0 = 1_800_000_000


@dataclass
class Issuer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return public_bytes(self.key)

    def license(
        self,
        device: Ed25519PrivateKey,
        *,
        queries: int = 100,
        model: str = "tiny",
        previous: str | None = None,
        valid_from: int = T0 - 3600,
        valid_until: int = T0 + 86400,
        min_version: int | None = None,
        max_version: int | None = None,
    ) -> License:
        return License(
            license_id=secrets.token_hex(16),
            device_id=key_id(device),
            device_public_key=public_bytes(device).hex(),
            model=model,
            queries=queries,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=T0 - 3600,
            issuer_key_id=key_id(self.key),
            min_version=min_version,
            max_version=max_version,
            previous_license_id=previous,
        )

    def signed(self, device: Ed25519PrivateKey, **kwargs: object) -> SignedLicense:
        return sign_license(self.license(device, **kwargs), self.key)  # type: ignore[arg-type]


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
