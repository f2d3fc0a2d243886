"""Reports of one device ingested at the same time are reconciled one at a time (SQLite and
PostgreSQL): two identical reports store one, two overlapping reports store every entry once, and
no second report is ever checked against a chain the first is still changing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import tinymlops.metering.licensing as licensing_module
from licensing_world import DAY, MODEL, MeteredDevice, licensing
from metering_world import T0
from tinymlops.errors import DuplicateReportError
from tinymlops.metering.license_signing import SignedUsageReport
from tinymlops.metering.licensing import ReportResult

#: how long the first reconciliation holds on, giving a second one the chance to come in beside it
HOLD_S = 0.5


def _race(
    monkeypatch: pytest.MonkeyPatch, device: MeteredDevice, reports: list[SignedUsageReport]
) -> tuple[list[Any], bool]:
    """Ingest ``reports`` from two threads released together; the first reconciliation waits (up
    to HOLD_S) for another to enter reconcile beside it. The outcomes, and whether one did."""
    real: Callable[..., Any] = licensing_module.reconcile
    lock, overlapped, inside = threading.Lock(), threading.Event(), [0]
    first = threading.Event()

    def watched(snapshot: Any, report: Any) -> Any:
        with lock:
            inside[0] += 1
            if inside[0] > 1:
                overlapped.set()
            hold = not first.is_set()
            first.set()
        try:
            if hold:
                overlapped.wait(HOLD_S)
            return real(snapshot, report)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(licensing_module, "reconcile", watched)
    start = threading.Barrier(2, timeout=30)

    def ingest(signed: SignedUsageReport) -> Any:
        start.wait()
        try:
            return device.post(signed)
        except DuplicateReportError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(ingest, reports))
    return outcomes, overlapped.is_set()


@pytest.fixture
def device(workspace, tmp_path):  # type: ignore[no-untyped-def]
    service, issuer, clock = licensing(workspace)
    device = MeteredDevice(workspace, service, issuer, clock, tmp_path / "dev", block=4)
    service.issue(device_id=device.id, model=MODEL, queries=1000, valid_until=T0 + DAY)
    device.sync()
    yield device
    device.close()


def test_two_identical_reports_at_once_store_one(monkeypatch, device) -> None:  # type: ignore[no-untyped-def]
    device.serve(16)
    signed = device.report(0)
    outcomes, overlapped = _race(monkeypatch, device, [signed, signed])
    assert not overlapped
    assert sorted(type(o).__name__ for o in outcomes) == ["DuplicateReportError", "ReportResult"]
    [chain] = device.service.chains()
    assert (chain.reports, chain.reserved, chain.next_seq) == (1, 16, 5)


def test_two_overlapping_reports_at_once_store_every_entry_once(monkeypatch, device) -> None:  # type: ignore[no-untyped-def]
    device.serve(8)
    short = device.report(0)
    device.serve(8)
    long = device.report(0)
    outcomes, overlapped = _race(monkeypatch, device, [short, long])
    assert not overlapped
    assert all(isinstance(o, ReportResult) for o in outcomes)
    [chain] = device.service.chains()
    assert (chain.reports, chain.reserved, chain.next_seq, chain.branches) == (2, 16, 5, 1)
    assert [f.kind for f in device.service.audit()] in ([], ["replay"])  # the short one after the long: a replay
