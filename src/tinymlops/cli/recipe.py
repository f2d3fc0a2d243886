"""``tinymlops recipe list``: the recipe plug-ins and the steps the workspace configures."""

from __future__ import annotations

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, emit_json, table
from tinymlops.optimize.base import available_recipes
from tinymlops.workspace import Workspace

app = typer.Typer(help="Optimization recipes.", no_args_is_help=True)


@app.command("list")
def list_recipes(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List recipe plug-ins, and the configured steps and chains when run in a workspace."""
    plugins = available_recipes()
    data: dict[str, object] = {
        "recipes": [
            {"name": n, "summary": c.summary, "input_formats": list(c.input_formats), "defaults": dict(c.defaults)}
            for n, c in plugins.items()
        ]
    }
    ws = None
    try:
        ws = Workspace.open(workspace)
    except Exception:
        ws = None
    if ws is not None:
        data["steps"] = {s.name: {"recipe": s.recipe, "params": dict(s.params)} for s in ws.config.steps.values()}
        data["default_chains"] = list(ws.config.default_chains)
        data["target_chains"] = {k: list(v) for k, v in ws.config.target_chains.items()}
    if json_out:
        emit_json(data)
        return
    table(
        "Recipe plug-ins",
        ["name", "reads", "defaults", "summary"],
        [[n, ",".join(c.input_formats), dict(c.defaults), c.summary] for n, c in plugins.items()],
    )
    if ws is not None:
        table(
            "Configured steps (tinymlops.toml)",
            ["step", "recipe", "params"],
            [[s.name, s.recipe, dict(s.params)] for s in ws.config.steps.values()],
        )
        table(
            "Chains",
            ["applies to", "chains"],
            [["every model", ", ".join(ws.config.default_chains)]]
            + [[f"target {t}", ", ".join(c)] for t, c in ws.config.target_chains.items()],
        )
