"""Reports of one device ingested at the same time are reconciled one at a time (SQLite and
PostgreSQL): two identical reports store one, two overlapping reports store every entry once, and
no second report is ever checked against a chain the first is still changing. Operator writes on
one chain at once — two top-ups of the same latest license, a top-up and a revocation, two issues —
leave one consistent chain: each write locks the device's row before it reads the chain."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import tinymlops.metering.licensing as licensing_module
from licensing_world import DAY, MODEL, MeteredDevice, licensing
from metering_world import T0
from tinymlops.errors import ConflictError, DuplicateReportError
from tinymlops.metering.license_signing import SignedUsageReport
from tinymlops.metering.licensing import LicenseView, ReportResult

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


# --- operator writes at once ------------------------------------------------------------------------
def _at_once(monkeypatch: pytest.MonkeyPatch, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` from as many threads, each held just before it locks the device's row until all
    have got there (so each has read what it reads first); their outcomes (an exception is returned)."""
    real = licensing_module.LicenseService._lock_device
    gate = threading.Barrier(len(calls), timeout=30)

    def held(session: Any, device_id: str) -> Any:
        gate.wait()
        return real(session, device_id)

    monkeypatch.setattr(licensing_module.LicenseService, "_lock_device", staticmethod(held))

    def run(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # the outcome is what the test looks at
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_two_top_ups_of_the_same_latest_license_at_once_one_wins(monkeypatch, device) -> None:  # type: ignore[no-untyped-def]
    service = device.service
    [root] = service.list()
    outcomes = _at_once(
        monkeypatch,
        [lambda: service.top_up(root.license_id, queries=10), lambda: service.top_up(root.license_id, queries=20)],
    )
    won = [o for o in outcomes if isinstance(o, LicenseView)]
    lost = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert lost[0].details["latest_license_id"] == won[0].license_id
    [chain] = service.chains()
    assert (chain.latest_license_id, chain.licensed) == (won[0].license_id, 1000 + won[0].queries)
    assert [v.license_id for v in service.list()] == [won[0].license_id, root.license_id]


def test_a_top_up_and_a_revocation_at_once_leave_one_story(monkeypatch, device) -> None:  # type: ignore[no-untyped-def]
    service = device.service
    [root] = service.list()
    topped, revoked = _at_once(
        monkeypatch,
        [lambda: service.top_up(root.license_id, queries=10), lambda: service.revoke(root.license_id, reason="fraud")],
    )
    assert isinstance(topped, LicenseView) and isinstance(revoked, LicenseView), (topped, revoked)
    [chain] = service.chains()
    if revoked.license_id == topped.license_id:  # the top-up first: the revocation took the chain's latest
        assert chain.status == "revoked" and service.get(root.license_id).status == "superseded"
    else:  # the revocation first: the top-up of the revoked root reinstated the chain
        assert revoked.license_id == root.license_id and topped.previous_license_id == root.license_id
        assert chain.status == "active" and service.get(root.license_id).status == "revoked"
    assert chain.latest_license_id == topped.license_id and chain.licensed == 1010


def test_two_issues_for_one_device_and_model_at_once_start_one_chain(monkeypatch, workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    service, issuer, clock = licensing(workspace)
    device = MeteredDevice(workspace, service, issuer, clock, tmp_path / "dev")
    issue = lambda: service.issue(device_id=device.id, model=MODEL, queries=5, valid_until=T0 + DAY)  # noqa: E731
    outcomes = _at_once(monkeypatch, [issue, issue])
    assert sorted(type(o).__name__ for o in outcomes) == ["ConflictError", "LicenseView"], outcomes
    assert len(service.list()) == 1 and len(service.chains()) == 1
    device.close()
