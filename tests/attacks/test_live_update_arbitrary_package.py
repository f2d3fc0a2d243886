"""Arbitrary package through the real control plane: the bundle file of a release is replaced on the
server's disk — by a *genuinely signed* bundle for the same device (another model version), so only
TUF's signed length and hash can tell. The agent downloads, refuses it before it reaches a slot, and
stays on its bundle; with the right file back it installs the release."""

from __future__ import annotations

from pathlib import Path

from live_update_attacks import install_first

import delivery_world
from delivery_world import World, assert_serves
from tinymlops.bundle.builder import build_bundle

delivery = delivery_world.delivery  # the live world (fixture)


def test_a_replaced_target_file_is_refused_and_the_agent_stays(delivery: World, tmp_path: Path) -> None:
    first = install_first(delivery, tmp_path / "dev")
    with first.agent:
        second = first.release("tiny:2")
        device_id = first.conn.device_id
        served = delivery.tuf / "targets" / "devices" / device_id / f"{second['bundle_sha256']}.bundle.tmlb"
        honest = served.read_bytes()
        substitute = build_bundle(
            delivery.ws,
            "tiny:3",
            target="rpi-4",
            device_public_key=first.conn.keys.wrapping_public,
            out=tmp_path / "substitute.tmlb",
        )
        served.write_bytes(substitute.path.read_bytes())  # signed by the release key, for this device

        first.assert_refused_and_stayed(first.agent.run_once(), "arbitrary-package attack")

        served.write_bytes(honest)
        assert first.agent.run_once().action == "installed"
        assert_serves(first.agent, delivery, "tiny:2", second["bundle_id"])
