"""Mix-and-match through the real control plane: after a second release, the server's repository
holds the new timestamp but the previous snapshot (or the new snapshot but the previous hash bin) —
metadata of two releases served together. The agent refuses (the timestamp pins the snapshot's
hash, the snapshot pins each bin's version) and stays on its bundle; once the files are right it
installs the second release."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from live_update_attacks import install_first

import delivery_world
from delivery_world import World, assert_serves
from tinymlops.release import UpdateRepository
from tinymlops.spec.update import TargetPath

delivery = delivery_world.delivery  # the live world (fixture)


def _versions(metadata: Path, role: str) -> tuple[int, int]:
    """(snapshot version, version of ``role``) the committed timestamp leads to."""
    ts = json.loads((metadata / "timestamp.json").read_bytes())["signed"]
    snapshot = ts["meta"]["snapshot.json"]["version"]
    snap = json.loads((metadata / f"{snapshot}.snapshot.json").read_bytes())["signed"]
    return snapshot, snap["meta"][f"{role}.json"]["version"]


@pytest.mark.parametrize("mixed", ["snapshot", "bin"])
def test_metadata_from_two_releases_is_refused_and_the_agent_stays(delivery: World, tmp_path: Path, mixed: str) -> None:
    first = install_first(delivery, tmp_path / "dev")
    with first.agent:
        published = UpdateRepository.open(delivery.ws.root).get(TargetPath.device(first.conn.device_id))
        assert published is not None
        role = published.role  # the hash bin holding this device's target
        old_snapshot, old_bin = _versions(first.metadata, role)
        old = {
            "snapshot": (first.metadata / f"{old_snapshot}.snapshot.json").read_bytes(),
            "bin": (first.metadata / f"{old_bin}.{role}.json").read_bytes(),
        }
        second = first.release("tiny:2")
        new_snapshot, new_bin = _versions(first.metadata, role)
        assert (new_snapshot, new_bin) > (old_snapshot, old_bin)
        target = first.metadata / (f"{new_snapshot}.snapshot.json" if mixed == "snapshot" else f"{new_bin}.{role}.json")
        honest = target.read_bytes()
        target.write_bytes(old[mixed])  # new parent, old child: both validly signed, never meant together

        first.assert_refused_and_stayed(first.agent.run_once(), "mix-and-match attack")

        target.write_bytes(honest)
        assert first.agent.run_once().action == "installed"
        assert_serves(first.agent, delivery, "tiny:2", second["bundle_id"])
