"""How long registering a ~1M-parameter model takes: each recipe step of the default config,
then the evaluation of every artifact.

The model is a real MLP (64→1024→896→10, 993,930 parameters) trained briefly on scikit-learn's
digits and exported with ``onnx_from_torch``. It is registered with ``register_model`` (eval =
test split, calibration = train split) in a temporary SQLite workspace with the default config.
A tiny model is registered first in a scratch workspace so that one-time imports (ONNX Runtime's
quantization tools, the ONNX checker, …) are not charged to the first step; that cold start is
reported on its own.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import fmt_bytes, goals_table
from rich.table import Table

NAME = "derivation"
TITLE = "Derivation and evaluation time on a ~1M-parameter model"
HIDDEN = (1024, 896)


def _settings(quick: bool) -> dict[str, Any]:
    return {"epochs": 2 if quick else 20, "hidden": HIDDEN}


def _train_mlp(hidden: tuple[int, ...], epochs: int, seed: int = 0) -> dict[str, Any]:
    import torch
    from torch import nn

    from tinymlops.demo.digits import load_digits_split
    from tinymlops.registry.converters import onnx_from_torch

    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    layers: list[Any] = []
    width = x_tr.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    return {
        "onnx": onnx_from_torch(model, x_te[:1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_test_accuracy": acc,
        "train_s": train_s,
        "train": _npz(x_tr, y_tr),
        "test": _npz(x_te, y_te),
    }


def _npz(x: np.ndarray, y: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _register_timed(ws: Any, name: str, onnx: bytes, test: bytes, train: bytes) -> dict[str, Any]:
    """register_model with a timestamp on every progress message."""
    from tinymlops.optimize.pipeline import register_model

    events: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    result = register_model(
        ws, name, onnx, dataset=test, calibration=train, progress=lambda msg: events.append((time.perf_counter(), msg))
    )
    total = time.perf_counter() - t0
    return {"result": result, "events": [(t - t0, m) for t, m in events], "total_s": total}


def run(quick: bool) -> dict[str, Any]:
    from tinymlops.workspace import Workspace

    cfg = _settings(quick)
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-") as tmp:
        # cold start: the first registration in the process pays for imports
        tiny = _train_mlp((16,), epochs=1)
        ws = Workspace.init(Path(tmp) / "warm")
        try:
            cold = _register_timed(ws, "tiny", tiny["onnx"], tiny["test"], tiny["train"])
        finally:
            ws.close()

        mlp = _train_mlp(cfg["hidden"], cfg["epochs"])
        ws = Workspace.init(Path(tmp) / "ws")
        try:
            timed = _register_timed(ws, "mlp1m", mlp["onnx"], mlp["test"], mlp["train"])
            eval_config = ws.config.evaluation
            chains = [c.variant + (f" (target {c.target})" if c.target else "") for c in ws.config.chains_for("mlp1m")]
        finally:
            ws.close()

    result = timed["result"]
    events = timed["events"]
    base = result.base
    evaluations = result.evaluations
    steps = []
    for o in result.derivations:
        a = o.artifact
        ev = evaluations.get(a.id, {}) if a else {}
        steps.append(
            {
                "variant": o.variant,
                "recipe": (a.recipe_data or {}).get("recipe") if a else None,
                "status": o.status,
                "error": o.error or None,
                "duration_s": o.duration_s,
                "size_bytes": a.size_bytes if a else None,
                "size_ratio": a.size_bytes / base.size_bytes if a else None,
                "accuracy": ev.get("accuracy"),
            }
        )
    # evaluation: time between consecutive "evaluated" messages (the first from the end of derivation)
    eval_events = [(t, m.strip().removeprefix("evaluated ")) for t, m in events if m.strip().startswith("evaluated ")]
    derive_end = max(
        (t for t, m in events if m.startswith("  ") and not m.strip().startswith("evaluated")), default=0.0
    )
    register_end = next((t for t, m in events if m.startswith("registered ")), 0.0)
    per_eval = []
    prev = derive_end
    by_ref = {a.ref: a for a in [base, *(o.artifact for o in result.derivations if o.artifact)]}
    for t, ref in eval_events:
        art = by_ref.get(ref)
        ev = evaluations.get(art.id, {}) if art else {}
        per_eval.append(
            {
                "ref": ref,
                "duration_s": t - prev,
                "latency_ms_p50": ev.get("latency_ms_p50"),
                "accuracy": ev.get("accuracy"),
            }
        )
        prev = t
    derive_total = sum(s["duration_s"] for s in steps)
    eval_total = sum(e["duration_s"] for e in per_eval)
    phases = {
        "register_base_s": register_end,
        "datasets_and_planning_s": max(0.0, derive_end - derive_total - register_end),
        "derivation_s": derive_total,
        "evaluation_s": eval_total,
        "total_s": timed["total_s"],
    }
    return {
        "settings": {**cfg, "quick": quick, "evaluation": vars(eval_config), "chains": chains},
        "method": (
            f"MLP 64→{'→'.join(map(str, cfg['hidden']))}→10 trained {cfg['epochs']} epochs (Adam) on the digits train "
            "split, exported with onnx_from_torch (opset 17); register_model in a temporary SQLite workspace with the "
            "default config (eval = test split, calibration = train split). Step time = DerivationOutcome.duration_s "
            "(recipe + inspection + blob write + rows); evaluation time per artifact = time between register_model's "
            "progress messages. A tiny MLP is registered first in a scratch workspace so imports are not charged to "
            "the first step (its time is reported as the cold start). One run, not a distribution."
        ),
        "model": {
            "parameters": mlp["parameters"],
            "onnx_bytes": base.size_bytes,
            "torch_test_accuracy": mlp["torch_test_accuracy"],
            "train_s": mlp["train_s"],
        },
        "cold_start": {"tiny_model_register_total_s": cold["total_s"], "tiny_parameters": tiny["parameters"]},
        "steps": steps,
        "evaluations": per_eval,
        "phases": phases,
        "goals": [],
        "headline": {
            "total_s": round(timed["total_s"], 2),
            "derivation_s": round(derive_total, 2),
            "evaluation_s": round(eval_total, 2),
        },
    }


def render(result: dict[str, Any]) -> list[Table]:
    m = result["model"]
    t = Table(
        title=f"Recipe steps on a {m['parameters']:,}-parameter MLP ({fmt_bytes(m['onnx_bytes'])} ONNX, "
        f"torch test accuracy {100 * m['torch_test_accuracy']:.1f}%)",
        title_justify="left",
    )
    for col in ("variant", "recipe", "status"):
        t.add_column(col)
    for col in ("time s", "size", "size/fp32", "accuracy"):
        t.add_column(col, justify="right")
    for s in result["steps"]:
        t.add_row(
            s["variant"],
            s["recipe"] or "-",
            s["status"] if not s["error"] else f"[red]{s['status']}: {s['error'][:60]}[/]",
            f"{s['duration_s']:.3f}",
            fmt_bytes(s["size_bytes"]),
            "-" if s["size_ratio"] is None else f"{100 * s['size_ratio']:.1f}%",
            "-" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f}%",
        )
    t.add_row("[bold]all steps[/]", "", "", f"[bold]{result['phases']['derivation_s']:.3f}[/]", "", "", "")

    e = Table(title="Evaluation per artifact (accuracy, agreement, 10 warm-up + 100 timed runs)", title_justify="left")
    e.add_column("artifact")
    for col in ("time s", "p50 ms"):
        e.add_column(col, justify="right")
    for ev in result["evaluations"]:
        e.add_row(
            ev["ref"],
            f"{ev['duration_s']:.3f}",
            "-" if ev["latency_ms_p50"] is None else f"{ev['latency_ms_p50']:.3f}",
        )
    e.add_row("[bold]all[/]", f"[bold]{result['phases']['evaluation_s']:.3f}[/]", "")

    p = Table(title="register_model phases", title_justify="left")
    p.add_column("phase")
    p.add_column("s", justify="right")
    for k, v in result["phases"].items():
        p.add_row(k.removesuffix("_s"), f"{v:.3f}")
    p.add_row(
        "cold start (first registration in the process, tiny model)",
        f"{result['cold_start']['tiny_model_register_total_s']:.3f}",
    )
    tables = [t, e, p]
    if result["goals"]:
        tables.append(goals_table(result))
    return tables
