"""Metering: prepaid query licenses and the device's tamper-evident usage ledger (device half).

* :mod:`~tinymlops.metering.license_signing` — Ed25519 signatures over licenses (issuer key) and
  usage reports (device key), domain-separated.
* :mod:`~tinymlops.metering.ledger` — the ledger as a pure state machine (hash chain, reservations,
  refusals, chain verification).
* :mod:`~tinymlops.metering.ledger_store` — its SQLite persistence, verified on open, and the
  :class:`MonotonicCounter` interface (file default; where a hardware counter plugs in).
* :mod:`~tinymlops.metering.meter` — the runtime middleware (policy ``metering``) and the device's
  :class:`MeteringHost`.

Edge-safe: standard library (sqlite3), ``cryptography`` and :mod:`tinymlops.spec` only.
"""

from tinymlops.metering.ledger import Ledger, verify_chain
from tinymlops.metering.ledger_store import FileCounter, LedgerStore, MonotonicCounter
from tinymlops.metering.license_signing import (
    SignedLicense,
    SignedRevocation,
    SignedUsageReport,
    sign_license,
    sign_revocation,
    sign_usage_report,
    verify_license,
    verify_revocation,
    verify_usage_report,
)
from tinymlops.metering.meter import Meter, MeteringHost, MeteringMiddleware, bind_metering, metering_bound

__all__ = [
    "FileCounter",
    "Ledger",
    "LedgerStore",
    "Meter",
    "MeteringHost",
    "MeteringMiddleware",
    "MonotonicCounter",
    "SignedLicense",
    "SignedRevocation",
    "SignedUsageReport",
    "bind_metering",
    "metering_bound",
    "sign_license",
    "sign_revocation",
    "sign_usage_report",
    "verify_chain",
    "verify_license",
    "verify_revocation",
    "verify_usage_report",
]
