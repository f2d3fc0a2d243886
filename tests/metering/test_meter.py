"""The meter over a real SQLite ledger and real Ed25519: licenses, quota at exactly N, top-ups, usage
reports, thread safety, and a metered ONNX bundle through the real Runtime."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Clock, Issuer
from tinymlops.crypto.keys import public_bytes
from tinymlops.edge.middleware import PolicyContext, Request, Response, build_chain, compose
from tinymlops.errors import LicenseScopeError, QuotaExceededError, SignatureError, SpecError, UsageError
from tinymlops.metering import Meter, MeteringHost, metering_bound, verify_usage_report
from tinymlops.metering.license_signing import SignedLicense
from tinymlops.spec.usage_report import MAX_REPORT_ENTRIES


@pytest.fixture
def world(tmp_path: Path):
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()

    def open_meter(block: int = 4, **kw) -> Meter:
        return Meter.open(
            tmp_path / "tiny.ledger.sqlite3",
            "tiny",
            device_key=device,
            trusted_issuer_keys=[issuer.public],
            block=block,
            clock=clock,
            **kw,
        )

    return issuer, device, clock, open_meter


def test_exactly_n_calls_pass_then_refused_and_a_top_up_extends_across_restarts(world) -> None:
    issuer, device, _clock, open_meter = world
    meter = open_meter(block=4)
    first = meter.install(issuer.signed(device, queries=10))
    for _ in range(10):
        meter.authorize()
    with pytest.raises(QuotaExceededError) as info:
        meter.authorize()
    assert info.value.details | {"license_id": None} == {
        "reason": "quota",
        "remaining": 0,
        "limit": 10,
        "license_id": None,
    }
    meter.install(issuer.signed(device, queries=3, previous=first.license_id))
    meter.close()
    meter = open_meter(block=4)  # reopened: the chain verifies, the top-up is still there
    assert (meter.remaining, meter.limit) == (3, 13)
    for _ in range(3):
        meter.authorize()
    with pytest.raises(QuotaExceededError):
        meter.authorize()
    meter.close()


def test_forged_altered_and_misaddressed_licenses_are_refused(world) -> None:
    issuer, device, _clock, open_meter = world
    meter = open_meter()
    good = issuer.signed(device, queries=5)
    with pytest.raises(SignatureError, match="does not trust"):
        meter.install(Issuer().signed(device))  # a key the device does not trust
    forged = Issuer()
    forged.key = Ed25519PrivateKey.generate()
    lic = issuer.license(device, queries=10**6)  # names the real issuer's key id, signed by another key
    from tinymlops.metering.license_signing import LICENSE_DOMAIN

    with pytest.raises(SignatureError, match="does not verify"):
        meter.install(SignedLicense(lic.to_bytes(), forged.key.sign(LICENSE_DOMAIN + lic.to_bytes())))
    altered = good.data.replace(b'"queries":5', b'"queries":9')
    with pytest.raises(SignatureError, match="does not verify"):
        meter.install(SignedLicense(altered, good.signature))
    with pytest.raises(SignatureError):
        meter.install(SignedLicense(good.data, good.signature[:-1] + bytes([good.signature[-1] ^ 1])))
    from tinymlops.errors import LicenseError

    with pytest.raises(LicenseError, match="device"):
        meter.install(issuer.signed(Ed25519PrivateKey.generate()))
    with pytest.raises(LicenseError, match="model"):
        meter.install(issuer.signed(device, model="other"))
    assert meter.remaining == 0 and meter.store.entries() == []  # nothing was written
    meter.install(good)
    assert meter.remaining == 5
    meter.close()


def test_usage_report_is_signed_by_the_device_and_matches_the_chain(world) -> None:
    issuer, device, _clock, open_meter = world
    meter = open_meter(block=4)
    meter.install(issuer.signed(device, queries=20))
    for _ in range(6):
        meter.authorize()
    signed = meter.usage_report(since_seq=0)
    report = verify_usage_report(signed, public_bytes(device))
    assert (report.first_seq, report.last_seq, report.licensed, report.reserved, report.block_remaining) == (
        0,
        2,
        20,
        8,
        2,
    )
    tail = verify_usage_report(meter.usage_report(since_seq=2), public_bytes(device))
    assert tail.head_before == report.entries[1].hash and tail.head_after == report.head_after
    assert meter.usage_report(since_seq=3) is None
    with pytest.raises(SignatureError):
        verify_usage_report(signed, public_bytes(Ed25519PrivateKey.generate()))
    meter.close()


def test_a_ledger_longer_than_one_report_is_sent_in_several(world) -> None:
    """Beyond MAX_REPORT_ENTRIES entries a report carries the first MAX of them and the next one
    continues (it used to raise SpecError: no report at all past 4096 entries)."""
    issuer, device, _clock, open_meter = world
    meter = open_meter(block=1, counter=False)
    meter.store._conn.execute("PRAGMA synchronous=OFF")  # test speed only: durability is not under test here
    meter.install(issuer.signed(device, queries=MAX_REPORT_ENTRIES + 50))
    for _ in range(MAX_REPORT_ENTRIES + 9):
        meter.authorize()
    total = meter.ledger.next_seq
    assert total == MAX_REPORT_ENTRIES + 10
    first = verify_usage_report(meter.usage_report(0), public_bytes(device))
    assert (first.first_seq, first.last_seq, first.block_remaining) == (0, MAX_REPORT_ENTRIES - 1, 0)
    assert len(first.entries) == MAX_REPORT_ENTRIES
    rest = verify_usage_report(meter.usage_report(first.last_seq + 1), public_bytes(device))
    assert (rest.first_seq, rest.last_seq, rest.head_before) == (MAX_REPORT_ENTRIES, total - 1, first.head_after)
    assert rest.head_after == meter.ledger.head and first.licensed + rest.licensed == meter.limit
    assert first.reserved + rest.reserved == MAX_REPORT_ENTRIES + 9
    assert meter.usage_report(total) is None
    meter.close()


def test_concurrent_calls_never_exceed_the_quota(world) -> None:
    issuer, device, _clock, open_meter = world
    meter = open_meter(block=7)
    meter.install(issuer.signed(device, queries=500))
    passed, refused = [], []

    def worker() -> None:
        for _ in range(100):
            try:
                meter.authorize()
                passed.append(1)
            except QuotaExceededError:
                refused.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(passed), len(refused), meter.remaining) == (500, 300, 0)
    meter.close()


def test_version_range_is_enforced(world) -> None:
    issuer, device, _clock, open_meter = world
    meter = open_meter()
    meter.install(issuer.signed(device, queries=5, min_version=2, max_version=3))
    meter.authorize(2)
    with pytest.raises(LicenseScopeError, match="version"):
        meter.authorize(4)
    assert meter.remaining == 4
    meter.close()


def test_the_policy_needs_a_bound_host_and_a_strict_table(tmp_path: Path, world) -> None:
    issuer, device, clock, _ = world
    ctx = PolicyContext("a" * 32, model="tiny:1/fp32")
    with pytest.raises(UsageError, match="bind a MeteringHost"):
        build_chain({"metering": {"enabled": True, "model": "tiny"}}, context=ctx)
    with pytest.raises(SpecError, match="does not implement free"):
        build_chain({"metering": {"enabled": True, "model": "tiny", "free": True}}, context=ctx)
    with pytest.raises(SpecError, match="carries"):
        build_chain({"metering": {"enabled": True, "model": "other"}}, context=ctx)
    host = MeteringHost(tmp_path / "ledgers", device_key=device, trusted_issuer_keys=[issuer.public], clock=clock)
    with metering_bound(host):
        (mw,) = build_chain({"metering": {"enabled": True, "model": "tiny", "block": 2}}, context=ctx)
        host.meter("tiny").install(issuer.signed(device, queries=2))
        calls = []
        handler = compose([mw], lambda r: calls.append(1) or Response(outputs={}))
        handler(Request(np.zeros(1)))
        handler(Request(np.zeros(1)))
        with pytest.raises(QuotaExceededError):
            handler(Request(np.zeros(1)))
        assert len(calls) == 2  # the refused call never reached the model
    host.close()


def test_signatures_are_domain_separated(world) -> None:
    """A signature over the same bytes made for another kind of document (or with no domain prefix)
    never verifies: not as a license, not as a usage report."""
    from tinymlops.metering.license_signing import (
        LICENSE_DOMAIN,
        USAGE_REPORT_DOMAIN,
        SignedUsageReport,
        sign_usage_report,
    )
    from tinymlops.spec.usage_report import UsageReport

    issuer, device, _clock, open_meter = world
    meter = open_meter()
    data = issuer.license(device, queries=5).to_bytes()
    for signature in (issuer.key.sign(USAGE_REPORT_DOMAIN + data), issuer.key.sign(data)):
        with pytest.raises(SignatureError, match="does not verify"):
            meter.install(SignedLicense(data, signature))
    meter.install(SignedLicense(data, issuer.key.sign(LICENSE_DOMAIN + data)))  # the right domain: accepted
    report = sign_usage_report(
        UsageReport.build(
            device_id=meter.ledger.device_id, entries=meter.store.entries(), block_remaining=0, created_at=1
        ),
        device,
    )
    verify_usage_report(report, public_bytes(device))
    for signature in (device.sign(LICENSE_DOMAIN + report.data), device.sign(report.data)):
        with pytest.raises(SignatureError, match="does not verify"):
            verify_usage_report(SignedUsageReport(report.data, signature), public_bytes(device))
    meter.close()
