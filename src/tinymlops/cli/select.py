"""``tinymlops select NAME --target T``: the best variant for a device and its moment."""

from __future__ import annotations

from typing import Annotated

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, table
from tinymlops.spec.context import DeviceContext
from tinymlops.targets.registry_candidates import candidates_for
from tinymlops.targets.selection import select_variant
from tinymlops.workspace import Workspace


def select_cmd(
    name: Annotated[str, typer.Argument(help="Model NAME[:VERSION] (latest version by default).")],
    target: Annotated[str, typer.Option("--target", "-T", help="Device profile name.")],
    battery: Annotated[float, typer.Option(min=0.0, max=1.0, help="State of charge, 0..1.")] = 1.0,
    charging: Annotated[bool, typer.Option("--charging/--not-charging")] = False,
    network: Annotated[str, typer.Option(help="wifi | cellular | offline")] = "wifi",
    bandwidth_kbps: Annotated[float | None, typer.Option(help="Link bandwidth in kbit/s.")] = None,
    prefer: Annotated[str, typer.Option(help="balanced | accuracy | latency | energy | download")] = "balanced",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pick the best compatible variant for TARGET in this context, and say why each other lost."""
    context = DeviceContext(
        battery=battery, charging=charging, network=network, bandwidth_kbps=bandwidth_kbps, prefer=prefer
    )
    ws = Workspace.open(workspace)
    profile = ws.targets.get(target)
    _, candidates = candidates_for(ws.registry, name)
    selection = select_variant(candidates, profile, context)
    if json_out:
        emit_json(selection.to_dict())
        return
    console.print(f"Selected [bold green]{selection.chosen.ref}[/] for {profile.name} ({context.to_dict()})")
    table(
        "Why the others lost",
        ["variant", "reason"],
        [[ref, why] for ref, why in selection.explanations.items() if ref != selection.chosen.ref],
    )
