"""Static int8 (and every other default variant) on CNNs trained on scikit-learn's real digits.

Two models: the demo's small CNN (width 16, ~10k parameters) and a wider one (width 64,
~95k parameters) where the weights, not the graph, dominate the file. Each is registered in a
temporary workspace exactly as a user would (eval set = test split, calibration = train
split), which derives and evaluates the default chains. A few extra activation/weight type
pairs are derived from the same base with the same recipe so the pairs can be compared.

Latency is then measured again in this process, side by side: every variant loaded at once in
ONNX Runtime with one intra-op thread, rounds in a shuffled order, a block of consecutive runs
per variant per round (after one untimed run that refills the caches), so that CPU frequency,
cache and noise drift hit all variants alike.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    fmt_bytes,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    gc_paused,
    goal,
    goals_table,
)
from rich.table import Table

NAME = "quantization"
TITLE = "Static int8 on CNNs trained on real digits"

#: extra type pairs derived from the same base with the same recipe (not in the default config)
EXTRA_RECIPES = """
[recipes.pair-s8s8-qdq-tensor]
recipe = "quantize-static"
params = { activation_type = "qint8", weight_type = "qint8" }

[recipes.pair-u8u8-qdq]
recipe = "quantize-static"
params = { activation_type = "quint8", weight_type = "quint8" }

[recipes.pair-u8s8-qoperator]
recipe = "quantize-static"
params = { activation_type = "quint8", weight_type = "qint8", quant_format = "qoperator" }

[recipes.pair-s8s8-qoperator]
recipe = "quantize-static"
params = { activation_type = "qint8", weight_type = "qint8", quant_format = "qoperator" }
"""
EXTRA_STEPS = ("pair-s8s8-qdq-tensor", "pair-u8u8-qdq", "pair-u8s8-qoperator", "pair-s8s8-qoperator")

BASE = "fp32"
INT8 = "int8-static"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "models": [("small", 16, 4), ("wide", 64, 2)],
            "b1": {"rounds": 40, "per_round": 5, "warmup": 20},
            "b64": {"rounds": 6, "per_round": 2, "warmup": 2},
        }
    return {
        "models": [("small", 16, 30), ("wide", 64, 30)],
        "b1": {"rounds": 300, "per_round": 10, "warmup": 100},
        "b64": {"rounds": 40, "per_round": 3, "warmup": 5},
    }


def type_pair(recipe: dict[str, Any] | None) -> str:
    """A short description of the quantization a variant's last step applied."""
    if recipe is None:
        return "float32"
    name, p = recipe.get("recipe"), recipe.get("params", {})
    short = {"quint8": "u8", "qint8": "s8"}
    if name == "quantize-static":
        per = "per-channel" if p.get("per_channel") else "per-tensor"
        return f"{short[p['activation_type']]}/{short[p['weight_type']]} {p['quant_format'].upper()} {per}"
    if name == "quantize-dynamic":
        return f"dynamic u8/{short[p['weight_type']]} (run-time act. ranges)"
    if name == "fp16":
        return "float16"
    if name == "prune":
        return f"float32, {p['sparsity']:.0%} zeros"
    return str(name)


def weight_bytes(model: bytes) -> int:
    """Bytes of the initializers (the parameters) inside an ONNX file."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    return int(sum(numpy_helper.to_array(i).nbytes for i in m.graph.initializer))


#: the op types that tell which int8 kernels a variant runs on
KEY_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QGemm", "QLinearMatMul", "QuantizeLinear")


def key_ops(model: bytes) -> str:
    """E.g. "ConvInteger×2 MatMulInteger×1": the quantized op types in the graph (QDQ models show
    QuantizeLinear; ONNX Runtime fuses those into int8 kernels when it loads them)."""
    from collections import Counter

    import onnx

    counts = Counter(n.op_type for n in onnx.load_from_string(model).graph.node if n.op_type in KEY_OPS)
    return " ".join(f"{op}×{counts[op]}" for op in KEY_OPS if counts[op]) or "-"


def interleaved_latency(
    models: dict[str, bytes], x: np.ndarray, *, rounds: int, per_round: int, warmup: int, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Batch latency of every model, measured side by side (see the module docstring).

    Returns per model: p50/p95/mean (ms) over all timed runs, and the ratio to ``BASE`` taken
    per round (median of this round's block / median of the base's block) — median and IQR.
    """
    from tinymlops.edge.backends import open_backend

    sessions = {}
    for name, data in models.items():
        backend = open_backend(data, "onnx", threads=1)
        spec = backend.inputs[0]
        feed = {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}
        sessions[name] = (backend.session, [o.name for o in backend.outputs], feed)
    for sess, outs, feed in sessions.values():
        for _ in range(warmup):
            sess.run(outs, feed)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    per_round_p50: dict[str, list[float]] = {n: [] for n in sessions}
    order = list(sessions)
    rng = random.Random(seed)
    perf = time.perf_counter
    with gc_paused():
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                sess, outs, feed = sessions[name]
                sess.run(outs, feed)  # untimed: refills the caches the previous variant evicted
                block = []
                for _ in range(per_round):
                    t0 = perf()
                    sess.run(outs, feed)
                    block.append(perf() - t0)
                times[name].extend(block)
                per_round_p50[name].append(float(np.median(block)))
    base_rounds = np.asarray(per_round_p50[BASE])
    out = {}
    for name, ts in times.items():
        a = np.asarray(ts) * 1e3
        ratios = np.asarray(per_round_p50[name]) / base_rounds
        out[name] = {
            "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()),
            "runs": int(a.size),
            "ratio_vs_fp32_p50": float(np.percentile(a, 50) / (np.percentile(np.asarray(times[BASE]) * 1e3, 50))),
            "ratio_vs_fp32_per_round_median": float(np.median(ratios)),
            "ratio_vs_fp32_per_round_iqr": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
        }
    return out


def _bench_model(label: str, width: int, epochs: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from tinymlops.demo.digits import train_digits_cnn
    from tinymlops.optimize.derivation import derive_variants
    from tinymlops.optimize.evaluation import evaluate
    from tinymlops.optimize.pipeline import register_model
    from tinymlops.workspace import Workspace
    from tinymlops.workspace.config import DEFAULT_CONFIG, ChainConfig, parse_config

    t0 = time.perf_counter()
    dm = train_digits_cnn(width=width, epochs=epochs)
    train_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-") as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        try:
            t0 = time.perf_counter()
            reg = register_model(ws, "digits", dm.onnx, dataset=dm.npz("test"), calibration=dm.npz("train"))
            register_s = time.perf_counter() - t0
            base = reg.base
            # extra type pairs: same recipe, same calibration, same base, registered beside the defaults
            extra_cfg = parse_config(DEFAULT_CONFIG + EXTRA_RECIPES, "default config + benchmark pairs")
            extra = derive_variants(ws.registry, extra_cfg, base, chains=[ChainConfig((s,)) for s in EXTRA_STEPS])
            extra_art = [o.artifact for o in extra if o.artifact is not None]
            extra_eval = evaluate(ws.registry, base, extra_art, ws.config.evaluation)

            outcomes = {o.variant: o for o in [*reg.derivations, *extra]}
            artifacts = {BASE: base, **{v: o.artifact for v, o in outcomes.items() if o.artifact is not None}}
            models = {name: ws.registry.read_bytes(a) for name, a in artifacts.items()}
            evaluations = {**{k: v for k, v in extra_eval.items() if k != base.id}, **reg.evaluations}
            base_eval_p50 = reg.evaluations[base.id].get("latency_ms_p50")
            extra_base_p50 = extra_eval[base.id].get("latency_ms_p50")

            b1 = interleaved_latency(models, dm.x_test[:1], **cfg["b1"])
            b64 = interleaved_latency(models, dm.x_test[:64], **cfg["b64"])
        finally:
            ws.close()

    fp32_size = base.size_bytes
    fp32_acc = reg.evaluations[base.id].get("accuracy")
    rows = []
    for name, art in artifacts.items():
        ev = evaluations.get(art.id, {})
        eval_base_p50 = extra_base_p50 if name in EXTRA_STEPS else base_eval_p50
        wbytes = weight_bytes(models[name])
        rows.append(
            {
                "variant": name,
                "ref": art.ref,
                "in_default_config": name not in EXTRA_STEPS,
                "target": art.target,
                "type_pair": type_pair(art.recipe_data),
                "int8_ops": key_ops(models[name]),
                "accuracy": ev.get("accuracy"),
                "accuracy_delta_points": None
                if ev.get("accuracy") is None or fp32_acc is None
                else 100 * (ev["accuracy"] - fp32_acc),
                "agreement": ev.get("agreement"),
                "size_bytes": art.size_bytes,
                "size_ratio": art.size_bytes / fp32_size,
                "compressed_bytes": ev.get("compressed_bytes"),
                "weight_bytes": wbytes,
                "weight_share_of_file": wbytes / art.size_bytes,
                "derivation_s": outcomes[name].duration_s if name in outcomes else None,
                "latency_b1": b1[name],
                "latency_b64": b64[name],
                "evaluation_latency_ms_p50": ev.get("latency_ms_p50"),
                "evaluation_latency_ms_p95": ev.get("latency_ms_p95"),
                "evaluation_ratio_vs_fp32": None
                if ev.get("latency_ms_p50") is None or not eval_base_p50
                else ev["latency_ms_p50"] / eval_base_p50,
                "error": ev.get("error"),
            }
        )
    failed = [{"variant": o.variant, "status": o.status, "error": o.error} for o in outcomes.values() if o.error]
    return {
        "label": label,
        "width": width,
        "epochs": epochs,
        "parameters": dm.parameters,
        "train_s": train_s,
        "torch_test_accuracy": dm.test_accuracy,
        "register_model_s": register_s,
        "eval_samples": int(dm.x_test.shape[0]),
        "variants": rows,
        "failed_derivations": failed,
    }


def _goals(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    goals = []
    for m in models:
        rows = {r["variant"]: r for r in m["variants"]}
        fp32, int8 = rows[BASE], rows.get(INT8)
        tag = f"{m['label']} CNN, {m['parameters']:,} params"
        if int8 is None or int8["accuracy"] is None:
            goals.append(
                goal(
                    f"int8-static accuracy within 1 point of fp32 ({tag})",
                    False,
                    "no int8-static variant",
                    "register_model with the default config",
                )
            )
            continue
        drop = 100 * (fp32["accuracy"] - int8["accuracy"])
        goals.append(
            goal(
                f"int8-static accuracy within 1 point of fp32 ({tag})",
                drop <= 1.0,
                f"fp32 {100 * fp32['accuracy']:.2f}% vs int8-static {100 * int8['accuracy']:.2f}% "
                f"(drop {drop:+.2f} points)",
                f"registry evaluation on the {m['eval_samples']}-sample test split, batch 1 in ONNX Runtime; "
                "calibrated on the train split; pass = fp32 accuracy − int8 accuracy ≤ 1.0 point",
            )
        )
        goals.append(
            goal(
                f"int8-static file ≤ 30% of fp32 ({tag})",
                int8["size_ratio"] <= 0.30,
                f"{int8['size_bytes']:,} B / {fp32['size_bytes']:,} B = {100 * int8['size_ratio']:.1f}% "
                f"(weights are {100 * fp32['weight_share_of_file']:.0f}% of the fp32 file, "
                f"{100 * int8['weight_share_of_file']:.0f}% of the int8 file)",
                "size of the stored ONNX bytes of the variant vs. the registered base (uncompressed)",
            )
        )
    return goals


def run(quick: bool) -> dict[str, Any]:
    cfg = _settings(quick)
    models = [_bench_model(label, width, epochs, cfg) for label, width, epochs in cfg["models"]]
    pairs = []
    for m in models:
        rows = {r["variant"]: r for r in m["variants"]}
        for name, r in rows.items():
            if r["type_pair"].startswith(("u8", "s8", "dynamic")) and "/" not in name:
                pairs.append(
                    {
                        "model": m["label"],
                        "variant": name,
                        "type_pair": r["type_pair"],
                        "int8_ops": r["int8_ops"],
                        "b1_ratio_vs_fp32": r["latency_b1"]["ratio_vs_fp32_per_round_median"],
                        "b64_ratio_vs_fp32": r["latency_b64"]["ratio_vs_fp32_per_round_median"],
                        "b1_ratio_vs_u8s8_qdq": r["latency_b1"]["p50_ms"] / rows[INT8]["latency_b1"]["p50_ms"]
                        if INT8 in rows
                        else None,
                        "b64_ratio_vs_u8s8_qdq": r["latency_b64"]["p50_ms"] / rows[INT8]["latency_b64"]["p50_ms"]
                        if INT8 in rows
                        else None,
                    }
                )
    return {
        "settings": {
            "quick": quick,
            "models": [{"label": a, "width": w, "epochs": e} for a, w, e in cfg["models"]],
            "latency_batch1": cfg["b1"],
            "latency_batch64": cfg["b64"],
            "onnxruntime_threads": {"intra_op": 1, "inter_op": 1},
        },
        "method": (
            "train_digits_cnn(width, epochs) on sklearn digits (75/25 stratified split); register_model in a "
            "temporary SQLite workspace with the default config, eval = test split, calibration = train split "
            "(derives and evaluates the default chains); four extra quantize-static type pairs are derived from the "
            "same base with derive_variants and evaluated the same way. Accuracy/agreement/size come from the "
            "registry's evaluation. Latency is re-measured side by side: all variants loaded together in ONNX Runtime "
            "(CPU EP, 1 intra-op and 1 inter-op thread), warm-up, then rounds in a shuffled order with a block of "
            "consecutive session.run calls per variant per round (after one untimed call), GC paused; p50/p95 over "
            "all runs, ratio = median over rounds of (variant block median / fp32 block median). The evaluation's "
            "own sequential latency numbers are shown next to them."
        ),
        "models": models,
        "type_pairs": pairs,
        "goals": _goals(models),
        "headline": {
            m["label"]: {
                r["variant"]: {
                    "accuracy": r["accuracy"],
                    "size_ratio": round(r["size_ratio"], 3),
                    "b1_ratio_vs_fp32": round(r["latency_b1"]["ratio_vs_fp32_per_round_median"], 2),
                }
                for r in m["variants"]
            }
            for m in models
        },
    }


def render(result: dict[str, Any]) -> list[Table]:
    tables = []
    for m in result["models"]:
        t = Table(
            title=f"{m['label']} CNN (width {m['width']}, {m['parameters']:,} params, {m['epochs']} epochs) — "
            f"eval on {m['eval_samples']} test digits",
            title_justify="left",
        )
        for col in ("variant", "type"):
            t.add_column(col)
        for col in (
            "acc",
            "Δacc pt",
            "agree",
            "size",
            "size/fp32",
            "p50 b1 ms",
            "p95 b1 ms",
            "b1 /fp32",
            "b64 /fp32",
            "eval p50 ms",
            "eval /fp32",
        ):
            t.add_column(col, justify="right")
        for r in m["variants"]:
            name = r["variant"] + ("" if r["in_default_config"] else " *")
            if r["target"]:
                name += f" [dim](target {r['target']})[/]"
            t.add_row(
                name,
                r["type_pair"],
                fmt_pct(r["accuracy"], 2),
                "-" if r["accuracy_delta_points"] is None else f"{r['accuracy_delta_points']:+.2f}",
                fmt_pct(r["agreement"], 1),
                fmt_bytes(r["size_bytes"]),
                fmt_pct(r["size_ratio"]),
                fmt_ms(r["latency_b1"]["p50_ms"], 4),
                fmt_ms(r["latency_b1"]["p95_ms"], 4),
                fmt_ratio(r["latency_b1"]["ratio_vs_fp32_per_round_median"]),
                fmt_ratio(r["latency_b64"]["ratio_vs_fp32_per_round_median"]),
                fmt_ms(r["evaluation_latency_ms_p50"], 4),
                fmt_ratio(r["evaluation_ratio_vs_fp32"]),
            )
        t.caption = (
            "* extra type pair, not in the default config. p50/p95 b1 and ratios: interleaved side-by-side "
            "measurement; eval: the registry evaluation's sequential numbers."
        )
        tables.append(t)

    t = Table(title="Activation/weight type pairs: latency vs fp32 and vs u8/s8 QDQ", title_justify="left")
    for col in ("model", "variant", "pair", "int8 ops in the graph"):
        t.add_column(col)
    for col in ("b1 /fp32", "b64 /fp32", "b1 /u8s8", "b64 /u8s8"):
        t.add_column(col, justify="right")
    for p in result["type_pairs"]:
        t.add_row(
            p["model"],
            p["variant"],
            p["type_pair"],
            p["int8_ops"],
            fmt_ratio(p["b1_ratio_vs_fp32"]),
            fmt_ratio(p["b64_ratio_vs_fp32"]),
            fmt_ratio(p["b1_ratio_vs_u8s8_qdq"]),
            fmt_ratio(p["b64_ratio_vs_u8s8_qdq"]),
        )
    tables.append(t)
    tables.append(goals_table(result))
    return tables
