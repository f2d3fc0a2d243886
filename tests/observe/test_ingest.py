"""The ingestion service without HTTP: a duplicate that another server process stored between the
check and the insert is still a DuplicateBatchError (the unique constraint decides), and a batch
naming another device than the caller is refused naming both."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select

from enrolled_devices import enrol_device
from tiny_models import tiny_onnx
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.errors import DuplicateBatchError, SpecError
from tinymlops.observe.ingest import TelemetryIngest
from tinymlops.observe.schema import TelemetryBatchRow
from tinymlops.release.service import ReleaseService
from tinymlops.spec.telemetry import Performance, TelemetryBatch, TelemetryWindow


def _device(ws: Any) -> tuple[Any, DeviceKeys, str]:
    """A device enrolled through the real enrolment service, given a release of tiny:1."""
    from tinymlops.devices.service import DeviceService

    keys = enrol_device(ws)
    ws.registry.register("tiny", tiny_onnx())
    release = ReleaseService(ws).create_release("tiny:1", devices=[keys.device_id])
    device = DeviceService(ws.engine).get(keys.device_id)
    return device, keys, release.assignments[0].bundle_id


def _batch(device_id: str, bundle: str, at: float = 100.0) -> TelemetryBatch:
    window = TelemetryWindow(bundle, at, at + 60, Performance(requests=0))
    return TelemetryBatch(device_id, at + 61, (window,))


def test_a_duplicate_stored_by_another_process_meanwhile_is_still_a_duplicate(workspace: Any, monkeypatch: Any) -> None:
    from tinymlops.observe.sealing import seal_batch

    device, keys, bundle = _device(workspace)
    sealed = seal_batch(_batch(device.id, bundle), keys.signing)
    first = TelemetryIngest(workspace.engine).ingest(device, sealed.body, sealed.signature)
    # the second process's checks ran before the first committed: they saw neither digest nor window
    racing = TelemetryIngest(workspace.engine)
    real = TelemetryIngest._stored_batch
    calls = iter([None])
    monkeypatch.setattr(TelemetryIngest, "_stored_batch", staticmethod(lambda s, d, g: next(calls, real(s, d, g))))
    monkeypatch.setattr(TelemetryIngest, "_check_stored_spans", staticmethod(lambda *args: None))
    with pytest.raises(DuplicateBatchError) as info:
        racing.ingest(device, sealed.body, sealed.signature)
    assert info.value.details == {"digest": sealed.digest} and first.digest == sealed.digest
    with workspace.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(TelemetryBatchRow)) == 1


def test_a_batch_naming_another_device_is_refused_naming_both(workspace: Any) -> None:
    from tinymlops.observe.sealing import seal_batch

    device, _, bundle = _device(workspace)
    other = DeviceKeys.generate()
    sealed = seal_batch(_batch(other.device_id, bundle), other.signing)
    with pytest.raises(Exception) as info:  # signed by another key: the signature does not verify
        TelemetryIngest(workspace.engine).ingest(device, sealed.body, sealed.signature)
    assert type(info.value).__name__ == "SignatureError"
    with pytest.raises(SpecError, match=f"names device {other.device_id}.*{device.id}"):
        TelemetryIngest(workspace.engine).ingest(
            replace(device, signing_public=other.signing_public), sealed.body, sealed.signature
        )
