"""``tinymlops demo``: the main job, end to end on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tinymlops.cli.model import print_evaluation_table, print_lineage
from tinymlops.cli.output import JsonOpt, console, emit_json, err_console, table


def demo_cmd(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Workspace for the demo (created if missing).")
    ] = Path("tinymlops-demo"),
    mlperf_dir: Annotated[
        Path | None, typer.Option(help="Directory with the MLPerf Tiny .tflite files (default: found nearby).")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the control plane running at the end (Ctrl-C stops it).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run the whole life of real models end to end: register, derive, evaluate, check, select."""
    from tinymlops.demo.drift import since_iso
    from tinymlops.demo.flow import run_demo
    from tinymlops.workspace import Workspace

    if json_out:
        result = run_demo(workspace, mlperf_dir=mlperf_dir)
        emit_json(result.to_dict())
        if serve:
            _serve(result)
        return
    with console.status("tinymlops demo …") as status:
        result = run_demo(workspace, mlperf_dir=mlperf_dir, say=lambda m: status.update(m.strip()))
    console.rule("[bold]tinymlops demo")
    console.print(f"digits CNN fp32 test accuracy: {result.digits_fp32_accuracy:.3f}")
    ws = Workspace.open(result.workspace)
    for name, reg in result.registrations.items():
        console.rule(f"{name}")
        print_lineage(ws.registry.lineage(name, reg.base.version), name)
        print_evaluation_table(ws, ws.registry.artifacts(name, reg.base.version), f"Evaluation of {reg.base.ref}")
    checks = [c for c in result.checks if c["target"] in ("mcu-cortex-m7", "android-nnapi-phone")]
    table(
        "Target checks",
        ["variant", "target", "verdict", "issues", "est. latency ms"],
        [
            [
                c["ref"],
                c["target"],
                "ok" if c["compatible"] else "incompatible",
                "; ".join(i["message"] for i in c["issues"])[:160],
                "-" if c["estimated_latency_ms"] is None else f"{c['estimated_latency_ms']:.2f}",
            ]
            for c in checks
        ],
    )
    table(
        "Selection: best variant per device and moment",
        ["model", "target", "battery", "charging", "network", "prefer", "chosen"],
        [
            [
                s["model"],
                s["target"],
                s["context"]["battery"],
                s["context"]["charging"],
                s["context"]["network"],
                s["context"]["prefer"],
                s.get("chosen") or f"none: {s.get('error', '')[:80]}",
            ]
            for s in result.selections
        ],
    )

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    table(
        "Delivery: signed bundles, encrypted per device, opened in memory, run through their pipeline",
        ["device", "target", "variant", "bundle B", "open ms", "predictions", "accuracy", "= direct ORT", "p50 ms"],
        [
            [
                d.device_id,
                d.target,
                d.ref + (f" (escalated {pct(d.escalated)})" if d.escalated is not None else ""),
                f"{d.bundle_bytes:,}",
                f"{d.open_ms:.1f}",
                d.predictions,
                pct(d.accuracy),
                pct(d.agrees_with_direct),
                "-" if d.p50_ms is None else f"{d.p50_ms:.3f}",
            ]
            for d in result.devices
        ],
    )
    if result.fleet is not None:
        fleet = result.fleet
        table(
            f"Fleet: staged rollout of release {fleet.release_id} through the TUF repository of {fleet.server_url}",
            [
                "device",
                "profile",
                "variant selected",
                "stage",
                "agent",
                "install ms",
                "predictions",
                "accuracy",
                "= direct",
                "broken v2",
            ],
            [
                [
                    d.device_id,
                    d.profile,
                    d.ref or f"none: {d.reason[:60]}",
                    "-" if d.stage is None else d.stage,
                    d.status,
                    "-" if d.install_ms is None else f"{d.install_ms:.0f}",
                    d.predictions,
                    pct(d.accuracy),
                    pct(d.agrees_with_direct),
                    d.broken_release,
                ]
                for d in fleet.devices
            ],
        )
        for run in fleet.rollouts:
            table(
                f"Rollout of {run.requested} (release {run.release_id}): {run.status} after {run.rounds} rounds",
                ["from", "to", "stage", "actor", "reason"],
                [
                    [t["from_status"], t["to_status"], t["to_stage"], t["actor"], t["reason"][:110]]
                    for t in run.transitions
                ],
            )
        if fleet.drift is not None:
            drift = fleet.drift
            table(
                f"Drift: {drift.shifted_site} sees pixels {', '.join(drift.shifted_features)} shifted; "
                "what the server found from the devices' sketches",
                ["cohort", "verdict", "devices", "rows", "drifted input features", "derived", "prediction drift"],
                [
                    [
                        c.label,
                        c.verdict,
                        c.devices,
                        c.rows,
                        ", ".join(c.drifted_features) or "-",
                        len(c.drifted_derived) or "-",
                        ", ".join(c.prediction_drift) or "-",
                    ]
                    for c in drift.cohorts
                ],
            )
            a = drift.audit
            console.print(
                f"No raw input left a device: {a['windows']} uploaded windows ({a['bytes']:,} bytes) searched for the "
                f"{a['rows_checked']:,} input rows served — {a['rows_found']} found.  Report: "
                f"tinymlops drift report digits-cnn --since {since_iso(drift.since)} -w {result.workspace}",
                highlight=False,
            )
        if fleet.metering is not None:
            m = fleet.metering
            table(
                f"Pay per query: kiosk {m.device_id}, license {m.license_id[:8]}… of {m.prepaid} queries (offline)",
                ["step", "what happened"],
                [
                    ["offline", f"{m.offline_served} served, {m.offline_refused} refused on the device: {m.refusal}"],
                    [
                        "reconnect",
                        f"usage reported; top-up {m.top_up_id[:8]}… installed; {m.served_after_top_up} served",
                    ],
                    [
                        "copied state",
                        f"{m.clone_device_dir} ran beside the kiosk; server counts {m.reported_used} used",
                    ],
                    *[[f"flag: {f['kind']}", f"seq {f.get('seq')}: {str(f.get('detail', ''))[:100]}"] for f in m.flags],
                ],
            )
        console.print(
            f"Dashboard: {fleet.dashboard_url}  (log in with the demo operator key: {fleet.api_key})", highlight=False
        )
        for run in fleet.rollouts:
            console.print(
                f"  rollout of {run.requested}: {fleet.dashboard_url}/releases/{run.release_id}", highlight=False
            )
        console.print(f"  latency by device class: {fleet.dashboard_url}/latency", highlight=False)
        if fleet.drift is not None:
            console.print(f"  drift by site: {fleet.drift.dashboard_url}?by=tag", highlight=False)
            console.print(f"  telemetry by device class: {fleet.dashboard_url}/telemetry", highlight=False)
        if fleet.metering is not None:
            console.print(f"  licenses and clone flags: {fleet.dashboard_url}/licenses", highlight=False)
            console.print(f"  audit: tinymlops license audit -w {result.workspace}", highlight=False)
    console.print(f"Workspace: {result.workspace}  (try: tinymlops model lineage digits-cnn -w {result.workspace})")
    ws.close()
    if serve:
        _serve(result)


def _serve(result: Any) -> None:
    """Serve the demo's control plane again, on the port the demo used when it is still free."""
    from tinymlops.errors import OperationError
    from tinymlops.server.background import BackgroundServer
    from tinymlops.workspace import Workspace

    port = int(result.fleet.server_url.rsplit(":", 1)[1]) if result.fleet is not None else 0
    with Workspace.open(result.workspace) as ws:
        try:
            server = BackgroundServer(ws, port=port)
        except OperationError:
            server = BackgroundServer(ws)
        with server:
            err_console.print(f"control plane on {server.url} (workspace {ws.root}) — Ctrl-C stops it", highlight=False)
            server.wait()
