"""The demo's delivery step: build signed, encrypted bundles and run them on simulated devices.

Each simulated device gets its own key pair and a bundle of the variant selected for its profile
and moment, encrypted to that device. The bundle carries a pipeline — the device sends raw
8×8 sensor values (0–16): cast → reshape → a WebAssembly normalize step (÷16, what training
did) → model → softmax → argmax — so the device never needs to know the model's conventions.
The runtime opens it in memory and predicts every digit of the held-out test set; the demo
checks that the answers equal those of the same variant run directly in ONNX Runtime.

Then a cascade: the smallest variant answers first, and the fp32 base model is called only for
the digits it is unsure about. And an MLPerf Tiny TFLite model nobody here trained ships in a
bundle that the LiteRT backend runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.backends import open_backend
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import TinyMLOpsError
from tinymlops.pipeline.wasm import builtin_module
from tinymlops.workspace import Workspace

#: the digits pipeline: raw 0..16 pixel values in, class index out
DIGITS_PIPELINE: dict[str, Any] = {
    "spec_version": "1.0",
    "pre": [
        {"op": "cast", "params": {"dtype": "float32"}},
        {"op": "reshape", "params": {"shape": [1, 8, 8]}},
        {"op": "wasm", "name": "scale", "params": {"module": "normalize", "params": [0.0, 16.0]}},
    ],
    "post": [{"op": "softmax", "params": {"axis": -1}}, {"op": "argmax", "params": {"axis": -1}}],
}
CASCADE_THRESHOLD = 0.9


@dataclass
class DeviceRun:
    """One simulated device: what it received and how it ran."""

    device_id: str
    target: str
    ref: str
    bundle: str
    bundle_bytes: int
    open_ms: float
    predictions: int
    accuracy: float | None
    agrees_with_direct: float | None
    p50_ms: float | None
    escalated: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "target": self.target,
            "ref": self.ref,
            "bundle": self.bundle,
            "bundle_bytes": self.bundle_bytes,
            "open_ms": self.open_ms,
            "predictions": self.predictions,
            "accuracy": self.accuracy,
            "agrees_with_direct": self.agrees_with_direct,
            "p50_ms": self.p50_ms,
            "escalated": self.escalated,
            **self.extra,
        }


def _raw(x01: np.ndarray) -> np.ndarray:
    """What a device's sensor sends: the digits' raw 0..16 values, flattened."""
    return np.rint(x01.reshape(len(x01), -1) * 16.0).astype(np.float32)


def _run_digits(runtime: Runtime, x01: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float | None]:
    raw = _raw(x01)
    preds = np.empty(len(raw), dtype=np.int64)
    escalated = 0
    for i in range(len(raw)):
        response = runtime.predict(raw[i : i + 1])
        preds[i] = int(np.asarray(response.outputs[runtime.pipeline.primary]).reshape(-1)[0])
        escalated += "big" in response.models_called
    has_cascade = "big" in runtime.backends
    return preds, (escalated / len(raw) if has_cascade else None)


def _direct_predictions(ws: Workspace, ref: str, x01: np.ndarray) -> np.ndarray:
    backend = open_backend(ws.registry.read_bytes(ws.registry.resolve(ref)))
    return np.array([int(np.argmax(backend.run(x01[i : i + 1])[0])) for i in range(len(x01))])


def _open(path: Path, keys: DeviceKeys, trusted: list[bytes]) -> tuple[Runtime, float]:
    start = time.perf_counter()
    runtime = Runtime.open(path, keys, trusted)
    return runtime, (time.perf_counter() - start) * 1e3


def deliver_digits(
    ws: Workspace,
    selections: list[dict[str, Any]],
    x01: np.ndarray,
    y: np.ndarray,
    *,
    say: Callable[[str], None] = lambda _m: None,
) -> list[DeviceRun]:
    """One device per selection that chose a digits variant: build its bundle, open it, predict."""
    out_dir = ws.root / "bundles"
    out_dir.mkdir(exist_ok=True)
    trusted = [release_public_key(ws)]
    runs: list[DeviceRun] = []
    for n, sel in enumerate(s for s in selections if s["model"] == "digits-cnn" and s.get("chosen")):
        keys = DeviceKeys.generate()
        ref = sel["chosen"]
        path = out_dir / f"device-{n}-{sel['target']}.tmlb"
        say(f"bundle {ref} for device {keys.device_id} ({sel['target']}) …")
        built = build_bundle(
            ws,
            ref,
            target=sel["target"],
            device_public_key=keys.wrapping_public,
            pipeline=DIGITS_PIPELINE,
            wasm_modules={"normalize": builtin_module("normalize")},
            policies={"telemetry": {"enabled": True}},
            out=path,
        )
        runtime, open_ms = _open(path, keys, trusted)
        preds, _ = _run_digits(runtime, x01, y)
        direct = _direct_predictions(ws, ref, x01)
        summary = runtime.latency.summary() if runtime.latency is not None else {}
        runs.append(
            DeviceRun(
                device_id=keys.device_id,
                target=sel["target"],
                ref=ref,
                bundle=str(path),
                bundle_bytes=built.size,
                open_ms=open_ms,
                predictions=len(preds),
                accuracy=float((preds == y).mean()),
                agrees_with_direct=float((preds == direct).mean()),
                p50_ms=summary.get("p50_ms"),
                extra={"context": sel["context"]},
            )
        )
    return runs


def deliver_cascade(
    ws: Workspace, base_ref: str, x01: np.ndarray, y: np.ndarray, *, say: Callable[[str], None] = lambda _m: None
) -> DeviceRun | None:
    """The smallest successful variant answers; the base model only where it is unsure."""
    variants = [a for a in ws.registry.artifacts(*_name_version(base_ref)) if a.parent_id is not None]
    if not variants:
        return None
    small = min(variants, key=lambda a: a.size_bytes)
    pipeline = {
        **DIGITS_PIPELINE,
        "post": [
            {"op": "cascade", "params": {"model": "big", "threshold": CASCADE_THRESHOLD}},
            *DIGITS_PIPELINE["post"],
        ],
    }
    keys = DeviceKeys.generate()
    path = ws.root / "bundles" / "device-cascade.tmlb"
    say(f"cascade bundle: {small.ref} first, {base_ref} below confidence {CASCADE_THRESHOLD} …")
    built = build_bundle(
        ws,
        small.ref,
        target="rpi-4",
        device_public_key=keys.wrapping_public,
        pipeline=pipeline,
        extra_models={"big": base_ref},
        wasm_modules={"normalize": builtin_module("normalize")},
        policies={"telemetry": {"enabled": True}},
        out=path,
    )
    runtime, open_ms = _open(path, keys, [release_public_key(ws)])
    preds, escalated = _run_digits(runtime, x01, y)
    small_direct = _direct_predictions(ws, small.ref, x01)
    big_direct = _direct_predictions(ws, base_ref, x01)
    summary = runtime.latency.summary() if runtime.latency is not None else {}
    return DeviceRun(
        device_id=keys.device_id,
        target="rpi-4",
        ref=f"{small.ref} → {base_ref}",
        bundle=str(path),
        bundle_bytes=built.size,
        open_ms=open_ms,
        predictions=len(preds),
        accuracy=float((preds == y).mean()),
        agrees_with_direct=None,
        p50_ms=summary.get("p50_ms"),
        escalated=escalated,
        extra={
            "small_accuracy": float((small_direct == y).mean()),
            "big_accuracy": float((big_direct == y).mean()),
        },
    )


def _name_version(ref: str) -> tuple[str, int]:
    name, _, version = ref.partition(":")
    return name, int(version.split("/")[0])


def deliver_tflite(
    ws: Workspace, model: str, base_ref: str, *, say: Callable[[str], None] = lambda _m: None
) -> DeviceRun | None:
    """An MLPerf Tiny TFLite model in a bundle, run by the LiteRT backend on the device."""
    keys = DeviceKeys.generate()
    path = ws.root / "bundles" / f"device-{model}-litert.tmlb"
    say(f"bundle {base_ref} (TFLite, LiteRT backend) …")
    try:
        built = build_bundle(ws, base_ref, target="rpi-4", device_public_key=keys.wrapping_public, out=path)
        runtime, open_ms = _open(path, keys, [release_public_key(ws)])
    except TinyMLOpsError as exc:  # e.g. LiteRT missing on this machine: reported, not fatal
        say(f"{base_ref}: {exc.message}")
        return None
    direct = open_backend(ws.registry.read_bytes(ws.registry.resolve(base_ref)))
    spec = direct.inputs[0]
    rng = np.random.default_rng(0)
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    agree = 0
    trials = 20
    for _ in range(trials):
        x = rng.standard_normal(shape).astype(spec.dtype) if spec.dtype == "float32" else _ints(rng, shape, spec.dtype)
        got = runtime.predict(x)
        want = direct.run(x)[0]
        agree += bool(np.array_equal(np.asarray(got.outputs[runtime.pipeline.primary]), want))
    return DeviceRun(
        device_id=keys.device_id,
        target="rpi-4",
        ref=base_ref,
        bundle=str(path),
        bundle_bytes=built.size,
        open_ms=open_ms,
        predictions=trials,
        accuracy=None,
        agrees_with_direct=agree / trials,
        p50_ms=None,
        extra={"backend": runtime.manifest.model.backend},
    )


def _ints(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    info = np.iinfo(np.dtype(dtype))
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


__all__ = ["DIGITS_PIPELINE", "DeviceRun", "deliver_cascade", "deliver_digits", "deliver_tflite"]
