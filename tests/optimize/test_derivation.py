"""Deriving variants on registration: chains, sharing, failures, determinism, TFLite bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlperf_models import mlperf
from tinymlops.optimize.derivation import plan_chains
from tinymlops.optimize.pipeline import register_model
from tinymlops.workspace import Workspace, parse_config
from tinymlops.workspace.config import DEFAULT_CONFIG


def _workspace(tmp_path: Path, name: str, chains: str, targets: str = "", extra: str = "") -> Workspace:
    ws = Workspace.init(tmp_path / name)
    text = DEFAULT_CONFIG
    start = text.index("default = [")
    text = text[:start] + f"default = {chains}" + text[text.index("\n", start) :]
    start = text.index("[derive.targets.")
    text = text[:start] + targets + extra
    (ws.root / "tinymlops.toml").write_text(text)
    return Workspace.open(ws.root)


def test_plan_shares_prefixes_and_prepends_conversion(sqlite_workspace, digits_model) -> None:
    ws = sqlite_workspace
    cfg = parse_config(DEFAULT_CONFIG)
    onnx_base = ws.registry.register("d", digits_model.onnx)
    paths = [n.path for n in plan_chains(cfg, onnx_base)]
    assert paths.count("prune-50") == 1 and "prune-50/int8-static" in paths
    assert paths.index("prune-50") < paths.index("prune-50/int8-static")
    tfl = ws.registry.register("kws", mlperf("kws_ref_model_float32.tflite").read_bytes())
    tpaths = [n.path for n in plan_chains(cfg, tfl)]
    assert tpaths[0] == "onnx" and all(p == "onnx" or p.startswith("onnx/") for p in tpaths)


def test_registration_derives_and_evaluates(tmp_path, digits_model) -> None:
    ws = _workspace(
        tmp_path,
        "ws",
        '["int8-static", "prune-50>int8-static"]',
        '[derive.targets.rpi-4]\nchains = ["int8-dynamic"]\n',
    )
    result = register_model(
        ws, "digits", digits_model.onnx, dataset=digits_model.npz("test"), calibration=digits_model.npz("train")
    )
    by_variant = {d.variant: d for d in result.derivations}
    assert {v: d.status for v, d in by_variant.items()} == {
        "int8-static": "succeeded",
        "int8-dynamic": "succeeded",
        "prune-50": "succeeded",
        "prune-50/int8-static": "succeeded",
    }
    static = by_variant["int8-static"].artifact
    assert static.recipe.params["calibration_samples"] > 0
    derivation = next(d for d in ws.registry.derivations("digits") if d.variant == "int8-static")
    assert derivation.details["calibration_source"].startswith("dataset:calibration-v1@")
    dyn = by_variant["int8-dynamic"].artifact
    assert dyn.target == "rpi-4" and "target:rpi-4" in dyn.tags
    grandchild = by_variant["prune-50/int8-static"].artifact
    assert grandchild.parent_id == by_variant["prune-50"].artifact.id
    base_metrics = result.evaluations[result.base.id]
    assert base_metrics["accuracy"] == pytest.approx(digits_model.test_accuracy, abs=1e-9)
    static_metrics = result.evaluations[static.id]
    assert abs(static_metrics["accuracy"] - base_metrics["accuracy"]) <= 0.02
    assert static_metrics["agreement"] >= 0.97
    assert static_metrics["size_ratio"] < 0.6
    for m in result.evaluations.values():
        assert m["latency_ms_p95"] >= m["latency_ms_p50"] > 0
    ws.close()


def test_same_input_same_recipe_same_hash(tmp_path, digits_model) -> None:
    hashes = []
    for name in ("a", "b"):
        ws = _workspace(tmp_path, name, '["int8-static", "int8-dynamic", "prune-50"]')
        result = register_model(
            ws, "digits", digits_model.onnx, calibration=digits_model.npz("train"), run_evaluation=False
        )
        hashes.append({d.variant: d.artifact.sha256 for d in result.derivations})
        ws.close()
    assert hashes[0] == hashes[1] and len(hashes[0]) == 3


def test_failed_recipe_is_recorded_and_others_continue(tmp_path, digits_model) -> None:
    bad = '\n[recipes.bad]\nrecipe = "prune"\nparams = { sparsity = 1.5 }\n'
    ws = _workspace(tmp_path, "ws", '["bad", "int8-dynamic", "bad>int8-static"]', extra=bad)
    result = register_model(ws, "digits", digits_model.onnx, run_evaluation=False)
    status = {d.variant: (d.status, d.error) for d in result.derivations}
    assert status["bad"][0] == "failed" and "sparsity" in status["bad"][1]
    assert status["int8-dynamic"][0] == "succeeded"
    assert status["bad/int8-static"][0] == "skipped"
    arts = {a.variant for a in ws.registry.artifacts("digits")}
    assert arts == {"", "int8-dynamic"}  # nothing half-written
    ws.close()


def test_tflite_conversion_accepted_or_failed_with_measured_reason(sqlite_workspace) -> None:
    ws = sqlite_workspace
    ok = register_model(ws, "resnet", mlperf("pretrainedResnet.tflite").read_bytes(), run_evaluation=False)
    conv = next(d for d in ok.derivations if d.variant == "onnx")
    assert conv.status == "succeeded"
    details = next(d for d in ws.registry.derivations("resnet") if d.variant == "onnx").details
    assert details["max_abs_diff"] <= 1e-4
    assert conv.artifact.info.inputs[0].shape[1:] == (32, 32, 3)  # original NHWC signature kept
    bad = register_model(ws, "kws", mlperf("kws_ref_model_float32.tflite").read_bytes(), run_evaluation=False)
    conv = next(d for d in bad.derivations if d.variant == "onnx")
    assert conv.status == "failed" and "ONNX Runtime" in conv.error
    assert all(d.status == "skipped" for d in bad.derivations if d.variant.startswith("onnx/"))
