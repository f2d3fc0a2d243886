"""Rollback through the real control plane: the repository on the server is made to serve the
metadata of an older release (older files put back on its disk). The agent, which already trusts
newer metadata, refuses it (python-tuf: a timestamp older than the one it trusts) and stays on its
current, working bundle; when the repository is honest again it converges on the next release."""

from __future__ import annotations

from pathlib import Path

from live_update_attacks import install_first

import delivery_world
from delivery_world import World, assert_serves

delivery = delivery_world.delivery  # the live world (fixture)


def test_older_metadata_served_by_the_server_is_refused_and_the_agent_stays(delivery: World, tmp_path: Path) -> None:
    first = install_first(delivery, tmp_path / "dev")
    with first.agent:
        timestamp = first.metadata / "timestamp.json"
        release_one = timestamp.read_bytes()  # what a stale copy of the repository would serve
        second = first.release("tiny:2")
        assert first.agent.run_once().action == "installed"
        first.ref, first.bundle_id, first.slot = "tiny:2", second["bundle_id"], first.agent.state.active  # type: ignore[assignment]
        assert_serves(first.agent, delivery, "tiny:2", second["bundle_id"])

        honest = timestamp.read_bytes()
        timestamp.write_bytes(release_one)  # the server now serves release one's (validly signed) metadata
        for _ in range(2):  # refused every time, never remembered as a reason to stop checking
            first.assert_refused_and_stayed(first.agent.run_once(), "rollback attack")

        timestamp.write_bytes(honest)
        third = first.release("tiny:3")
        assert first.agent.run_once().action == "installed"
        assert_serves(first.agent, delivery, "tiny:3", third["bundle_id"])
