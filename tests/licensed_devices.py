"""Metered devices for the tests of the licensing API, CLI and dashboard (a plain module:
``from licensed_devices import …``).

A :class:`MeteredDevice` is a real :class:`~tinymlops.metering.meter.Meter` (SQLite ledger and its
file monotonic counter) under an enrolled device's own key, trusting the workspace's release key —
the issuer of the workspace's licenses. It installs what the server hands out, serves calls, and
signs usage reports; :func:`post_report` sends one to a live control plane exactly as the wire
protocol says, :func:`ingest` hands one to the service directly (no server: the CLI's tests).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys, key_id
from tinymlops.devices.client import DeviceClient, Response
from tinymlops.devices.service import DeviceService
from tinymlops.metering.license_signing import REPORT_SIGNATURE_HEADER, SignedLicense, SignedUsageReport
from tinymlops.metering.meter import Meter

MODEL = "digits"


@dataclass
class MeteredDevice:
    keys: DeviceKeys
    meter: Meter
    model: str = MODEL

    @classmethod
    def open(
        cls, keys: DeviceKeys, ws_root: Path, ledger_dir: Path, *, model: str = MODEL, block: int = 4
    ) -> MeteredDevice:
        """A meter at ``ledger_dir`` (two meters of one key in two directories: a cloned device)."""
        ledger_dir.mkdir(parents=True, exist_ok=True)
        meter = Meter.open(
            ledger_dir / f"{model}.ledger.sqlite3",
            model,
            device_key=keys.signing,
            trusted_issuer_keys=[release_public_key(ws_root, create=False)],
            block=block,
        )
        return cls(keys, meter, model)

    @property
    def device_id(self) -> str:
        return key_id(self.keys.signing)

    def install(self, doc: dict[str, Any]) -> list[str]:
        """Install, in chain order, every license of ``doc`` (a ``GET /devices/me/licenses`` body) for
        this model that the ledger does not hold yet; the ids installed."""
        done = []
        for item in doc["licenses"]:
            if item["model"] != self.model or item["license_id"] in self.meter.ledger.licenses:
                continue
            signed = SignedLicense(base64.b64decode(item["data"], validate=True), bytes.fromhex(item["signature"]))
            self.meter.install(signed)
            done.append(item["license_id"])
        return done

    def serve(self, calls: int) -> None:
        for _ in range(calls):
            self.meter.authorize()

    def report(self, since_seq: int = 0) -> SignedUsageReport:
        signed = self.meter.usage_report(since_seq)
        assert signed is not None, "no ledger entries to report"
        return signed

    def close(self) -> None:
        self.meter.close()


def fetch(client: DeviceClient) -> dict[str, Any]:
    """``GET /v1/devices/me/licenses`` as the device (a signed request)."""
    doc: dict[str, Any] = client.get_json("/v1/devices/me/licenses")
    return doc


def post_report(client: DeviceClient, signed: SignedUsageReport, *, signature: str | None = None) -> Response:
    """``POST /v1/devices/me/usage`` as the device (the request signed too); ``signature`` replaces
    the report's own (a forgery)."""
    return client.request(
        "POST",
        "/v1/devices/me/usage",
        body=signed.data,
        headers={
            "Content-Type": "application/json",
            REPORT_SIGNATURE_HEADER: signature if signature is not None else signed.signature.hex(),
        },
        check=False,
    )


def ingest(service: Any, ws: Any, signed: SignedUsageReport, device_id: str) -> Any:
    """Hand a report to ``service.ingest_report`` as the authenticated device ``device_id`` (no server)."""
    return service.ingest_report(DeviceService(ws.engine).get(device_id), signed.data, signed.signature.hex())


__all__ = ["MODEL", "MeteredDevice", "fetch", "ingest", "post_report"]
