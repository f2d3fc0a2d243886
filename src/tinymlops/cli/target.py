"""``tinymlops target …``: the device profile catalog and the compatibility check."""

from __future__ import annotations

from typing import Annotated

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_bytes, table
from tinymlops.targets.compat import check_compatibility
from tinymlops.workspace import Workspace

app = typer.Typer(help="Device profiles and compatibility checks.", no_args_is_help=True)


@app.command("list")
def list_targets(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List device profiles (built-in and the workspace's targets/*.toml)."""
    ws = Workspace.open(workspace)
    profiles = ws.targets.all()
    if json_out:
        emit_json([p.to_dict() for p in profiles])
        return
    table(
        "Device profiles",
        ["name", "class", "backends", "dtypes", "operators", "RAM", "storage", "compute×", "active W", "idle W"],
        [
            [
                p.name,
                p.device_class,
                ",".join(p.backends),
                ",".join(p.dtypes),
                p.onnx_operator_table or ("listed" if p.onnx_operators or p.tflite_operators else "all"),
                f"{p.ram_mb:g} MiB",
                f"{p.storage_mb:g} MiB",
                f"{p.relative_compute:g}",
                p.active_power_w,
                p.idle_power_w,
            ]
            for p in profiles
        ],
    )


@app.command("show")
def show_target(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one device profile."""
    ws = Workspace.open(workspace)
    p = ws.targets.get(name)
    if json_out:
        emit_json(p.to_dict())
        return
    table(p.name, ["field", "value"], [[k, v] for k, v in p.to_dict().items()])


@app.command("check")
def check(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION][/VARIANT]")],
    target: Annotated[str, typer.Argument(help="Device profile name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Report every unsupported operator, dtype, memory or storage overflow, and an estimated latency."""
    ws = Workspace.open(workspace)
    profile = ws.targets.get(target)
    a = ws.registry.resolve(ref)
    ev = ws.registry.latest_evaluation(a.id)
    host_ms = ev.metrics.get("latency_ms_p50") if ev else None
    report = check_compatibility(a.info, a.size_bytes, profile, host_latency_ms=host_ms)
    if json_out:
        emit_json({"ref": a.ref, **report.to_dict()})
    else:
        verdict = "[green]compatible[/]" if report.compatible else f"[red]incompatible[/] ({len(report.issues)} issues)"
        console.print(f"{a.ref} on {profile.name}: {verdict}")
        if report.issues:
            table(None, ["kind", "subject", "problem"], [[i.kind, i.subject, i.message] for i in report.issues])
        est = report.estimated_latency_ms
        console.print(
            f"RAM needed ≈ {fmt_bytes(report.ram_needed_bytes)} ({report.ram_basis}); "
            f"storage {fmt_bytes(report.storage_needed_bytes)}"
        )
        console.print(
            f"estimated latency: {est:.3f} ms ({report.latency_basis})"
            if est is not None
            else "estimated latency: unknown (not evaluated on this host yet)"
        )
        for op, note in report.caveats.items():
            console.print(f"[yellow]caveat[/] {op}: {note}", highlight=False)
    if not report.compatible:
        raise typer.Exit(1)
