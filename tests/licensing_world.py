"""A licensing service over a real workspace and real devices metering with the real ledger (a plain
module: ``from licensing_world import ...``).

:class:`MeteredDevice` is an enrolled device (keys through the real enrolment) with a real
:class:`~tinymlops.metering.meter.Meter` over a ledger directory; :meth:`MeteredDevice.sync` does
by hand what the agent's sync does over HTTP — fetch the licenses and revocations the service
hands it, install / apply what it lacks — and :meth:`MeteredDevice.send` posts a signed usage
report to :meth:`~tinymlops.metering.licensing.LicenseService.ingest_report`, remembering where
the server said to go on (from a 201, or the 409s' ``next_seq``)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enrolled_devices import enrol_device
from metering_world import T0, Clock
from tinymlops.crypto.keys import DeviceKeys, key_id
from tinymlops.devices.records import DeviceRecord
from tinymlops.devices.service import DeviceService
from tinymlops.errors import DuplicateReportError, ReportGapError, TinyMLOpsError
from tinymlops.metering.license_signing import SignedLicense, SignedRevocation, SignedUsageReport
from tinymlops.metering.licensing import LicenseService, ReportResult
from tinymlops.metering.meter import Meter

MODEL = "digits"
DAY = 86_400


def licensing(ws: Any, clock: Clock | None = None) -> tuple[LicenseService, Ed25519PrivateKey, Clock]:
    clock = clock or Clock(T0)
    issuer = Ed25519PrivateKey.generate()
    return LicenseService(ws.engine, issuer, clock=clock), issuer, clock


class MeteredDevice:
    def __init__(
        self,
        ws: Any,
        service: LicenseService,
        issuer: Ed25519PrivateKey,
        clock: Clock,
        directory: Path,
        *,
        keys: DeviceKeys | None = None,
        block: int = 8,
    ) -> None:
        self.ws, self.service, self.issuer, self.clock = ws, service, issuer, clock
        self.keys = keys or enrol_device(ws)
        self.id = key_id(self.keys.signing)
        self.record: DeviceRecord = DeviceService(ws.engine).get(self.id)
        self.directory = Path(directory)
        self.block = block
        self.acked = 0
        self.meter = self._open()

    def _open(self) -> Meter:
        self.directory.mkdir(parents=True, exist_ok=True)
        return Meter.open(
            self.directory / f"{MODEL}.ledger.sqlite3",
            MODEL,
            device_key=self.keys.signing,
            trusted_issuer_keys=[self.issuer.public_key()],
            block=self.block,
            clock=self.clock,
        )

    # --- the device's state on disk -------------------------------------------------------------
    def backup(self, to: Path) -> Path:
        """Copy the ledger directory (the SQLite file and its monotonic counter file) as it is now."""
        self.meter.close()
        shutil.copytree(self.directory, to)
        self.meter = self._open()
        return to

    def restore(self, backup: Path) -> None:
        """Put a backup of the whole directory back (ledger and counter together)."""
        self.meter.close()
        shutil.rmtree(self.directory)
        shutil.copytree(backup, self.directory)
        self.meter = self._open()

    def clone_to(self, directory: Path) -> MeteredDevice:
        """A second device with this one's key and a copy of its ledger directory."""
        self.meter.close()
        shutil.copytree(self.directory, directory)
        self.meter = self._open()
        twin = MeteredDevice(
            self.ws, self.service, self.issuer, self.clock, directory, keys=self.keys, block=self.block
        )
        twin.acked = self.acked
        return twin

    # --- contact with the server ------------------------------------------------------------------
    def sync(self, *, revocations: bool = True) -> tuple[list[str], list[str]]:
        """Fetch and install the licenses this ledger lacks (chain order), then apply revocations
        (``revocations=False``: a patched device that ignores them). The ids installed and revoked."""
        got = self.service.for_device(self.id, model=MODEL)
        installed, revoked = [], []
        for lic in got.licenses:
            if lic.license_id not in self.meter.installed_ids:
                self.meter.install(SignedLicense(base64.b64decode(lic.data), bytes.fromhex(lic.signature)))
                installed.append(lic.license_id)
        if revocations:
            for rev in got.revocations:
                if self.meter.revoke(SignedRevocation(base64.b64decode(rev.data), bytes.fromhex(rev.signature))):
                    revoked.append(rev.license_id)
        return installed, revoked

    def serve(self, calls: int) -> int:
        """Run up to ``calls`` metered calls; how many were authorized before a refusal."""
        for done in range(calls):
            try:
                self.meter.authorize()
            except TinyMLOpsError:
                return done
        return calls

    def report(self, since: int | None = None, *, limit: int | None = None) -> SignedUsageReport:
        since = self.acked if since is None else since
        signed = self.meter.usage_report(since) if limit is None else self.meter.usage_report(since, limit=limit)
        assert signed is not None, f"nothing to report from seq {since}"
        return signed

    def post(self, signed: SignedUsageReport) -> ReportResult:
        return self.service.ingest_report(self.record, signed.data, signed.signature.hex())

    def send(self, since: int | None = None, *, limit: int | None = None) -> ReportResult | TinyMLOpsError:
        """Report from ``since`` (default: where the server last said) and follow the answer."""
        try:
            result = self.post(self.report(since, limit=limit))
        except (DuplicateReportError, ReportGapError) as exc:
            self.acked = exc.next_seq
            return exc
        self.acked = result.next_seq
        return result

    def flush(self, *, max_rounds: int = 20, limit: int | None = None) -> list[ReportResult | TinyMLOpsError]:
        """Send until the server has everything (following gaps back), as the agent's sync does;
        ``limit`` caps the entries of each report (the agent's chunks)."""
        out: list[ReportResult | TinyMLOpsError] = []
        for _ in range(max_rounds):
            if self.acked >= self.meter.next_seq:
                return out
            out.append(self.send(limit=limit))
        raise AssertionError(f"the server did not catch up after {max_rounds} reports: {out}")

    def close(self) -> None:
        self.meter.close()


__all__ = ["DAY", "MODEL", "MeteredDevice", "licensing"]
