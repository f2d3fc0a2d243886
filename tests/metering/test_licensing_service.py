"""LicenseService on SQLite and PostgreSQL: issuing, topping up, revoking, listing, what a device
fetches, and honest usage reports from a real metering device."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enrolled_devices import enrol_device
from licensing_world import DAY, MODEL, MeteredDevice, licensing
from metering_world import T0
from tinymlops.crypto.keys import key_id
from tinymlops.devices.service import DeviceService
from tinymlops.errors import (
    ConflictError,
    LicenseRevokedError,
    NotFoundError,
    QuotaExceededError,
    UsageError,
)
from tinymlops.metering.license_signing import SignedLicense, SignedRevocation, verify_license, verify_revocation


@pytest.fixture
def plane(workspace):  # type: ignore[no-untyped-def]
    service, issuer, clock = licensing(workspace)
    return workspace, service, issuer, clock


def _device(plane, tmp_path: Path, name: str = "dev", **kw) -> MeteredDevice:  # type: ignore[no-untyped-def]
    ws, service, issuer, clock = plane
    return MeteredDevice(ws, service, issuer, clock, tmp_path / name, **kw)


# --- issuing -------------------------------------------------------------------------------------------
def test_issue_signs_a_root_license_for_the_enrolled_device(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, issuer, _ = plane
    keys = enrol_device(ws)
    device_id = key_id(keys.signing)
    view = service.issue(device_id=device_id, model=MODEL, queries=500, valid_until=T0 + DAY, min_version=1)
    assert (view.device_id, view.model, view.queries, view.status) == (device_id, MODEL, 500, "active")
    assert (view.valid_from, view.valid_until, view.issued_at) == (T0, T0 + DAY, T0)
    assert (view.root_license_id, view.previous_license_id) == (view.license_id, None)
    assert (view.chain_licensed, view.chain_used, view.chain_remaining, view.alerts) == (500, 0, 500, 0)
    assert view.issuer_key_id == key_id(issuer)
    lic = verify_license(SignedLicense(base64.b64decode(view.data), bytes.fromhex(view.signature)), [issuer])
    assert (lic.license_id, lic.device_public_key, lic.min_version) == (
        view.license_id,
        keys.signing.public_key().public_bytes_raw().hex(),
        1,
    )
    assert view.to_dict()["data"] == view.data and service.get(view.license_id) == view
    [chain] = service.chains()
    assert (chain.root_license_id, chain.status, chain.licensed, chain.next_seq, chain.head, chain.branches) == (
        view.license_id,
        "active",
        500,
        0,
        None,
        0,
    )


def test_issue_refuses_bad_input_with_clear_errors(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, _, _ = plane
    device_id = key_id(enrol_device(ws).signing)
    ok = {"device_id": device_id, "model": MODEL, "queries": 10, "valid_until": T0 + DAY}
    bad = [
        ({"model": "no spaces"}, UsageError, "model name", "model"),
        ({"queries": 0}, UsageError, "queries", "queries"),
        ({"queries": True}, UsageError, "queries", "queries"),
        ({"queries": 10**12 + 1}, UsageError, "queries", "queries"),
        ({"valid_from": T0 - 10, "valid_until": T0 - 1}, UsageError, "not in the future", "valid_until"),
        ({"valid_from": T0 + DAY}, UsageError, "must be after valid_from", "valid_until"),
        ({"valid_from": -1}, UsageError, "valid_from", "valid_from"),
        ({"min_version": 3, "max_version": 2}, UsageError, "above max_version", "min_version"),
        ({"max_version": "3"}, UsageError, "max_version", "max_version"),
        ({"device_id": "0" * 16}, NotFoundError, "no device", "device_id"),
        ({"device_id": "not-an-id"}, NotFoundError, "no device", "device_id"),
    ]
    for change, error, words, field in bad:
        with pytest.raises(error, match=words) as exc:
            service.issue(**{**ok, **change})
        assert exc.value.details.get("field") == field or field in exc.value.details, change  # named
    assert service.list() == [] and service.chains() == []


def test_every_refusal_of_the_operator_calls_names_its_field(plane) -> None:  # type: ignore[no-untyped-def]
    """The API answers these as 400 with ``field`` in the error body; the CLI and the dashboard show them."""
    ws, service, _, clock = plane
    device_id = key_id(enrol_device(ws).signing)
    root = service.issue(device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY)
    calls = [
        (lambda: service.top_up(root.license_id, queries=0), "queries"),
        (lambda: service.top_up(root.license_id, queries=1, valid_until=T0 - 5), "valid_until"),
        (lambda: service.revoke(root.license_id, reason=" "), "reason"),
        (lambda: service.revoke(root.license_id, reason="x" * 201), "reason"),
        (lambda: service.list(status="gone"), "status"),
        (lambda: service.audit(kind="nope"), "kind"),
        (lambda: service.audit(limit=0), "limit"),
        (lambda: service.for_device(device_id, model="bad name"), "model"),
    ]
    for call, field in calls:
        with pytest.raises(UsageError) as exc:
            call()
        assert exc.value.details.get("field") == field, (exc.value, field)
    clock.now = T0 + 2 * DAY  # the license ran out: a top-up needs a new end
    with pytest.raises(UsageError, match="expired") as exc:
        service.top_up(root.license_id, queries=1)
    assert exc.value.details.get("field") == "valid_until"


def test_one_chain_per_device_and_model(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, _, _ = plane
    device_id = key_id(enrol_device(ws).signing)
    first = service.issue(device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY)
    with pytest.raises(ConflictError, match="top it up") as exc:
        service.issue(device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY)
    assert exc.value.details["latest_license_id"] == first.license_id
    other = service.issue(device_id=device_id, model="other-model", queries=10, valid_until=T0 + DAY)
    assert other.root_license_id == other.license_id != first.license_id


def test_a_revoked_device_gets_no_license(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, _, _ = plane
    device_id = key_id(enrol_device(ws).signing)
    DeviceService(ws.engine).revoke(device_id)
    with pytest.raises(ConflictError, match="revoked"):
        service.issue(device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY)


# --- top-ups and revocations ---------------------------------------------------------------------------
def test_top_up_chains_to_the_latest_and_keeps_its_window_start_and_versions(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, issuer, clock = plane
    device_id = key_id(enrol_device(ws).signing)
    root = service.issue(
        device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY, min_version=2, max_version=5
    )
    clock.now = T0 + 100
    top = service.top_up(root.license_id, queries=20)
    lic = verify_license(SignedLicense(base64.b64decode(top.data), bytes.fromhex(top.signature)), [issuer])
    assert lic.previous_license_id == root.license_id
    assert (lic.valid_from, lic.valid_until, lic.min_version, lic.max_version) == (T0, T0 + DAY, 2, 5)
    assert (top.chain_licensed, top.root_license_id, top.status) == (30, root.license_id, "active")
    assert service.get(root.license_id).status == "superseded"
    longer = service.top_up(top.license_id, queries=5, valid_until=T0 + 2 * DAY)
    assert longer.valid_until == T0 + 2 * DAY and longer.chain_licensed == 35
    # each license of the chain names the one chain
    assert service.chain(root.license_id) == service.chain(longer.license_id) == service.chains()[0]
    assert service.chain(root.license_id).latest_license_id == longer.license_id
    with pytest.raises(NotFoundError):
        service.chain("ab" * 16)
    with pytest.raises(ConflictError, match=f"top up {longer.license_id}") as exc:
        service.top_up(root.license_id, queries=5)
    assert exc.value.details["latest_license_id"] == longer.license_id
    with pytest.raises(NotFoundError):
        service.top_up("ab" * 16, queries=5)
    with pytest.raises(UsageError, match="queries"):
        service.top_up(longer.license_id, queries=-1)
    clock.now = T0 + 3 * DAY
    with pytest.raises(UsageError, match="expired"):
        service.top_up(longer.license_id, queries=5)
    assert service.top_up(longer.license_id, queries=5, valid_until=T0 + 4 * DAY).chain_licensed == 40


def test_revoke_freezes_the_chain_and_a_top_up_of_the_revoked_license_reinstates_it(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, issuer, clock = plane
    device_id = key_id(enrol_device(ws).signing)
    root = service.issue(device_id=device_id, model=MODEL, queries=10, valid_until=T0 + DAY)
    top = service.top_up(root.license_id, queries=10)
    with pytest.raises(UsageError, match="reason"):
        service.revoke(root.license_id, reason="  ")
    with pytest.raises(UsageError, match="at most"):
        service.revoke(root.license_id, reason="x" * 201)
    clock.now = T0 + 50
    revoked = service.revoke(root.license_id, reason="chargeback")  # an older license: the chain's latest
    assert (revoked.license_id, revoked.status, revoked.revoked_at, revoked.revoke_reason) == (
        top.license_id,
        "revoked",
        T0 + 50,
        "chargeback",
    )
    assert service.chains()[0].status == "revoked"
    with pytest.raises(ConflictError, match="already revoked"):
        service.revoke(top.license_id, reason="again")
    got = service.for_device(device_id)
    [rev] = got.revocations
    revocation = verify_revocation(SignedRevocation(base64.b64decode(rev.data), bytes.fromhex(rev.signature)), [issuer])
    assert (revocation.license_id, revocation.device_id, revocation.model, revocation.reason) == (
        top.license_id,
        device_id,
        MODEL,
        "chargeback",
    )
    back = service.top_up(top.license_id, queries=7)
    assert back.status == "active" and back.previous_license_id == top.license_id
    assert service.get(top.license_id).status == "revoked"  # history stays
    assert service.chains()[0].status == "active"
    assert [v.license_id for v in service.list(status="revoked")] == [top.license_id]
    assert [v.license_id for v in service.list(status="superseded")] == [root.license_id]
    with pytest.raises(UsageError, match="status"):
        service.list(status="expired")


def test_list_is_newest_first_and_filters(plane) -> None:  # type: ignore[no-untyped-def]
    ws, service, _, clock = plane
    a, b = key_id(enrol_device(ws).signing), key_id(enrol_device(ws).signing)
    made = []
    for i, (device, model) in enumerate([(a, MODEL), (b, MODEL), (a, "other")]):
        clock.now = T0 + i
        made.append(service.issue(device_id=device, model=model, queries=5, valid_until=T0 + DAY).license_id)
    assert [v.license_id for v in service.list()] == made[::-1]
    assert [v.license_id for v in service.list(limit=2)] == made[:0:-1]  # the newest two
    with pytest.raises(UsageError, match="limit"):
        service.list(limit=0)
    assert [v.license_id for v in service.list(device_id=a)] == [made[2], made[0]]
    assert [v.license_id for v in service.list(model=MODEL)] == [made[1], made[0]]
    assert service.list(device_id="f" * 16) == []
    assert [c.device_id for c in service.chains(device_id=b)] == [b]


def test_for_device_hands_licenses_in_chain_order_and_records_the_first_delivery(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ws, service, _, clock = plane
    device_id = key_id(enrol_device(ws).signing)
    root = service.issue(device_id=device_id, model=MODEL, queries=5, valid_until=T0 + DAY)
    other = service.issue(device_id=device_id, model="another", queries=5, valid_until=T0 + DAY)
    top = service.top_up(root.license_id, queries=5)
    got = service.for_device(device_id).to_dict()
    assert got["device_id"] == device_id and got["revocations"] == []
    assert [(x["license_id"], x["previous_license_id"]) for x in got["licenses"]] == [
        (other.license_id, None),
        (root.license_id, None),
        (top.license_id, root.license_id),
    ]
    assert got["chains"] == [
        {"model": "another", "next_seq": 0, "head": None},
        {"model": MODEL, "next_seq": 0, "head": None},
    ]
    data = base64.b64decode(got["licenses"][1]["data"])
    assert hashlib.sha256(data).hexdigest() and set(got["licenses"][1]) == {
        "license_id",
        "model",
        "previous_license_id",
        "data",
        "signature",
    }
    only = service.for_device(device_id, model="another").to_dict()
    assert [x["license_id"] for x in only["licenses"]] == [other.license_id]
    with pytest.raises(UsageError):
        service.for_device(device_id, model="bad name")
    with pytest.raises(NotFoundError):
        service.for_device("0" * 16)
    bare = key_id(enrol_device(ws).signing)
    assert service.for_device(bare).to_dict() == {"device_id": bare, "licenses": [], "revocations": [], "chains": []}
    # each sending of a revocation is recorded until a report of the device confirms one (the attacks'
    # tests follow it to the report); until then it is not delivered
    clock.now = T0 + 10
    service.revoke(top.license_id, reason="unpaid")
    clock.now = T0 + 20
    first = service.for_device(device_id, model=MODEL).to_dict()
    assert set(first["revocations"][0]) == {"license_id", "model", "data", "signature"}
    clock.now = T0 + 30
    service.for_device(device_id, model=MODEL)
    from sqlalchemy import select

    from tinymlops.metering.schema import LicenseRevocationRow as R

    with ws.engine.connect() as conn:
        assert conn.execute(select(R.served_at, R.delivered_at)).one() == (T0 + 30, None)


def test_audit_and_lookups_refuse_bad_input(plane) -> None:  # type: ignore[no-untyped-def]
    _, service, _, _ = plane
    with pytest.raises(UsageError, match="kind"):
        service.audit(kind="nope")
    for limit in (0, 1001, True):
        with pytest.raises(UsageError, match="limit"):
            service.audit(limit=limit)
    with pytest.raises(NotFoundError):
        service.audit(license_id="ab" * 16)
    with pytest.raises(NotFoundError):
        service.get("not-a-license")
    assert service.audit() == []
    with pytest.raises(UsageError, match="Ed25519"):
        type(service)(service.engine, "not a key")  # type: ignore[arg-type]


# --- an honest device ----------------------------------------------------------------------------------
def test_an_honest_device_installs_serves_reports_and_is_refused_offline_when_used_up(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, clock = plane
    device = _device(plane, tmp_path, block=8)
    root = service.issue(device_id=device.id, model=MODEL, queries=30, valid_until=T0 + DAY)
    assert device.sync() == ([root.license_id], [])
    assert device.serve(20) == 20
    result = device.send()
    assert result.to_dict() == {
        "report_id": result.report_id,
        "digest": hashlib.sha256(device.report(0).data).hexdigest(),
        "model": MODEL,
        "first_seq": 0,
        "last_seq": 3,
        "next_seq": 4,
        "flags": [],
        "revoked": [],
    }
    view = service.get(root.license_id)
    assert (view.chain_used, view.chain_remaining, view.last_report_at, view.alerts) == (24, 6, clock.now, 0)
    assert device.serve(20) == 10  # offline: refused past the 30 paid
    with pytest.raises(QuotaExceededError):
        device.meter.authorize()
    device.flush()
    top = service.top_up(root.license_id, queries=50)
    assert device.sync() == ([top.license_id], [])
    assert device.serve(50) == 50
    device.flush()
    [chain] = service.chains(device_id=device.id)
    assert (chain.licensed, chain.reserved, chain.next_seq, chain.branches, chain.alerts) == (80, 80, 13, 1, 0)
    assert chain.head == device.meter.hash_before(chain.next_seq) and chain.reports == 3
    assert service.for_device(device.id).chains[0].next_seq == 13
    assert [f.kind for f in service.audit()] == []
    device.close()


def test_a_device_that_honours_a_revocation_reports_it_and_is_reinstated_by_a_top_up(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, service, _, clock = plane
    device = _device(plane, tmp_path, block=8)
    root = service.issue(device_id=device.id, model=MODEL, queries=40, valid_until=T0 + DAY)
    device.sync()
    device.serve(12)  # 16 reserved
    device.flush()
    clock.now = T0 + 100
    service.revoke(root.license_id, reason="chargeback")
    assert device.sync() == ([], [root.license_id])
    with pytest.raises(LicenseRevokedError):
        device.meter.authorize()
    result = device.send()
    assert result.flags == () and result.revoked == (root.license_id,)  # type: ignore[union-attr]
    view = service.get(root.license_id)
    assert (view.status, view.chain_used, view.chain_remaining) == ("revoked", 16, 0)
    top = service.top_up(root.license_id, queries=10)
    assert device.sync() == ([top.license_id], [])
    assert device.serve(10) == 10
    [result] = device.flush()
    assert result.flags == () and result.revoked == ()  # type: ignore[union-attr]
    assert service.get(top.license_id).chain_remaining == 0 and service.audit() == []
    device.close()


def test_the_issuer_key_can_be_any_ed25519_key(plane, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ws, _, _, clock = plane
    from tinymlops.metering.licensing import LicenseService

    billing = Ed25519PrivateKey.generate()
    service = LicenseService(ws.engine, billing, clock=clock)
    view = service.issue(device_id=key_id(enrol_device(ws).signing), model=MODEL, queries=1, valid_until=T0 + 5)
    assert view.issuer_key_id == key_id(billing)
