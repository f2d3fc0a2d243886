"""Update delivery end to end against a real control plane on 127.0.0.1: an admin makes an enrolment
token, an agent enrols and bootstraps its trust, a release is created for it, and the agent installs
the bundle through the server's TUF repository — its runtime predicts exactly what the variant run
directly in ONNX Runtime predicts. A second release converges; install reports show in the release.
Devices of different profiles receive the variant selection picks for each, and never another's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import delivery_world
from delivery_world import INT8_NPU_PROFILE, World, X, assert_serves, open_world, tiny_onnx
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import KeyMismatchError
from tinymlops.spec.context import DeviceContext
from tinymlops.targets.registry_candidates import candidates_for
from tinymlops.targets.selection import select_variant

delivery_any_db = delivery_world.delivery_any_db  # the live world on SQLite and PostgreSQL (fixture)


def test_a_release_reaches_the_agent_through_tuf_and_a_second_one_converges(
    delivery_any_db: World, tmp_path: Path
) -> None:
    delivery = delivery_any_db
    conn = delivery.connect(tmp_path / "dev")
    with delivery.agent(conn) as agent:
        assert agent.run_once().action == "idle"  # enrolled, nothing published for it yet

        first = delivery.release("tiny:1", [conn.device_id])
        (a1,) = first["assignments"]
        assert (a1["status"], a1["ref"], a1["target_path"]) == (
            "published",
            "tiny:1",
            f"devices/{conn.device_id}/bundle.tmlb",
        )
        cycle = agent.run_once()
        assert cycle.action == "installed", cycle
        assert_serves(agent, delivery, "tiny:1", a1["bundle_id"])

        second = delivery.release("tiny:2", [conn.device_id])
        (a2,) = second["assignments"]
        assert agent.run_once().action == "installed"
        assert_serves(agent, delivery, "tiny:2", a2["bundle_id"])
        assert agent.run_once().action == "idle"  # converged: nothing more to do
        assert not np.array_equal(delivery.expected("tiny:1"), delivery.expected("tiny:2"))

    shown1, shown2 = delivery.show(first["id"]), delivery.show(second["id"])
    r1, r2 = shown1["assignments"][0], shown2["assignments"][0]
    assert r1["latest_report"]["status"] == "installed" and r1["latest_report"]["bundle_id"] == a1["bundle_id"]
    assert r1["latest_report"]["release_id"] == first["id"]
    assert r2["latest_report"]["status"] == "installed" and r2["latest_report"]["release_id"] == second["id"]
    assert set(r2["latest_report"]["timings"]) >= {"download_s", "verify_s", "smoke_s", "total_s"}
    for shown in (shown1, shown2):  # the device runs the second release's bundle now
        deployment = shown["assignments"][0]["deployment"]
        assert deployment["bundle_id"] == a2["bundle_id"] and deployment["release_id"] == second["id"]
    listed = delivery.plane.http(delivery.read_key).get("/v1/releases").json()
    assert [r["id"] for r in listed][:2] == [second["id"], first["id"]]
    assert conn.reporter.pending() == []


def _profile_world(ws: Any) -> None:
    (Path(ws.root) / "targets" / "int8-npu-board.toml").write_text(INT8_NPU_PROFILE)
    from tinymlops.optimize.pipeline import register_model

    register_model(ws, "tiny", tiny_onnx(1.0))  # derives and evaluates every configured variant


@pytest.mark.slow
def test_devices_of_different_profiles_get_the_variant_selected_for_each(sqlite_workspace: Any, tmp_path: Path) -> None:
    ws = sqlite_workspace
    _profile_world(ws)
    with open_world(ws) as world:
        pi = world.connect(tmp_path / "pi", profile="rpi-4")
        npu = world.connect(tmp_path / "npu", profile="int8-npu-board")
        mcu = world.connect(tmp_path / "mcu", profile="mcu-cortex-m7")  # runs LiteRT only: nothing fits
        release = world.release("tiny")  # every active device; the variant selected per profile

        _, candidates = candidates_for(ws.registry, "tiny")
        expected = {
            pi.device_id: select_variant(candidates, ws.targets.get("rpi-4"), DeviceContext()).chosen.ref,
            npu.device_id: select_variant(candidates, ws.targets.get("int8-npu-board"), DeviceContext()).chosen.ref,
        }
        assert expected[npu.device_id] == "tiny:1/int8-dynamic" and expected[pi.device_id] != expected[npu.device_id]
        by_device = {a["device_id"]: a for a in release["assignments"]}
        for device_id, ref in expected.items():
            a = by_device[device_id]
            assert (a["status"], a["ref"], a["selection"]["chosen"]) == ("published", ref, ref)
            assert a["selection"]["reason"] and a["selection"]["context"]["network"] == "wifi"
        skipped = by_device[mcu.device_id]
        assert skipped["status"] == "skipped" and skipped["bundle_id"] is None
        assert "no variant fits profile mcu-cortex-m7" in skipped["reason"]
        assert (release["published"], release["skipped"]) == (2, 1)

        for conn in (pi, npu):
            with world.agent(conn) as agent:
                assert agent.run_once().action == "installed"
                assert_serves(agent, world, expected[conn.device_id], by_device[conn.device_id]["bundle_id"])
        with world.agent(mcu) as agent:
            assert agent.run_once().action == "idle" and agent.state.active is None

        # the pi can never have the NPU board's bundle: refused by the server ...
        npu_bundle = Path(ws.root) / "releases" / release["id"] / f"{npu.device_id}.tmlb"
        sha = by_device[npu.device_id]["bundle_sha256"]
        r = pi.client.request("GET", f"/v1/tuf/targets/devices/{npu.device_id}/{sha}.bundle.tmlb", check=False)
        assert r.status == 403 and b"AccessDeniedError" in r.body
        # ... and useless if it got it some other way: wrapped to the other device's key
        with pytest.raises(KeyMismatchError):
            Runtime.open(npu_bundle.read_bytes(), pi.keys, pi.trusted_keys)
        # while its owner opens it fine
        rt = Runtime.open(npu_bundle.read_bytes(), npu.keys, npu.trusted_keys)
        np.testing.assert_array_equal(rt.predict(X).outputs["y"], world.expected("tiny:1/int8-dynamic"))

        shown = world.show(release["id"])
        statuses = {a["device_id"]: (a["latest_report"] or {}).get("status") for a in shown["assignments"]}
        assert statuses == {pi.device_id: "installed", npu.device_id: "installed", mcu.device_id: None}
