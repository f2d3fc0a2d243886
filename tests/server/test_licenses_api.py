"""The licensing API over HTTP against a live control plane: operators issue, top up, revoke and audit
licenses; real devices (a real :class:`~tinymlops.metering.meter.Meter` under each enrolled key)
fetch their licenses, verify them with the workspace's release key, serve calls offline and send
signed usage reports that the server reconciles. Every refusal is a 4xx with the standard error body
naming what is wrong, and a refused report stores nothing."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import live_server
from licensed_devices import MODEL, MeteredDevice, fetch, post_report
from live_server import Plane, error_of
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.metering.license_signing import SignedLicense, SignedRevocation, verify_license, verify_revocation

plane = live_server.plane
plane_any_db = live_server.plane_any_db

DAY = 86_400


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[list[MeteredDevice]]:
    """Meters opened by the test (closed after it)."""
    opened: list[MeteredDevice] = []
    yield opened
    for d in opened:
        d.close()


def _metered(plane: Plane, tmp_path: Path, devices: list[MeteredDevice], keys: DeviceKeys, name: str) -> MeteredDevice:
    d = MeteredDevice.open(keys, plane.ws.root, tmp_path / name)
    devices.append(d)
    return d


def _issue(plane: Plane, device_id: str, queries: int = 100, **more: Any) -> dict[str, Any]:
    r = plane.admin.post("/v1/licenses", json={"device_id": device_id, "model": MODEL, "queries": queries, **more})
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_a_license_goes_to_the_device_and_its_usage_comes_back(
    plane_any_db: Plane, tmp_path: Path, devices: list[MeteredDevice]
) -> None:
    plane = plane_any_db
    client = plane.device()
    lic = _issue(plane, client.device_id, 100, valid_days=30)
    assert lic["status"] == "active" and lic["previous_license_id"] is None
    assert (lic["device_id"], lic["model"], lic["queries"]) == (client.device_id, MODEL, 100)
    assert lic["valid_until"] - lic["valid_from"] == 30 * DAY
    assert (lic["chain_licensed"], lic["chain_used"], lic["chain_remaining"]) == (100, 0, 100)
    assert lic["root_license_id"] == lic["license_id"]

    # the device gets the exact signed bytes; they verify with the workspace's release key
    doc = fetch(client)
    assert doc["device_id"] == client.device_id and doc["revocations"] == []
    [item] = doc["licenses"]
    assert item["license_id"] == lic["license_id"] and item["data"] == lic["data"]
    signed = SignedLicense(base64.b64decode(item["data"]), bytes.fromhex(item["signature"]))
    assert verify_license(signed, [release_public_key(plane.ws.root)]).queries == 100
    assert doc["chains"] == [{"model": MODEL, "next_seq": 0, "head": None}]

    meter = _metered(plane, tmp_path, devices, client.keys, "a")
    assert meter.install(doc) == [lic["license_id"]]
    meter.serve(10)  # blocks of 4: 12 reserved
    report = meter.report()
    r = post_report(client, report)
    assert r.status == 201, r.body
    accepted = r.json()
    sent = json.loads(report.data)
    assert (accepted["first_seq"], accepted["last_seq"], accepted["next_seq"]) == (0, sent["last_seq"], 4)
    assert accepted["model"] == MODEL and accepted["revoked"] == [] and accepted["flags"] == []

    shown = plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()
    assert (shown["chain_used"], shown["chain_remaining"], shown["alerts"]) == (12, 88, 0)
    assert shown["last_report_at"] is not None and shown["flags"] == []
    assert shown["chain"]["next_seq"] == 4 and shown["chain"]["head"] == sent["head_after"]
    assert shown["chain"]["branches"] == 1 and shown["chain"]["reports"] == 1
    assert fetch(client)["chains"] == [{"model": MODEL, "next_seq": 4, "head": sent["head_after"]}]
    chains = plane.admin.get("/v1/licensing/chains", params={"device": client.device_id}).json()
    assert [(c["root_license_id"], c["reserved"], c["licensed"]) for c in chains] == [(lic["license_id"], 12, 100)]

    # the same report again: already counted (409 naming where to go on), never counted twice
    again = post_report(client, report)
    assert again.status == 409
    err = error_of(httpx.Response(409, content=again.body, headers={"content-type": "application/json"}))
    assert err["type"] == "DuplicateReportError" and err["next_seq"] == 4
    assert err["digest"] == accepted["digest"]
    assert plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()["chain_used"] == 12
    replays = plane.admin.get("/v1/licensing/audit", params={"kind": "replay"}).json()
    assert [(f["severity"], f["device_id"], f["repeats"]) for f in replays] == [("info", client.device_id, 1)]
    assert post_report(client, report).status == 409  # once more: counted on the same flag
    replays = plane.admin.get("/v1/licensing/audit", params={"kind": "replay"}).json()
    assert [f["repeats"] for f in replays] == [2] and replays[0]["last_at"] >= replays[0]["created_at"]


def _error(response: Any) -> dict[str, Any]:
    """The error object of a DeviceClient response."""
    return error_of(httpx.Response(response.status, content=response.body, headers=response.headers))


def test_a_cloned_device_and_a_restored_ledger_are_flagged_and_every_count_is_kept(
    plane: Plane, tmp_path: Path, devices: list[MeteredDevice]
) -> None:
    client = plane.device()
    lic = _issue(plane, client.device_id, 1000, valid_days=1)
    original = _metered(plane, tmp_path, devices, client.keys, "original")
    clone = _metered(plane, tmp_path, devices, client.keys, "clone")  # the device's state copied elsewhere
    doc = fetch(client)
    original.install(doc)
    clone.install(doc)
    original.serve(8)
    assert post_report(client, original.report()).status == 201
    clone.serve(8)
    forked = post_report(client, clone.report())
    assert forked.status == 201, forked.body
    assert {f["kind"] for f in forked.json()["flags"]} & {"rollback", "clone"}
    original.serve(8)
    assert post_report(client, original.report()).status == 201
    clone.serve(8)
    assert post_report(client, clone.report()).status == 201

    flags = plane.admin.get("/v1/licensing/audit", params={"device": client.device_id}).json()
    assert "clone" in {f["kind"] for f in flags}, flags
    assert all(f["severity"] == "alert" for f in flags if f["kind"] in ("clone", "rollback"))
    clones = plane.admin.get("/v1/licensing/audit", params={"kind": "clone"}).json()
    assert clones and {f["device_id"] for f in clones} == {client.device_id}
    shown = plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()
    assert shown["chain"]["branches"] == 2 and shown["alerts"] >= 1
    assert {f["kind"] for f in shown["flags"]} >= {"clone"}
    # both branches' reservations are billed: 16 on each
    assert shown["chain_used"] == 32
    by_license = plane.admin.get("/v1/licensing/audit", params={"license": lic["license_id"]}).json()
    assert [f["id"] for f in by_license] == [f["id"] for f in shown["flags"]]
    r = plane.admin.get("/v1/licensing/audit", params={"license": "0" * 32})
    assert r.status_code == 404 and error_of(r)["type"] == "NotFoundError"


def test_top_up_revoke_and_reinstate(plane: Plane, tmp_path: Path, devices: list[MeteredDevice]) -> None:
    client = plane.device()
    root = _issue(plane, client.device_id, 10, valid_days=10)
    r = plane.admin.post(
        "/v1/licenses", json={"device_id": client.device_id, "model": MODEL, "queries": 5, "valid_days": 1}
    )
    assert r.status_code == 409 and root["license_id"] in error_of(r)["message"]  # one chain: top it up

    r = plane.admin.post(f"/v1/licenses/{root['license_id']}/top-up", json={"queries": 20})
    assert r.status_code == 201, r.text
    top = r.json()
    assert top["previous_license_id"] == root["license_id"] and top["root_license_id"] == root["license_id"]
    assert top["chain_licensed"] == 30 and top["valid_until"] == root["valid_until"]  # the end kept
    assert plane.admin.get(f"/v1/licenses/{root['license_id']}").json()["status"] == "superseded"
    stale = plane.admin.post(f"/v1/licenses/{root['license_id']}/top-up", json={"queries": 1})
    assert stale.status_code == 409 and top["license_id"] in error_of(stale)["message"]

    meter = _metered(plane, tmp_path, devices, client.keys, "a")
    assert meter.install(fetch(client)) == [root["license_id"], top["license_id"]]
    assert meter.meter.remaining == 30

    # revoking the root revokes the chain: its latest license
    r = plane.admin.post(f"/v1/licenses/{root['license_id']}/revoke", json={"reason": "chargeback"})
    assert r.status_code == 200, r.text
    revoked = r.json()
    assert (revoked["license_id"], revoked["status"], revoked["revoke_reason"]) == (
        top["license_id"],
        "revoked",
        "chargeback",
    )
    doc = fetch(client)
    [rev] = doc["revocations"]
    assert rev["license_id"] == top["license_id"]
    signed = SignedRevocation(base64.b64decode(rev["data"]), bytes.fromhex(rev["signature"]))
    revocation = verify_revocation(signed, [release_public_key(plane.ws.root)])
    assert (revocation.device_id, revocation.reason) == (client.device_id, "chargeback")
    listed = plane.admin.get("/v1/licenses", params={"device": client.device_id, "status": "revoked"}).json()
    assert [x["license_id"] for x in listed] == [top["license_id"]]

    # a top-up of the revoked license reinstates the chain
    r = plane.admin.post(f"/v1/licenses/{top['license_id']}/top-up", json={"queries": 5, "valid_days": 3})
    assert r.status_code == 201, r.text
    back = r.json()
    assert back["status"] == "active" and back["previous_license_id"] == top["license_id"]
    assert back["chain_licensed"] == 35
    chains = plane.admin.get("/v1/licensing/chains", params={"device": client.device_id}).json()
    assert [(c["status"], c["latest_license_id"]) for c in chains] == [("active", back["license_id"])]
    newest = plane.admin.get("/v1/licenses", params={"device": client.device_id}).json()
    assert [x["license_id"] for x in newest] == [back["license_id"], top["license_id"], root["license_id"]]


def test_bad_reports_are_refused_store_nothing_and_a_forged_signature_is_flagged(
    plane: Plane, tmp_path: Path, devices: list[MeteredDevice]
) -> None:
    client = plane.device()
    lic = _issue(plane, client.device_id, 100, valid_days=1)
    meter = _metered(plane, tmp_path, devices, client.keys, "a")
    meter.install(fetch(client))
    meter.serve(6)
    report = meter.report()

    def unchanged() -> None:
        shown = plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()
        assert shown["chain_used"] == 0 and shown["last_report_at"] is None
        assert fetch(client)["chains"] == [{"model": MODEL, "next_seq": 0, "head": None}]

    r = post_report(client, report, signature=report.signature[::-1].hex())
    assert r.status == 400, r.body
    assert "signature" in _error(r)["message"].lower()
    unchanged()
    tamper = plane.admin.get("/v1/licensing/audit", params={"kind": "tamper"}).json()
    assert [(f["device_id"], f["severity"]) for f in tamper] == [(client.device_id, "alert")]

    # another device's report (a valid signature by that device) from this device: refused
    other = plane.device()
    _issue(plane, other.device_id, 50, valid_days=1)
    other_meter = _metered(plane, tmp_path, devices, other.keys, "other")
    other_meter.install(fetch(other))
    other_meter.serve(1)
    r = post_report(client, other_meter.report())
    assert r.status == 400, r.body
    unchanged()

    for body in (
        b"",
        b"{",
        b'{"spec_version": "1.0"}',
        json.dumps({**json.loads(report.data), "entries": []}).encode(),
    ):
        r = client.request(
            "POST",
            "/v1/devices/me/usage",
            body=body,
            headers={"Content-Type": "application/json", "X-Tinymlops-Report-Signature": "ab" * 64},
            check=False,
        )
        assert r.status == 400, (body, r.body)
        assert _error(r)["message"]
    unchanged()

    # an API key may not post usage; a device without a signature may not either
    r = plane.admin.post(
        "/v1/devices/me/usage", content=report.data, headers={"X-Tinymlops-Report-Signature": report.signature.hex()}
    )
    assert r.status_code == 403
    r = plane.http().post("/v1/devices/me/usage", content=report.data)
    assert r.status_code == 401
    unchanged()


def test_a_report_past_a_lost_one_is_a_gap_and_the_device_resends_from_next_seq(
    plane: Plane, tmp_path: Path, devices: list[MeteredDevice]
) -> None:
    client = plane.device()
    lic = _issue(plane, client.device_id, 100, valid_days=1)
    meter = _metered(plane, tmp_path, devices, client.keys, "a")
    meter.install(fetch(client))
    meter.serve(4)
    first = meter.report()
    meter.serve(8)
    later = meter.report(json.loads(first.data)["last_seq"] + 1)
    r = post_report(client, later)
    assert r.status == 409, r.body
    err = _error(r)
    assert (
        err["type"] == "ReportGapError"
        and err["next_seq"] == 0
        and err["first_seq"] == json.loads(later.data)["first_seq"]
    )
    assert plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()["chain_used"] == 0
    # resend from next_seq: the whole chain in one report
    assert post_report(client, meter.report(err["next_seq"])).status == 201
    assert plane.admin.get(f"/v1/licenses/{lic['license_id']}").json()["chain_used"] == 12


def test_scopes(plane: Plane) -> None:
    client = plane.device()
    lic = _issue(plane, client.device_id, 10, valid_days=1)
    lid = lic["license_id"]
    _, read = plane.api_key("read")
    _, release = plane.api_key("release")
    for key in (read, release):
        http = plane.http(key)
        assert (
            http.post(
                "/v1/licenses", json={"device_id": client.device_id, "model": "m", "queries": 1, "valid_days": 1}
            ).status_code
            == 403
        )
        assert http.post(f"/v1/licenses/{lid}/top-up", json={"queries": 1}).status_code == 403
        assert http.post(f"/v1/licenses/{lid}/revoke", json={"reason": "x"}).status_code == 403
        assert http.get(f"/v1/licenses/{lid}").status_code == 200
        assert http.get("/v1/licenses").status_code == 200
        assert http.get("/v1/licensing/audit").status_code == 200
        assert http.get("/v1/licensing/chains").status_code == 200
    anonymous = plane.http()
    for method, path in (("GET", "/v1/licenses"), ("GET", f"/v1/licenses/{lid}"), ("GET", "/v1/licensing/audit")):
        r = anonymous.request(method, path)
        assert r.status_code == 401 and error_of(r)["type"] == "AuthenticationError"
    # a device may not call the operator endpoints (a signature is no API key; a device token is refused)
    assert client.request("GET", "/v1/licenses", check=False).status == 401
    assert client.request("GET", "/v1/licenses", auth="bearer", check=False).status == 403
    revoke = client.request(
        "POST", f"/v1/licenses/{lid}/revoke", json_body={"reason": "mine"}, auth="bearer", check=False
    )
    assert revoke.status == 403
    assert plane.admin.get("/v1/devices/me/licenses").status_code == 403
    # a bearer token works like a signed request on the device endpoints
    assert client.get_json("/v1/devices/me/licenses", auth="bearer")["licenses"][0]["license_id"] == lid
    assert plane.admin.get(f"/v1/licenses/{lid}").json()["status"] == "active"


BAD_ISSUES: list[tuple[dict[str, Any], int, str, str]] = [
    ({"queries": 0, "valid_days": 1}, 422, "ValidationError", "queries"),
    ({"queries": 10**12 + 1, "valid_days": 1}, 422, "ValidationError", "queries"),
    ({"queries": 5, "valid_days": 1, "price": 3}, 422, "ValidationError", "price"),
    ({"queries": 5, "valid_days": 0}, 422, "ValidationError", "valid_days"),
    ({"queries": 5}, 400, "SpecError", "valid_days or valid_until"),
    ({"queries": 5, "valid_days": 1, "valid_until": "2099-01-01T00:00:00Z"}, 400, "SpecError", "not both"),
    ({"queries": 5, "valid_until": "2001-01-01T00:00:00Z"}, 400, "SpecError", "not after now"),
    ({"queries": 5, "valid_until": "next tuesday"}, 400, "SpecError", "valid_until"),
    ({"queries": 5, "valid_until": "1969-12-31"}, 400, "SpecError", "before 1970"),
    ({"queries": 5, "valid_days": 1, "valid_from": "yesterday"}, 400, "SpecError", "valid_from"),
    ({"queries": 5, "valid_days": 1, "min_version": 3, "max_version": 2}, 400, "SpecError", "min_version"),
    ({"queries": 5, "valid_days": 1, "model": "no spaces"}, 422, "ValidationError", "model"),
    ({"queries": 5, "valid_days": 1, "device_id": "ABC"}, 422, "ValidationError", "device_id"),
    ({"queries": 5, "valid_days": 1, "device_id": "0123456789abcdef"}, 404, "NotFoundError", "0123456789abcdef"),
]


def test_bad_requests_are_clear_4xx_and_change_nothing(plane: Plane) -> None:
    client = plane.device()
    for body, status, kind, words in BAD_ISSUES:
        r = plane.admin.post("/v1/licenses", json={"device_id": client.device_id, "model": MODEL, **body})
        assert r.status_code == status, (body, r.text)
        err = error_of(r)
        assert err["type"] == kind and words in r.text, (body, err)
        if kind == "SpecError":  # the body names the field
            assert err["field"] in body or err["field"] == "valid_until", (body, err)
    assert plane.admin.get("/v1/licenses").json() == []

    lic = _issue(plane, client.device_id, 5, valid_from=_iso(1_900_000_000), valid_until=_iso(1_900_000_000 + DAY))
    assert (lic["valid_from"], lic["valid_until"]) == (1_900_000_000, 1_900_000_000 + DAY)
    # as the CLI reads them: a date alone is midnight, a time without an offset is UTC
    naive = _issue(plane, client.device_id, 5, model="kws", valid_from="2031-01-31T01:00", valid_until="2031-02-01")
    assert (naive["valid_from"], naive["valid_until"]) == (1_927_584_000 + 3600, 1_927_584_000 + DAY)
    lid = lic["license_id"]
    for path, body, status, words in [
        (
            f"/v1/licenses/{lid}/top-up",
            {"queries": 1, "valid_days": 1, "valid_until": "2099-01-01T00:00:00Z"},
            400,
            "not both",
        ),
        (f"/v1/licenses/{lid}/top-up", {"queries": 1, "valid_until": "2001-01-01T00:00:00Z"}, 400, "not after now"),
        (f"/v1/licenses/{lid}/top-up", {"queries": -1}, 422, "queries"),
        (f"/v1/licenses/{lid}/top-up", {}, 422, "queries"),
        (f"/v1/licenses/{lid}/revoke", {"reason": ""}, 422, "reason"),
        (f"/v1/licenses/{lid}/revoke", {"reason": "   "}, 422, "reason"),
        (f"/v1/licenses/{lid}/revoke", {"reason": "x" * 201}, 422, "reason"),
        (f"/v1/licenses/{'0' * 32}/revoke", {"reason": "why"}, 404, "0" * 32),
        (f"/v1/licenses/{'0' * 32}/top-up", {"queries": 1}, 404, "0" * 32),
        ("/v1/licenses/not-an-id/revoke", {"reason": "why"}, 422, "license_id"),
    ]:
        r = plane.admin.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert words in r.text, (path, body, r.text)
    for path, params, status in [
        (f"/v1/licenses/{'f' * 32}", {}, 404),
        ("/v1/licenses", {"status": "expired"}, 422),
        ("/v1/licenses", {"device": "nope"}, 422),
        ("/v1/licenses", {"owner": "me"}, 422),
        ("/v1/licensing/audit", {"limit": 0}, 422),
        ("/v1/licensing/audit", {"kind": "DROP TABLE"}, 422),
        ("/v1/licensing/chains", {"device": "x"}, 422),
    ]:
        r = plane.admin.get(path, params=params)
        assert r.status_code == status, (path, params, r.text)
        error_of(r)
    assert [x["license_id"] for x in plane.admin.get("/v1/licenses", params={"model": MODEL}).json()] == [lid]
    assert plane.admin.get(f"/v1/licenses/{lid}").json()["status"] == "active"


def test_a_refusal_of_the_service_is_a_400_naming_the_field(sqlite_workspace: Any) -> None:
    """What only the service can judge (the license a top-up extends has run out) is a 400 whose
    body names the field, like the route's own checks."""
    now = [time.time()]
    plane = live_server.start_plane(sqlite_workspace, clock=lambda: now[0])
    try:
        client = plane.device()
        lic = _issue(plane, client.device_id, 5, valid_days=1)
        now[0] += 2 * DAY
        r = plane.admin.post(f"/v1/licenses/{lic['license_id']}/top-up", json={"queries": 5})
        assert r.status_code == 400, r.text
        err = error_of(r)
        assert err["field"] == "valid_until" and "expired" in err["message"]
        r = plane.admin.post(f"/v1/licenses/{lic['license_id']}/top-up", json={"queries": 5, "valid_days": 1})
        assert r.status_code == 201, r.text
    finally:
        plane.close()


def test_a_revoked_device_gets_no_license_and_its_endpoints_refuse(plane: Plane) -> None:
    client = plane.device()
    assert plane.admin.post(f"/v1/devices/{client.device_id}/revoke").status_code == 200
    r = plane.admin.post(
        "/v1/licenses", json={"device_id": client.device_id, "model": MODEL, "queries": 5, "valid_days": 1}
    )
    assert r.status_code == 409 and error_of(r)["type"] == "ConflictError"
    assert client.request("GET", "/v1/devices/me/licenses", check=False).status == 401
    assert plane.admin.get("/v1/licenses").json() == []


def test_the_device_filters_its_licenses_by_model(plane: Plane) -> None:
    client = plane.device()
    a = _issue(plane, client.device_id, 5, valid_days=1)
    r = plane.admin.post(
        "/v1/licenses", json={"device_id": client.device_id, "model": "kws", "queries": 7, "valid_days": 1}
    )
    assert r.status_code == 201
    b = r.json()
    other = plane.device()
    _issue(plane, other.device_id, 9, valid_days=1)
    everything = fetch(client)
    assert {x["license_id"] for x in everything["licenses"]} == {a["license_id"], b["license_id"]}
    only = client.get_json("/v1/devices/me/licenses?model=kws")
    assert [x["license_id"] for x in only["licenses"]] == [b["license_id"]]
    assert [c["model"] for c in only["chains"]] == ["kws"]
    assert client.request("GET", "/v1/devices/me/licenses?model=bad%20name", check=False).status == 422
    listed = plane.admin.get("/v1/licenses", params={"model": "kws"}).json()
    assert [x["license_id"] for x in listed] == [b["license_id"]]
    newest = plane.admin.get("/v1/licenses", params={"limit": 1}).json()
    assert len(newest) == 1 and newest[0]["device_id"] == other.device_id  # the last issued
    assert plane.admin.get("/v1/licenses", params={"limit": 0}).status_code == 422


def test_the_openapi_documents_every_licensing_route(plane: Plane) -> None:
    paths = plane.http().get("/openapi.json").json()["paths"]
    for path, methods in {
        "/v1/licenses": {"get", "post"},
        "/v1/licenses/{license_id}": {"get"},
        "/v1/licenses/{license_id}/top-up": {"post"},
        "/v1/licenses/{license_id}/revoke": {"post"},
        "/v1/licensing/audit": {"get"},
        "/v1/licensing/chains": {"get"},
        "/v1/devices/me/licenses": {"get"},
        "/v1/devices/me/usage": {"post"},
    }.items():
        assert set(paths[path]) >= methods, path
    usage = paths["/v1/devices/me/usage"]["post"]
    assert {p["name"] for p in usage["parameters"]} >= {"X-Tinymlops-Report-Signature"}
    assert "409" in usage["responses"] and "201" in usage["responses"]
    assert DeviceClient  # the device side of these tests is the real client
