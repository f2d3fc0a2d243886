"""``tinymlops release …``: create, list and show releases on the workspace, and drive their staged
rollouts (status, promote, pause, resume, rollback — each recorded as ``cli:<login name>``). No
server is needed: a running server serves what this writes (the database and repository are shared)
and moves rollouts on as devices report."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, parse_pairs, table
from tinymlops.errors import SpecError, UsageError

app = typer.Typer(
    help="Releases: a variant per device, bundles encrypted to each, published via TUF.", no_args_is_help=True
)


def _assignment_rows(doc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for a in doc["assignments"]:
        report = a.get("latest_report") or {}
        rows.append(
            [
                a["device_id"],
                a["profile"],
                "-" if a.get("stage") is None else a["stage"],
                a["status"] if not a.get("withdrawn_at") else "withdrawn",
                a["ref"] or "-",
                (a["bundle_id"] or "-")[:12],
                report.get("status", "-"),
                a["reason"][:80] or "-",
            ]
        )
    return rows


def _show(doc: dict[str, Any]) -> None:
    rollout = doc.get("rollout")
    where = "" if rollout is None else f"; rollout {rollout['status']} at stage {rollout['stage_name']}"
    console.print(
        f"release [bold]{doc['id']}[/] of {doc['requested']}: {doc['status']}, "
        f"{doc['published']} assigned, {doc['skipped']} skipped (snapshot {doc['snapshot_version']}){where}",
        highlight=False,
    )
    console.print(f"telemetry: {_telemetry_text(doc.get('telemetry'))}", highlight=False)
    metering = doc.get("metering")
    if metering:
        console.print(
            f"metering: pay per query under a license for '{metering['model']}' "
            f"(reservations of {metering['block']} calls)",
            highlight=False,
        )
    table(None, ["device", "profile", "stage", "status", "ref", "bundle", "installed", "reason"], _assignment_rows(doc))


def _telemetry_text(table: dict[str, Any] | None) -> str:
    """One line for the telemetry policy a release's bundles carry."""
    if table is None:
        return "not recorded"
    if not table.get("enabled"):
        return "off"
    parts = ["on"]
    if table.get("inputs", True):
        what = f"inputs profiled (k {table.get('sketch_k')}, up to {table.get('max_features')} features"
        what += f", {table.get('projection_dims')} projections"
        if table.get("classes") is not None:
            what += f", {table['classes']} classes from '{table.get('output')}'"
        parts.append(what + ")")
    else:
        parts.append("performance only")
    privacy = table.get("privacy") or {}
    if privacy:
        parts.append("privacy " + ", ".join(f"{k}={v:g}" for k, v in privacy.items()))
    else:
        parts.append("exact histograms")
    return "; ".join(parts)


def _telemetry_options(enabled: bool, inputs: bool | None, privacy: list[str] | None) -> dict[str, Any] | None:
    """--no-telemetry, --[no-]telemetry-inputs and --privacy KEY=VALUE as release telemetry options."""
    if not enabled:
        if inputs is not None or privacy:
            raise UsageError("--no-telemetry turns telemetry off: --telemetry-inputs and --privacy do not apply")
        return {"enabled": False}
    if inputs is None and not privacy:
        return None
    options: dict[str, Any] = {}
    if inputs is not None:
        options["inputs"] = inputs
    settings: dict[str, float] = {}
    for key, value in parse_pairs(privacy, "--privacy", example="classes_epsilon=1.0").items():
        try:
            settings[key] = float(value)
        except ValueError:
            raise UsageError(f"--privacy: the value of {key} is not a number: {value.strip()!r}") from None
    if settings:
        options["privacy"] = settings
    return options


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show_rollout(doc: dict[str, Any]) -> None:
    console.print(
        f"rollout of release [bold]{doc['release_id']}[/]: {doc['status']} at stage {doc['stage']} "
        f"'{doc['stage_name']}' since {_when(doc['stage_started_at'])} (on failure: {doc['plan']['on_failure']})",
        highlight=False,
    )
    table(
        "stages",
        ["#", "stage", "fraction", "devices", "published", "installed", "failed", "reached"],
        [
            [
                p["index"],
                p["name"],
                p["fraction"],
                p["devices"],
                p["published"],
                p["installed"],
                p["failed"],
                "yes" if p["reached"] else "no",
            ]
            for p in doc["stages"]
        ],
    )
    health = doc.get("health")
    if health:
        table(
            "health of the stages reached",
            list(health),
            [[health[k] if health[k] is not None else "-" for k in health]],
        )
    verdict = doc.get("verdict")
    if verdict:
        console.print(f"last verdict: {verdict['decision']} — {verdict['reason']}", highlight=False)
    if doc.get("devices_withdrawn"):
        console.print(f"devices back on their previous bundle: {doc['devices_back']}/{doc['devices_withdrawn']}")
    table(
        "transitions",
        ["at", "from", "to", "stage", "actor", "reason"],
        [
            [_when(t["at"]), t["from_status"], t["to_status"], t["to_stage"], t["actor"], t["reason"][:100]]
            for t in doc["transitions"]
        ],
    )


def _parse_stages(spec: str, on_failure: str, min_reports: int, soak_s: float) -> dict[str, Any]:
    """``canary:0.05,wide:0.25,all:1`` -> a rollout plan document."""
    stages = []
    for part in spec.split(","):
        name, sep, fraction = part.strip().partition(":")
        if not sep:
            raise UsageError(f"--stages: '{part.strip()}' is not NAME:FRACTION (e.g. canary:0.05,all:1)")
        try:
            value = float(fraction)
        except ValueError:
            raise UsageError(f"--stages: the fraction of '{name}' is not a number: {fraction!r}") from None
        stages.append({"name": name, "fraction": value, "health": {"min_reports": min_reports, "min_soak_s": soak_s}})
    return {"spec_version": "1.0", "on_failure": on_failure, "stages": stages}


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--plan {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(
            f"--plan {path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise SpecError(f"--plan {path}: a rollout plan is an object/table, got {type(data).__name__}")
    return data


@app.command("create")
def create_cmd(
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (selected per device) or NAME:VERSION/VARIANT.")],
    device: Annotated[list[str] | None, typer.Option("--device", help="A device id (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with this tag (repeatable).")] = None,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Only devices of this profile (repeatable).")
    ] = None,
    urgent: Annotated[bool, typer.Option("--urgent", help="Devices may download it on metered networks.")] = False,
    stages: Annotated[
        str | None,
        typer.Option("--stages", help="Roll out in stages, e.g. canary:0.05,wide:0.25,all:1 (default: all at once)."),
    ] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A rollout plan file (JSON or .toml; tinymlops.spec.rollout).")
    ] = None,
    on_failure: Annotated[
        str, typer.Option("--on-failure", help="With --stages: rollback (default) or halt when a stage fails.")
    ] = "rollback",
    min_reports: Annotated[
        int, typer.Option("--min-reports", min=1, help="With --stages: install reports before a stage is judged.")
    ] = 1,
    soak: Annotated[
        float, typer.Option("--soak", min=0.0, help="With --stages: seconds a stage runs before it may pass.")
    ] = 0.0,
    telemetry: Annotated[
        bool,
        typer.Option(
            "--telemetry/--no-telemetry", help="Devices record telemetry for these bundles (default) or nothing."
        ),
    ] = True,
    telemetry_inputs: Annotated[
        bool | None,
        typer.Option(
            "--telemetry-inputs/--no-telemetry-inputs",
            help="Profile inputs (sketches and histograms, never raw data; default) or performance only.",
            show_default=False,
        ),
    ] = None,
    privacy: Annotated[
        list[str] | None,
        typer.Option(
            "--privacy",
            help="Local differential privacy, KEY=VALUE (repeatable): classes_epsilon, confidence_epsilon, "
            "window_epsilon, day_epsilon.",
        ),
    ] = None,
    metered: Annotated[
        bool,
        typer.Option(
            "--metered",
            help="Pay per query: devices serve these bundles only under a prepaid license "
            "(tinymlops license issue), enforced offline.",
        ),
    ] = False,
    metering_block: Annotated[
        int | None,
        typer.Option(
            "--metering-block", min=1, max=1 << 20, help="With --metered: calls per durable reservation (default 64)."
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Select a variant per device, build a bundle encrypted to each and publish them through TUF —
    to every device at once, or stage by stage with --stages / --plan. Every bundle carries a
    telemetry policy: on by default (--no-telemetry, --no-telemetry-inputs, --privacy KEY=VALUE);
    with --metered, a metering policy too (pay per query under a license)."""
    from tinymlops.release.rollouts import cli_actor
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    if stages is not None and plan is not None:
        raise UsageError("give either --stages or --plan, not both")
    if on_failure not in ("rollback", "halt"):
        raise UsageError(f"--on-failure must be 'rollback' or 'halt', got {on_failure!r}")
    plan_doc = _read_plan(plan) if plan is not None else None
    if stages is not None:
        plan_doc = _parse_stages(stages, on_failure, min_reports, soak)
    telemetry_doc = _telemetry_options(telemetry, telemetry_inputs, privacy)
    if metering_block is not None and not metered:
        raise UsageError("--metering-block applies only with --metered")
    metering_doc = None if not metered else ({} if metering_block is None else {"block": metering_block})
    with Workspace.open(workspace) as ws:
        record = ReleaseService(ws).create_release(
            model,
            devices=device or None,
            tags=tag or (),
            profiles=profile or (),
            urgent=urgent,
            created_by=cli_actor(),
            plan=plan_doc,
            telemetry=telemetry_doc,
            metering=metering_doc,
        )
        doc = record.to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show(doc)


@app.command("list")
def list_cmd(
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1, max=1000)] = 50,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List releases, newest first."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        docs = [r.to_dict(assignments=False) for r in ReleaseService(ws).list_releases(limit=limit)]
    if json_out:
        emit_json(docs)
        return
    table(
        "releases",
        ["id", "requested", "status", "published", "skipped", "urgent", "created"],
        [[d[k] for k in ("id", "requested", "status", "published", "skipped", "urgent", "created_at")] for d in docs],
    )


@app.command("show")
def show_cmd(
    release_id: Annotated[str, typer.Argument(help="The release id.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A release with each device's assignment and its latest install report."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        doc = ReleaseService(ws).get_release(release_id).to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show(doc)


@app.command("status")
def status_cmd(
    release_id: Annotated[str, typer.Argument(help="The release id.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A release's rollout: its state, each stage's progress, the health reported and every transition."""
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        doc = ReleaseService(ws).rollouts.status(release_id).to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show_rollout(doc)


def _act(action: str, release_id: str, reason: str | None, workspace: Path | None, json_out: bool) -> None:
    from tinymlops.release.rollouts import cli_actor
    from tinymlops.release.service import ReleaseService
    from tinymlops.workspace import Workspace

    with Workspace.open(workspace) as ws:
        rollouts = ReleaseService(ws).rollouts
        doc = getattr(rollouts, action)(release_id, actor=cli_actor(), reason=reason).to_dict()
    if json_out:
        emit_json(doc)
    else:
        _show_rollout(doc)


ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (recorded with the transition).")]
ReleaseIdArg = Annotated[str, typer.Argument(help="The release id.")]


@app.command("promote")
def promote_cmd(
    release_id: ReleaseIdArg, reason: ReasonOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Move the rollout to its next stage (or complete it) without waiting for the health verdict."""
    _act("promote", release_id, reason, workspace, json_out)


@app.command("pause")
def pause_cmd(
    release_id: ReleaseIdArg, reason: ReasonOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Hold the rollout at its stage: no promotion and no automatic verdicts until resumed."""
    _act("pause", release_id, reason, workspace, json_out)


@app.command("resume")
def resume_cmd(
    release_id: ReleaseIdArg, reason: ReasonOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Continue a paused or halted rollout (the stage's soak starts again)."""
    _act("resume", release_id, reason, workspace, json_out)


@app.command("rollback")
def rollback_cmd(
    release_id: ReleaseIdArg, reason: ReasonOpt = None, workspace: WorkspaceOpt = None, json_out: JsonOpt = False
) -> None:
    """Withdraw the release: every device it reached is offered its previous bundle again."""
    _act("rollback", release_id, reason, workspace, json_out)
