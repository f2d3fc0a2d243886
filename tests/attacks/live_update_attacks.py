"""Shared steps of the attacks on update delivery through the real control plane: a device whose
agent installed release one (tiny:1) through the server, and the check that a refused attack left it
on that bundle — same active slot, still predicting exactly what tiny:1 predicts.

A plain module (imported by the attack tests next to it), not a conftest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delivery_world import World, assert_serves
from tinymlops.edge.agent import Agent, Cycle
from tinymlops.edge.agent.remote import Connection


@dataclass
class Installed:
    world: World
    conn: Connection
    agent: Agent
    ref: str
    bundle_id: str
    slot: str

    @property
    def metadata(self) -> Path:
        return self.world.tuf / "metadata"

    def release(self, ref: str) -> dict[str, Any]:
        doc = self.world.release(ref, [self.conn.device_id])
        assert doc["assignments"][0]["status"] == "published", doc
        return doc["assignments"][0]

    def assert_refused_and_stayed(self, cycle: Cycle, attack: str) -> None:
        """The cycle failed naming ``attack``, and the agent still serves what it served before."""
        assert cycle.action == "error", cycle
        assert cycle.error is not None and "UpdateRefusedError" in cycle.error and attack in cycle.error, cycle.error
        assert self.agent.state.active == self.slot
        assert_serves(self.agent, self.world, self.ref, self.bundle_id)
        assert not any(self.agent.store.incoming_dir.iterdir())  # nothing half-downloaded left behind


def install_first(world: World, data_dir: Path, ref: str = "tiny:1") -> Installed:
    conn = world.connect(data_dir)
    agent = world.agent(conn)
    a = world.release(ref, [conn.device_id])["assignments"][0]
    cycle = agent.run_once()
    assert cycle.action == "installed", cycle
    assert agent.state.active is not None
    assert_serves(agent, world, ref, a["bundle_id"])
    return Installed(world, conn, agent, ref, a["bundle_id"], agent.state.active)
