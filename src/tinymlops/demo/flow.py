"""``tinymlops demo``: register real models, derive and evaluate variants, check targets, select.

Today's flow (foundation): train a CNN on scikit-learn's real digits and register it with its
eval and calibration sets; register MLPerf Tiny reference models nobody here trained (TFLite);
derive every configured variant automatically; print lineage and evaluation tables; check each
variant against the built-in device profiles; select a variant for several devices and moments;
then deliver: build a signed bundle encrypted to each simulated device for the variant selected
for it, open it in memory on the "device" and predict the whole digits test set through its
pipeline (with a WebAssembly step), a cascade bundle, and an MLPerf Tiny model run by LiteRT;
then the control plane: a real server, a mixed fleet of agents that enrol, a release rolled out
in stages (each device on the variant selected for its profile) through the TUF repository,
installed A/B and run, and a deliberately broken release that fails its canary stage and is
rolled back automatically.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinymlops.demo.delivery import DeviceRun, deliver_cascade, deliver_digits, deliver_tflite
from tinymlops.demo.fleet import FleetResult, run_fleet
from tinymlops.errors import IncompatibleError, WorkspaceError
from tinymlops.optimize.pipeline import RegistrationResult, register_model
from tinymlops.spec.context import DeviceContext
from tinymlops.targets.compat import check_compatibility
from tinymlops.targets.registry_candidates import candidates_for
from tinymlops.targets.selection import select_variant
from tinymlops.workspace import CONFIG_FILE, Workspace

#: MLPerf Tiny models the demo registers (float ones: the int8 ones register too, but their
#: conversion to ONNX fails, which the tests cover)
MLPERF_MODELS = {"kws-dscnn": "kws_ref_model_float32.tflite", "ic-resnet8": "pretrainedResnet.tflite"}

#: the devices and moments the demo selects for
SCENARIOS: list[tuple[str, DeviceContext]] = [
    ("x86-edge-server", DeviceContext(prefer="accuracy")),
    ("rpi-4", DeviceContext(battery=1.0, charging=True, network="wifi")),
    ("android-nnapi-phone", DeviceContext(battery=0.9, network="wifi")),
    ("android-nnapi-phone", DeviceContext(battery=0.1, network="cellular", bandwidth_kbps=500)),
    ("mcu-cortex-m7", DeviceContext(battery=0.5, network="offline")),
]


def find_mlperf_dir() -> Path | None:
    """``$TINYMLOPS_MLPERF_DIR``, else ``shared/models/mlperf-tiny`` beside a parent of the cwd."""
    env = os.environ.get("TINYMLOPS_MLPERF_DIR")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]:
        candidate = parent / "shared" / "models" / "mlperf-tiny"
        if candidate.is_dir():
            return candidate
    return None


@dataclass
class DemoResult:
    workspace: Path
    registrations: dict[str, RegistrationResult] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    selections: list[dict[str, Any]] = field(default_factory=list)
    digits_fp32_accuracy: float = 0.0
    devices: list[DeviceRun] = field(default_factory=list)
    fleet: FleetResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": str(self.workspace),
            "digits_fp32_accuracy": self.digits_fp32_accuracy,
            "registrations": {k: v.to_dict() for k, v in self.registrations.items()},
            "checks": self.checks,
            "selections": self.selections,
            "devices": [d.to_dict() for d in self.devices],
            "fleet": None if self.fleet is None else self.fleet.to_dict(),
        }


def open_or_init(path: Path) -> Workspace:
    if (path / CONFIG_FILE).exists():
        return Workspace.open(path)
    if path.exists() and any(path.iterdir()):
        raise WorkspaceError(f"{path} exists, is not empty and is not a workspace; choose another --workspace")
    return Workspace.init(path)


def run_demo(
    workspace: Path,
    *,
    mlperf_dir: Path | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> DemoResult:
    ws = open_or_init(workspace)
    result = DemoResult(ws.root)

    say("training a CNN on scikit-learn's 8×8 digits …")
    from tinymlops.demo.digits import train_digits_cnn

    digits = train_digits_cnn()
    result.digits_fp32_accuracy = digits.test_accuracy
    say(f"digits CNN: {digits.parameters} parameters, test accuracy {digits.test_accuracy:.3f}")
    result.registrations["digits-cnn"] = register_model(
        ws,
        "digits-cnn",
        digits.onnx,
        source="tinymlops demo: torch CNN trained on sklearn digits (seed 0)",
        tags=["demo", "vision"],
        description="CNN on scikit-learn's 8x8 digits",
        dataset=digits.npz("test"),
        calibration=digits.npz("train"),
        progress=say,
    )

    mlperf_dir = mlperf_dir or find_mlperf_dir()
    if mlperf_dir is None:
        say("MLPerf Tiny models not found (set TINYMLOPS_MLPERF_DIR); skipping them")
    else:
        for name, file in MLPERF_MODELS.items():
            path = mlperf_dir / file
            if not path.is_file():
                say(f"{path} missing; skipping")
                continue
            say(f"registering MLPerf Tiny {file} …")
            result.registrations[name] = register_model(
                ws,
                name,
                path.read_bytes(),
                source=f"MLPerf Tiny reference model {file}",
                tags=["mlperf-tiny"],
                progress=say,
            )

    for model in result.registrations:
        _base, candidates = candidates_for(ws.registry, model)
        for target in ("mcu-cortex-m7", "rpi-4", "android-nnapi-phone"):
            profile = ws.targets.get(target)
            for c in candidates:
                report = check_compatibility(c.info, c.size_bytes, profile, host_latency_ms=c.latency_ms)
                result.checks.append({"ref": c.ref, **report.to_dict()})
        for target, context in SCENARIOS:
            profile = ws.targets.get(target)
            entry: dict[str, Any] = {"model": model, "target": target, "context": context.to_dict()}
            try:
                sel = select_variant(candidates, profile, context)
                entry.update(chosen=sel.chosen.ref, explanations=sel.explanations)
            except IncompatibleError as exc:
                entry.update(chosen=None, error=exc.message)
            result.selections.append(entry)

    digits_base = result.registrations["digits-cnn"].base.ref
    result.devices = deliver_digits(ws, result.selections, digits.x_test, digits.y_test, say=say)
    cascade = deliver_cascade(ws, digits_base, digits.x_test, digits.y_test, say=say)
    if cascade is not None:
        result.devices.append(cascade)
    if "kws-dscnn" in result.registrations:
        tflite = deliver_tflite(ws, "kws-dscnn", result.registrations["kws-dscnn"].base.ref, say=say)
        if tflite is not None:
            result.devices.append(tflite)

    say("starting the control plane and enrolling a fleet …")
    result.fleet = run_fleet(ws, "digits-cnn", digits.x_test, digits.y_test, onnx_bytes=digits.onnx, say=say)
    ws.close()
    return result
