"""``tinymlops dataset …``: attach .npz eval/calibration sets to a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tinymlops.cli.model import read_file
from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_bytes, table
from tinymlops.workspace import Workspace

app = typer.Typer(
    help="Datasets (.npz with x and optional y) used for calibration and evaluation.", no_args_is_help=True
)


@app.command("add")
def add(
    model: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[Path, typer.Argument(help=".npz file with 'x' (samples first) and optional 'y' labels.")],
    name: Annotated[str, typer.Option(help="Dataset name.")] = "eval",
    role: Annotated[str, typer.Option(help="eval or calibration.")] = "eval",
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register a dataset for MODEL; it must fit the model's input."""
    ws = Workspace.open(workspace)
    record = ws.registry.add_dataset(model, name, read_file(file, "dataset"), role=role)
    reference = _reference_for_new_dataset(ws, model, record.name)
    if json_out:
        emit_json({**record.to_dict(), "reference": reference})
    else:
        console.print(f"Added dataset {record.name} ({record.role}, {record.n_samples} samples) to {model}")
        if reference is not None:
            console.print(f"  drift reference profile of {model}:{reference['version']}: {reference['status']}")


def _reference_for_new_dataset(ws: Workspace, model: str, dataset: str) -> dict[str, object] | None:
    """The latest version's drift reference profile from the new dataset, when it has none yet (an
    existing reference is kept: `tinymlops drift reference build --dataset` replaces it)."""
    from tinymlops.observe.references import ReferenceService

    service = ReferenceService(ws.engine, ws.registry)
    if service.get(model) is not None:
        return None
    attempt = service.try_build(model, dataset=dataset)
    if attempt is None:  # not after adding one; kept for the type
        return None
    built = attempt.record
    if built is None:
        return {"version": attempt.version, "status": f"failed: {attempt.error}"}
    return {"version": built.version, "status": f"built from '{built.dataset}' ({built.rows} rows)"}


@app.command("list")
def list_datasets(
    model: Annotated[str, typer.Argument(help="Model name.")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List a model's datasets."""
    ws = Workspace.open(workspace)
    records = ws.registry.datasets(model)
    if json_out:
        emit_json([r.to_dict() for r in records])
        return
    table(
        f"Datasets of {model}",
        ["name", "role", "samples", "x shape", "labels", "size", "sha256"],
        [
            [r.name, r.role, r.n_samples, list(r.x_shape), r.has_labels, fmt_bytes(r.size_bytes), r.sha256[:12]]
            for r in records
        ],
    )
