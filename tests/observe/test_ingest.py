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
from tinymlops.errors import DuplicateBatchError, SpecError, WindowOverlapError
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


def test_a_point_window_overlaps_only_the_identical_point_window_or_a_span_around_it(workspace: Any) -> None:
    """Spans are half-open, except that a zero-length window [t, t] overlaps the identical one: a
    point window re-sent in a new batch is refused (409), windows ending or starting at t are not."""
    from tinymlops.observe.sealing import seal_batch
    from tinymlops.server.error_responses import status_for

    device, keys, bundle = _device(workspace)
    ingest = TelemetryIngest(workspace.engine)
    sent = iter(range(1, 100))

    def send(*spans: tuple[float, float]) -> Any:
        windows = tuple(TelemetryWindow(bundle, s, e, Performance(requests=0)) for s, e in spans)
        sealed = seal_batch(TelemetryBatch(device.id, 1000.0 + next(sent), windows), keys.signing)
        return ingest.ingest(device, sealed.body, sealed.signature)

    t = 500.0
    first = send((t, t))
    with pytest.raises(WindowOverlapError) as info:  # the same point window in another batch
        send((t, t))
    assert status_for(info.value) == 409
    assert info.value.details["stored_batch_id"] == first.batch_id
    assert (info.value.details["stored_start"], info.value.details["stored_end"]) == (t, t)
    assert send((t, t + 60)).windows == 1  # starts where the point is: half-open, no overlap
    assert send((t - 60, t)).windows == 1  # ends where the point is
    with pytest.raises(WindowOverlapError):  # a point inside a stored span
        send((t + 30, t + 30))
    with pytest.raises(WindowOverlapError):  # the point at the start of a stored span [t, t + 60)
        send((t + 60, t + 120), (t, t))
    assert send((t + 60, t + 60)).windows == 1  # the stored span ends there: no overlap
    with pytest.raises(SpecError, match="overlap"):  # two identical point windows in one batch
        send((t + 200, t + 200), (t + 200, t + 200))
    with workspace.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(TelemetryBatchRow)) == 4
