"""``tinymlops release`` as a user runs it: a staged release created with --stages, its status, and
promote / pause / resume / rollback recorded as ``cli:<login>``; bad input exits non-zero with a
message naming the problem and changes nothing. In this process (``invoke_cli``: the entry point under
typer's CliRunner); ``release create`` once through a real subprocess (the installed entry point must
really work)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from sqlalchemy import text

import delivery_world
from cli_process import invoke_cli, run_cli
from delivery_world import World

delivery = delivery_world.delivery  # the live world (fixture)


def _count(world: World, table: str) -> int:
    with world.ws.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_a_staged_release_is_driven_from_the_cli(delivery: World, tmp_path: Path) -> None:
    for i in range(4):
        delivery.connect(tmp_path / f"d{i}")
    ws = Path(delivery.ws.root)
    created = json.loads(
        run_cli(
            ws, "release", "create", "tiny:2", "--stages", "canary:0.25,all:1", "--min-reports", "2", "--json"
        ).stdout
    )
    rid = created["id"]
    assert created["rollout"] == {"status": "running", "stage": 0, "stage_name": "canary", "stages": 2}
    assert sorted(a["stage"] for a in created["assignments"]) == [0, 1, 1, 1]

    shown = invoke_cli(ws, "release", "status", rid).stdout
    assert "running at stage 0 'canary'" in shown and "canary" in shown and f"cli:{getpass.getuser()}" in shown
    invoke_cli(ws, "release", "pause", rid, "--reason", "looking at the canary")
    status = json.loads(invoke_cli(ws, "release", "status", rid, "--json").stdout)
    assert status["status"] == "paused" and status["transitions"][-1]["reason"] == "looking at the canary"

    refused = invoke_cli(ws, "release", "promote", rid, code=None)  # a paused rollout cannot be promoted
    assert refused.returncode != 0 and "cannot promote a paused rollout" in refused.stderr
    invoke_cli(ws, "release", "resume", rid)
    promoted = json.loads(invoke_cli(ws, "release", "promote", rid, "--json").stdout)
    assert (promoted["status"], promoted["stage"]) == ("running", 1)
    assert all(s["published"] == s["devices"] for s in promoted["stages"])
    back = json.loads(invoke_cli(ws, "release", "rollback", rid, "--reason", "bad numbers", "--json").stdout)
    assert back["status"] == "rolled_back" and back["devices_withdrawn"] == 4  # nobody had installed it
    actors = {t["actor"] for t in back["transitions"]}
    assert actors == {f"cli:{getpass.getuser()}", "auto"}


def test_bad_rollout_input_is_refused_with_a_clear_message(delivery: World, tmp_path: Path) -> None:
    delivery.connect(tmp_path / "d0")
    ws = Path(delivery.ws.root)
    bad_plan = tmp_path / "plan.toml"
    bad_plan.write_text('spec_version = "1.0"\n[[stages]]\nname = "all"\nfraction = 0.5\n')
    cases = [
        (("--stages", "canary=0.1"), "is not NAME:FRACTION"),
        (("--stages", "canary:x,all:1"), "is not a number"),
        (("--stages", "canary:0.5,wide:0.2,all:1"), "strictly increasing"),
        (("--stages", "canary:0.5"), "must cover the whole fleet"),
        (("--stages", "all:1", "--on-failure", "shrug"), "--on-failure"),
        (("--plan", str(bad_plan)), "must cover the whole fleet"),
        (("--plan", str(tmp_path / "missing.json")), "cannot read it"),
        (("--plan", str(bad_plan), "--stages", "all:1"), "either --stages or --plan"),
    ]
    for args, message in cases:
        proc = invoke_cli(ws, "release", "create", "tiny:1", *args, code=None)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (args, proc.stderr)
    assert _count(delivery, "releases") == 0 and _count(delivery, "rollouts") == 0
    missing = invoke_cli(ws, "release", "status", "0123456789abcdef", code=None)
    assert missing.returncode != 0 and "no release with id" in missing.stderr
