"""Rollouts over HTTP: a release created with a plan is published stage by stage; ``GET
/v1/releases/{id}/rollout`` shows it (scope ``read``); ``POST …/rollout/{action}`` acts on it (scope
``release``), recorded with the API key's id; an action the state does not allow is a 409 JSON error;
a bad plan is a 4xx naming the problem and creates nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import delivery_world
from delivery_world import World
from live_server import error_of

delivery = delivery_world.delivery  # the live world (fixture)

PLAN = {
    "spec_version": "1.0",
    "on_failure": "halt",
    "stages": [{"name": "canary", "fraction": 0.25, "health": {"min_reports": 1}}, {"name": "all", "fraction": 1.0}],
}


def _count(world: World, table: str) -> int:
    with world.ws.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_a_rollout_is_shown_and_driven_over_http(delivery: World, tmp_path: Path) -> None:
    devices = [delivery.connect(tmp_path / f"d{i}").device_id for i in range(4)]
    created = delivery.release("tiny:1", plan=PLAN)
    rid = created["id"]
    assert created["rollout"]["status"] == "running" and sorted(a["stage"] for a in created["assignments"]) == [
        0,
        1,
        1,
        1,
    ]
    reader = delivery.plane.http(delivery.read_key)
    releaser = delivery.plane.http(delivery.release_key)
    shown = reader.get(f"/v1/releases/{rid}/rollout").json()
    assert [s["published"] for s in shown["stages"]] == [1, 0] and shown["plan"]["on_failure"] == "halt"

    assert reader.post(f"/v1/releases/{rid}/rollout/promote").status_code == 403  # read scope only
    r = releaser.post(f"/v1/releases/{rid}/rollout/pause", json={"reason": "lunch"})
    assert r.status_code == 200 and r.json()["status"] == "paused"
    r = releaser.post(f"/v1/releases/{rid}/rollout/promote")
    assert r.status_code == 409 and error_of(r)["type"] == "RolloutTransitionError"
    assert "cannot promote a paused rollout" in error_of(r)["message"]
    releaser.post(f"/v1/releases/{rid}/rollout/resume")
    done = releaser.post(f"/v1/releases/{rid}/rollout/promote").json()
    assert (done["status"], done["stage"]) == ("running", 1) and done["stages"][1]["published"] == 3
    key_id = delivery.release_key.split("_")[1]
    assert [t["actor"] for t in done["transitions"][1:]] == [f"api-key:{key_id}"] * 3
    assert done["transitions"][1]["reason"] == "lunch"
    listed = reader.get("/v1/releases").json()[0]
    assert listed["rollout"] == {"status": "running", "stage": 1, "stage_name": "all", "stages": 2}
    assert len(devices) == 4


@pytest.mark.parametrize(
    ("plan", "status", "needle"),
    [
        ({**PLAN, "stages": [{"name": "all", "fraction": 0.5}]}, 400, "must cover the whole fleet"),
        ({**PLAN, "stages": [{"name": "a", "fraction": 0.5}, {"name": "b", "fraction": 0.2}]}, 400, "increasing"),
        ({**PLAN, "stages": []}, 422, ""),
        ({**PLAN, "on_failure": "pray"}, 422, ""),
        ({**PLAN, "stages": [{"name": "Bad Name", "fraction": 1.0}]}, 422, ""),
        ({**PLAN, "stages": [{"name": "all", "fraction": 1.0, "health": {"max_error_rate": 2}}]}, 422, ""),
        ({**PLAN, "surprise": True}, 422, ""),
    ],
)
def test_a_bad_plan_is_refused_and_creates_nothing(
    delivery: World, tmp_path: Path, plan: dict[str, Any], status: int, needle: str
) -> None:
    delivery.connect(tmp_path / "d0")
    r = delivery.plane.http(delivery.release_key).post("/v1/releases", json={"model": "tiny:1", "plan": plan})
    assert r.status_code == status, r.text
    assert needle in error_of(r)["message"]
    assert _count(delivery, "releases") == 0 and _count(delivery, "rollouts") == 0


def test_rollout_routes_answer_404_and_422(delivery: World) -> None:
    reader = delivery.plane.http(delivery.read_key)
    releaser = delivery.plane.http(delivery.release_key)
    assert error_of(reader.get("/v1/releases/0123456789abcdef/rollout"))["type"] == "NotFoundError"
    assert releaser.post("/v1/releases/0123456789abcdef/rollout/promote").status_code == 404
    assert releaser.post("/v1/releases/0123456789abcdef/rollout/explode").status_code == 422
    assert releaser.post("/v1/releases/0123456789abcdef/rollout/pause", json={"reason": ""}).status_code == 422
