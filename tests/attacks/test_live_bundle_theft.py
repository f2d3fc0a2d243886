"""A device asking the server for another device's bundle (or a cohort's it is not in): refused with
403 whether it signs its requests or uses a bearer token, and nothing an attacker gains by obtaining
the file another way — it is wrapped to the other device's key (KeyMismatchError)."""

from __future__ import annotations

from pathlib import Path

import pytest

import delivery_world
from delivery_world import World
from tinymlops.edge.runtime import Runtime
from tinymlops.edge.updates import TufUpdateSource
from tinymlops.errors import KeyMismatchError, UpdateError

delivery = delivery_world.delivery  # the live world (fixture)


def test_a_device_cannot_fetch_or_open_another_devices_bundle(delivery: World, tmp_path: Path) -> None:
    thief = delivery.connect(tmp_path / "thief")
    owner = delivery.connect(tmp_path / "owner", tags=["eu-west"])
    release = delivery.release("tiny:1", [thief.device_id, owner.device_id])
    owned = next(a for a in release["assignments"] if a["device_id"] == owner.device_id)
    path = f"/v1/tuf/targets/devices/{owner.device_id}/{owned['bundle_sha256']}.bundle.tmlb"

    for auth in ("signature", "bearer"):
        r = thief.client.request("GET", path, auth=auth, check=False)
        assert r.status == 403 and b"AccessDeniedError" in r.body and owner.device_id.encode() in r.body, r.body
    assert owner.client.request("GET", path, check=False).status == 200

    # the metadata is public, so the thief's TUF client finds the target — and the server refuses the file
    stolen = TufUpdateSource(thief.updates, owner.device_id)
    offer = stolen.check()
    assert offer is not None and offer.sha256 == owned["bundle_sha256"]
    with pytest.raises(UpdateError, match="HTTP 403"):
        stolen.fetch(offer, tmp_path / "loot")
    assert not list((tmp_path / "loot").glob("*.tmlb"))

    # a cohort the thief is not in: 403; one the owner is in: allowed (nothing published there: 404)
    cohort = f"/v1/tuf/targets/cohorts/eu-west/{'0' * 64}.bundle.tmlb"
    assert thief.client.request("GET", cohort, check=False).status == 403
    assert owner.client.request("GET", cohort, check=False).status == 404

    # obtained some other way (a copy of the server's disk), the bundle still does not open
    on_disk = delivery.tuf / "targets" / "devices" / owner.device_id / f"{owned['bundle_sha256']}.bundle.tmlb"
    with pytest.raises(KeyMismatchError):
        Runtime.open(on_disk.read_bytes(), thief.keys, thief.trusted_keys)
    Runtime.open(on_disk.read_bytes(), owner.keys, owner.trusted_keys)  # its owner's key opens it


def test_the_update_repository_is_only_for_enrolled_devices(delivery: World, tmp_path: Path) -> None:
    device = delivery.connect(tmp_path / "dev")
    http = delivery.plane.http()
    assert http.get("/v1/tuf/metadata/timestamp.json").status_code == 401
    assert delivery.plane.http(delivery.read_key).get("/v1/tuf/metadata/timestamp.json").status_code == 403
    assert http.get("/v1/devices/me/bootstrap").status_code == 401
    assert device.client.request("GET", "/v1/tuf/metadata/timestamp.json").status == 200
