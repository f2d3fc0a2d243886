"""Staged rollouts end to end with real agents against a real control plane on 127.0.0.1: a release
reaches the canary first and the others only once the canary's install and health reports pass the
gate; a broken release (its smoke test passes, its predictions fail) is stopped at the canary and
rolled back by the server with no human involved; a manual rollback sends every device back to its
previous bundle through TUF — the agents switch to their other A/B slot without downloading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import delivery_world
from delivery_world import FAST, World, X, assert_serves
from tiny_models import tiny_onnx
from tinymlops.demo.fleet import broken_export
from tinymlops.edge.agent import Agent, AgentConfig
from tinymlops.errors import TinyMLOpsError

delivery = delivery_world.delivery  # the live world (fixture)

AGENT = AgentConfig(**{**FAST.__dict__, "health_interval": 0.0})
GATE = {"min_reports": 1, "min_predictions": 4, "max_error_rate": 0.05}


def staged(*stages: tuple[str, float, dict[str, Any]]) -> dict[str, Any]:
    return {"spec_version": "1.0", "stages": [{"name": n, "fraction": f, "health": h} for n, f, h in stages]}


def rollout(world: World, release_id: str) -> dict[str, Any]:
    r = world.plane.http(world.read_key).get(f"/v1/releases/{release_id}/rollout")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def drive(world: World, agents: list[Agent], release_id: str, until: tuple[str, ...], rounds: int = 12) -> list[str]:
    """Poll, predict single rows and report, round by round, until the rollout reaches ``until``;
    returns each round's rollout status."""
    seen = []
    for _ in range(rounds):
        for agent in agents:
            agent.run_once()
            if agent.runtime is not None:
                for row in X:
                    try:
                        agent.predict(row[None, :])
                    except TinyMLOpsError:
                        pass
                    except Exception:  # a broken model's own failure: what the health watch counts
                        pass
            agent.flush_health()
        seen.append(rollout(world, release_id)["status"])
        if seen[-1] in until:
            break
    return seen


@pytest.mark.slow
def test_stages_gates_automatic_and_manual_rollback_with_real_agents(delivery: World, tmp_path: Path) -> None:
    conns = [delivery.connect(tmp_path / f"d{i}") for i in range(4)]
    agents = [delivery.agent(c, config=AGENT) for c in conns]
    try:
        base = delivery.release("tiny:1", [c.device_id for c in conns])
        for agent in agents:
            assert agent.run_once().action == "installed"

        plan = staged(("canary", 0.25, GATE), ("all", 1.0, {**GATE, "min_reports": 4, "min_predictions": 8}))
        good = delivery.release("tiny:2", [c.device_id for c in conns], plan=plan)
        canary = {a["device_id"] for a in good["assignments"] if a["stage"] == 0}
        assert len(canary) == 1
        for conn, agent in zip(conns, agents, strict=True):  # only the canary is offered it at first
            expected = "installed" if conn.device_id in canary else "idle"
            assert agent.run_once().action == expected
        statuses = drive(delivery, agents, good["id"], ("completed",))
        assert statuses[-1] == "completed", statuses
        shown = rollout(delivery, good["id"])
        assert [(t["to_status"], t["actor"]) for t in shown["transitions"][1:]] == [
            ("running", "auto"),
            ("completed", "auto"),
        ]
        assert shown["health"]["predictions"] >= 8 and shown["health"]["prediction_errors"] == 0
        for agent in agents:
            np.testing.assert_array_equal(agent.predict(X).outputs["y"], delivery.expected("tiny:2"))

        # a broken version: fixed batch of 2 (the 2-row smoke test passes; single rows fail)
        broken_ref = delivery.ws.registry.register("tiny", broken_export(tiny_onnx(3.0))).ref
        broken = delivery.release(broken_ref, [c.device_id for c in conns], plan=plan)
        canary = {a["device_id"] for a in broken["assignments"] if a["stage"] == 0}
        statuses = drive(delivery, agents, broken["id"], ("rolled_back",))
        assert statuses[-1] == "rolled_back", statuses
        shown = rollout(delivery, broken["id"])
        moves = [(t["to_status"], t["actor"]) for t in shown["transitions"]]
        assert moves[1:] == [("halted", "auto"), ("rolling_back", "auto"), ("rolled_back", "auto")], moves
        assert "prediction error rate 1" in shown["transitions"][1]["reason"]
        assert shown["stages"][1]["published"] == 0  # nobody beyond the canary ever saw it
        by_id = {a["device_id"]: a for a in good["assignments"]}
        for conn, agent in zip(conns, agents, strict=True):
            assert_serves(agent, delivery, "tiny:2", by_id[conn.device_id]["bundle_id"])

        # a human rolls the good release back: everyone returns to tiny:1 through TUF, from the other slot
        r = delivery.plane.http(delivery.release_key).post(
            f"/v1/releases/{good['id']}/rollout/rollback", json={"reason": "numbers look off"}
        )
        assert r.status_code == 200 and r.json()["status"] == "rolling_back", r.text
        base_by_id = {a["device_id"]: a for a in base["assignments"]}
        for conn, agent in zip(conns, agents, strict=True):
            cycle = agent.run_once()
            # the previous bundle again: a slot switch with no download — except on the canary, whose
            # other slot now holds the broken bundle it refused, so it downloads tiny:1 again
            assert cycle.action == ("installed" if conn.device_id in canary else "rolled_back"), cycle
            assert_serves(agent, delivery, "tiny:1", base_by_id[conn.device_id]["bundle_id"])
        for agent in agents:
            agent.run_once()  # the next poll delivers any report that was queued
        assert rollout(delivery, good["id"])["status"] == "rolled_back"
        assert rollout(delivery, good["id"])["devices_back"] == 4
    finally:
        for agent in agents:
            agent.close()
