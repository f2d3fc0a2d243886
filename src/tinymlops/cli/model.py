"""``tinymlops model …``: register, list, show, lineage, export, derive, evaluate."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.tree import Tree

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_bytes, fmt_num, fmt_pct, table
from tinymlops.errors import InvalidModelError, UsageError
from tinymlops.optimize.derivation import derive_variants
from tinymlops.optimize.evaluation import evaluate
from tinymlops.optimize.pipeline import register_model
from tinymlops.registry.records import ArtifactRecord, LineageNode
from tinymlops.registry.refs import parse_ref
from tinymlops.workspace import Workspace

app = typer.Typer(help="Register models and inspect their versions, variants and lineage.", no_args_is_help=True)


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} path is a directory, not a file: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from exc


def _recipe_text(a: ArtifactRecord) -> str:
    return _recipe_label(a.recipe_data)


def evaluation_rows(ws: Workspace, artifacts: list[ArtifactRecord]) -> list[dict[str, Any]]:
    evals = ws.registry.evaluations(a.id for a in artifacts)
    rows = []
    for a in artifacts:
        m = evals[a.id][-1].metrics if evals.get(a.id) else {}
        rows.append({"ref": a.ref, "format": a.format, "recipe": _recipe_text(a), "target": a.target, **m})
    return rows


def print_evaluation_table(ws: Workspace, artifacts: list[ArtifactRecord], title: str) -> None:
    rows = evaluation_rows(ws, artifacts)
    table(
        title,
        ["variant", "format", "size", "size×", "accuracy", "agreement", "p50 ms", "p95 ms", "peak mem", "note"],
        [
            [
                r["ref"],
                r["format"],
                fmt_bytes(r.get("size_bytes")),
                fmt_num(r.get("size_ratio"), 2),
                fmt_pct(r.get("accuracy")),
                fmt_pct(r.get("agreement")),
                fmt_num(r.get("latency_ms_p50"), 3),
                fmt_num(r.get("latency_ms_p95"), 3),
                fmt_bytes(r.get("peak_memory_bytes")),
                r.get("error") or (f"target {r['target']}" if r.get("target") else ""),
            ]
            for r in rows
        ],
    )


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    file: Annotated[Path, typer.Argument(help="ONNX or TFLite file.")],
    dataset: Annotated[
        Path | None, typer.Option("--dataset", "-d", help=".npz eval set (x, optional y) registered with it.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Free-form tag (repeatable).")] = None,
    source: Annotated[str | None, typer.Option(help="Where the model came from (default: the file path).")] = None,
    description: Annotated[str, typer.Option(help="Model description.")] = "",
    derive: Annotated[bool, typer.Option("--derive/--no-derive", help="Derive the configured variants.")] = True,
    evaluate_: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Evaluate base and variants.")] = True,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Register FILE as a new base version of NAME, derive its variants and evaluate them."""
    ws = Workspace.open(workspace)
    data = read_file(file, "model")
    ds = read_file(dataset, "dataset") if dataset else None
    if json_out:
        result = register_model(
            ws,
            name,
            data,
            source=source or str(file.resolve()),
            tags=tag or (),
            description=description,
            dataset=ds,
            derive=derive,
            run_evaluation=evaluate_,
        )
        emit_json(result.to_dict())
        return
    with console.status(f"registering {name} …") as status:
        result = register_model(
            ws,
            name,
            data,
            source=source or str(file.resolve()),
            tags=tag or (),
            description=description,
            dataset=ds,
            derive=derive,
            run_evaluation=evaluate_,
            progress=lambda msg: status.update(msg.strip()),
        )
    console.print(f"Registered [bold]{result.base.ref}[/] ({result.base.format}, {fmt_bytes(result.base.size_bytes)})")
    for d in result.derivations:
        colour = {"succeeded": "green", "existing": "cyan", "failed": "red", "skipped": "yellow"}[d.status]
        console.print(
            f"  [{colour}]{d.status:9}[/] {d.variant}" + (f" — {d.error}" if d.error else ""), highlight=False
        )
    if evaluate_:
        arts = ws.registry.artifacts(name, result.base.version)
        print_evaluation_table(ws, arts, f"Evaluation of {name}:{result.base.version}")


@app.command("list")
def list_models(workspace: WorkspaceOpt = None, json_out: JsonOpt = False) -> None:
    """List registered models."""
    ws = Workspace.open(workspace)
    models = ws.registry.list_models()
    if json_out:
        emit_json([m.to_dict() for m in models])
        return
    table(
        "Models",
        ["name", "versions", "latest", "variants", "failed recipes", "formats", "description"],
        [
            [m.name, m.versions, m.latest_version, m.variants, m.failed_derivations, ",".join(m.formats), m.description]
            for m in models
        ],
    )


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION][/VARIANT]")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one base version or variant: signature, operators, size, recipe, evaluation."""
    ws = Workspace.open(workspace)
    a = ws.registry.resolve(ref)
    ev = ws.registry.latest_evaluation(a.id)
    derivations = [d for d in ws.registry.derivations(a.model, a.version) if d.parent_id == a.id]
    if json_out:
        emit_json(
            {
                **a.to_dict(),
                "evaluation": ev.to_dict() if ev else None,
                "derivations": [d.to_dict() for d in derivations],
            }
        )
        return
    info = a.info
    rows: list[list[Any]] = [
        ["ref", a.ref],
        ["format", a.format + (f" (opset {info.opset})" if info.opset else "")],
        ["sha256", a.sha256],
        ["size", fmt_bytes(a.size_bytes)],
        ["parameters", f"{info.parameters:,}"],
        ["MACs (estimate)", f"{info.macs:,}"],
        ["peak activations (estimate)", fmt_bytes(info.peak_activation_bytes)],
        ["weights", f"{fmt_bytes(info.weight_bytes)} ({', '.join(info.weight_dtypes)})"],
        ["inputs", "; ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in info.inputs)],
        ["outputs", "; ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in info.outputs)],
        ["operators", ", ".join(f"{k}×{v}" for k, v in sorted(info.operators.items()))],
        ["recipe", _recipe_text(a)],
        ["target", a.target or "-"],
        ["source", a.source],
        ["tags", ", ".join(a.tags) or "-"],
    ]
    if ev:
        m = ev.metrics
        rows += [
            ["evaluated on", f"{ev.dataset} ({m.get('samples')} samples) on {ev.host}"],
            ["accuracy / agreement", f"{fmt_pct(m.get('accuracy'))} / {fmt_pct(m.get('agreement'))}"],
            ["latency p50 / p95", f"{fmt_num(m.get('latency_ms_p50'))} / {fmt_num(m.get('latency_ms_p95'))} ms"],
            ["peak memory", fmt_bytes(m.get("peak_memory_bytes"))],
        ]
        if m.get("error"):
            rows.append(["evaluation error", m["error"]])
    for d in derivations:
        if d.status != "succeeded":
            rows.append([f"derivation {d.variant}", f"{d.status}: {d.error}"])
    table(a.ref, ["field", "value"], rows)


def _recipe_label(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "base"
    params = ", ".join(f"{k}={v}" for k, v in sorted(recipe.get("params", {}).items()))
    return f"{recipe.get('recipe')}({params})"


def _node_label(node: LineageNode) -> str:
    recipe = node.recipe
    if node.status != "ready":
        return f"[red]✗ {node.ref}[/]  {(recipe or {}).get('recipe')} — {node.status}: {node.error}"
    parts = [f"[bold]{node.ref}[/]", _recipe_label(recipe), node.format or "", fmt_bytes(node.size_bytes)]
    if node.target:
        parts.append(f"target={node.target}")
    metrics = node.metrics
    if "accuracy" in metrics:
        parts.append(f"acc {fmt_pct(metrics['accuracy'])}")
    if "agreement" in metrics and node.parent_id is not None:
        parts.append(f"agree {fmt_pct(metrics['agreement'])}")
    if "latency_ms_p50" in metrics:
        parts.append(f"p50 {metrics['latency_ms_p50']:.3f} ms")
    if "error" in metrics:
        parts.append(f"[red]does not run here: {metrics['error']}[/]")
    return "  ".join(parts)


def print_lineage(forest: list[LineageNode], name: str) -> None:
    root = Tree(f"[bold]{name}[/]")

    def add(tree: Tree, node: LineageNode) -> None:
        branch = tree.add(_node_label(node), highlight=False)
        for child in node.children:
            add(branch, child)

    for node in forest:
        add(root, node)
    console.print(root)


@app.command("lineage")
def lineage(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option(help="Only this base version.")] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the lineage tree: base versions, their variants, variants of variants, with recipes."""
    ws = Workspace.open(workspace)
    forest = ws.registry.lineage(parse_ref(name).name, version)
    if json_out:
        emit_json([n.to_dict() for n in forest])
        return
    print_lineage(forest, name)


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION][/VARIANT]")],
    out: Annotated[Path, typer.Argument(help="Output file.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the model bytes of REF to OUT (verified against the registered sha256)."""
    ws = Workspace.open(workspace)
    a = ws.registry.resolve(ref)
    data = ws.registry.read_bytes(a)  # verifies the hash
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite")
    if out.is_dir():
        raise UsageError(f"{out} is a directory")
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=".tinymlops-export-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    result = {"ref": a.ref, "path": str(out), "sha256": a.sha256, "size_bytes": a.size_bytes, "format": a.format}
    if json_out:
        emit_json(result)
    else:
        console.print(f"Exported {a.ref} ({a.format}, {fmt_bytes(a.size_bytes)}) to {out}")


@app.command("derive")
def derive(
    ref: Annotated[str, typer.Argument(help="Base version NAME[:VERSION] (default: latest).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """(Re-)run the configured recipe chains for a base version; existing variants are kept."""
    ws = Workspace.open(workspace)
    base = ws.registry.resolve(ref)
    if not base.is_base:
        raise InvalidModelError(f"{base.ref} is a variant; derive from a base version")
    outcomes = derive_variants(ws.registry, ws.config, base)
    new = [o.artifact for o in outcomes if o.status == "succeeded" and o.artifact]
    if new:
        evaluate(ws.registry, base, new, ws.config.evaluation)
    if json_out:
        emit_json([o.to_dict() for o in outcomes])
        return
    table(
        f"Derivations of {base.ref}", ["variant", "status", "error"], [[o.variant, o.status, o.error] for o in outcomes]
    )


@app.command("evaluate")
def evaluate_cmd(
    ref: Annotated[str, typer.Argument(help="Base version NAME[:VERSION] (default: latest).")],
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-evaluate a base version and all its variants on this host (e.g. after adding a dataset)."""
    ws = Workspace.open(workspace)
    base = ws.registry.resolve(ref)
    if not base.is_base:
        raise UsageError(f"{base.ref} is a variant; evaluate its base version")
    artifacts = ws.registry.artifacts(base.model, base.version)
    with console.status(f"evaluating {len(artifacts)} artifacts of {base.ref} …"):
        evaluate(ws.registry, base, artifacts, ws.config.evaluation)
    if json_out:
        emit_json(evaluation_rows(ws, artifacts))
        return
    print_evaluation_table(ws, artifacts, f"Evaluation of {base.ref}")
