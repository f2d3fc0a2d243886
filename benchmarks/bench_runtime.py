"""The device runtime's costs, each measured side by side with the bare alternative in one run.

1. ``Runtime.predict`` vs a bare ``onnxruntime.InferenceSession.run`` on the same model and
   input, batch 1: a tiny MLP (absolute added microseconds) and a CNN whose bare call takes
   >= 1 ms (ratio; goal <= 1.05). Both with no middleware and with the telemetry policy on.
2. Opening a bundle (verify signature + hashes, unwrap key, decrypt, create the session from
   bytes) vs ``InferenceSession(path)`` on the plaintext file (ratio; goal <= 1.3).
3. The WebAssembly normalize step vs the same op in numpy over 1k and 100k floats (per-call
   overhead; goal <= 20 us).

Method: each pair is timed in interleaved blocks (shuffled order per round, GC paused); the
ratio is the median over rounds of the two block medians' quotient.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import fmt_ms, gc_paused, goal, goals_table
from rich.table import Table

TITLE = "Device runtime overheads: predict, bundle open, WebAssembly steps"
BLOCK = 20


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int, block: int = BLOCK) -> dict[str, Any]:
    """Per-function median latency and per-round block medians, timed side by side."""
    names = list(fns)
    blocks: dict[str, list[float]] = {n: [] for n in names}
    for fn in fns.values():
        for _ in range(5):
            fn()
    rng = random.Random(0)
    clock = time.perf_counter
    with gc_paused():
        for _ in range(rounds):
            rng.shuffle(names)
            for n in names:
                fn = fns[n]
                fn()
                ts = []
                for _ in range(block):
                    t0 = clock()
                    fn()
                    ts.append(clock() - t0)
                blocks[n].append(float(np.median(ts)))
    return {n: np.asarray(v) for n, v in blocks.items()}


def _ratio(blocks: dict[str, np.ndarray], a: str, b: str) -> float:
    return float(np.median(blocks[a] / blocks[b]))


def _torch_models() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    import torch
    from torch import nn

    from tinymlops.registry.converters import onnx_from_torch

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    shapes = {"tiny MLP": (1, 64), "CNN": (1, 3, 64, 64)}
    return {
        name: (onnx_from_torch(module, np.zeros(shapes[name], np.float32)), shapes[name])
        for name, module in (("tiny MLP", mlp), ("CNN", cnn))
    }


def _predict_overhead(ws: Any, tmp: Path, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_public_key
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.runtime import Runtime

    device = DeviceKeys.generate()
    trusted = [release_public_key(ws)]
    out: dict[str, Any] = {}
    for name, (model, shape) in _torch_models().items():
        ref = ws.registry.register(name.replace(" ", "-").lower(), model).ref
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        bare = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        input_name = bare.get_inputs()[0].name
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        runtimes = {}
        for label, policies in (("runtime", None), ("runtime+telemetry", {"telemetry": {"enabled": True}})):
            path = tmp / f"{ref.replace(':', '_')}-{label}.tmlb"
            build_bundle(ws, ref, target="x86-edge-server", device_public_key=device.wrapping_public, out=path,
                         policies=policies)  # fmt: skip
            runtimes[label] = Runtime.open(path, device, trusted)
        fns = {
            "bare": lambda bare=bare, x=x, n=input_name: bare.run(None, {n: x}),
            "runtime": lambda rt=runtimes["runtime"], x=x: rt.predict(x),
            "runtime+telemetry": lambda rt=runtimes["runtime+telemetry"], x=x: rt.predict(x),
        }
        blocks = _interleaved(fns, rounds)
        bare_ms = float(np.median(blocks["bare"])) * 1e3
        out[name] = {
            "bare_ms": bare_ms,
            "runtime_ms": float(np.median(blocks["runtime"])) * 1e3,
            "telemetry_ms": float(np.median(blocks["runtime+telemetry"])) * 1e3,
            "ratio": _ratio(blocks, "runtime", "bare"),
            "ratio_telemetry": _ratio(blocks, "runtime+telemetry", "bare"),
            "added_us": float(np.median(blocks["runtime"] - blocks["bare"])) * 1e6,
            "added_us_telemetry": float(np.median(blocks["runtime+telemetry"] - blocks["bare"])) * 1e6,
        }
    return out


def _open_cost(ws: Any, tmp: Path, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_public_key
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.runtime import Runtime

    device = DeviceKeys.generate()
    trusted = [release_public_key(ws)]
    ref = "cnn:1"
    plain = tmp / "cnn.onnx"
    plain.write_bytes(ws.registry.read_bytes(ws.registry.resolve(ref)))
    bundle = tmp / "cnn-open.tmlb"
    build_bundle(ws, ref, target="x86-edge-server", device_public_key=device.wrapping_public, out=bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    fns = {
        "InferenceSession(path)": lambda: ort.InferenceSession(
            str(plain), sess_options=opts, providers=["CPUExecutionProvider"]
        ),
        "Runtime.open(bundle)": lambda: Runtime.open(bundle, device, trusted),
    }  # fmt: skip
    blocks = _interleaved(fns, rounds, block=5)
    return {
        "session_ms": float(np.median(blocks["InferenceSession(path)"])) * 1e3,
        "bundle_ms": float(np.median(blocks["Runtime.open(bundle)"])) * 1e3,
        "ratio": _ratio(blocks, "Runtime.open(bundle)", "InferenceSession(path)"),
        "model_bytes": plain.stat().st_size,
    }


def _wasm_cost(rounds: int) -> dict[str, Any]:
    from tinymlops.pipeline.wasm import WasmStep, builtin_module

    out = {}
    for n in (1_000, 100_000):
        x = np.random.default_rng(0).normal(size=n).astype(np.float32)
        step = WasmStep(builtin_module("normalize"), label="normalize", params=[0.5, 2.0])
        mean, std = 0.5, 2.0
        fns = {"numpy": lambda x=x, m=mean, sd=std: (x - m) / sd, "wasm": lambda x=x, s=step: s(x)}
        blocks = _interleaved(fns, rounds)
        ref = (x - mean) / std
        out[str(n)] = {
            "numpy_us": float(np.median(blocks["numpy"])) * 1e6,
            "wasm_us": float(np.median(blocks["wasm"])) * 1e6,
            "ratio": _ratio(blocks, "wasm", "numpy"),
            "overhead_us": float(np.median(blocks["wasm"] - blocks["numpy"])) * 1e6,
            "max_abs_diff": float(np.max(np.abs(step(x) - ref))),
            "fast_path": bool(step.fast),
        }
    return out


def run(quick: bool) -> dict[str, Any]:
    from tinymlops.workspace import Workspace

    rounds = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-runtime-") as d:
        tmp = Path(d)
        ws = Workspace.init(tmp / "ws")
        try:
            predict = _predict_overhead(ws, tmp, rounds)
            opening = _open_cost(ws, tmp, max(3, rounds // 4))
        finally:
            ws.close()
    wasm = _wasm_cost(rounds)
    cnn, tiny = predict["CNN"], predict["tiny MLP"]
    method = "interleaved blocks, shuffled per round, GC paused; ratio = median over rounds of block-median quotients"
    goals = [
        goal(
            "Runtime.predict / bare InferenceSession.run <= 1.05 on a CNN whose bare call takes >= 1 ms",
            cnn["ratio"] <= 1.05 and cnn["bare_ms"] >= 1.0,
            f"{cnn['ratio']:.3f} (bare {cnn['bare_ms']:.3f} ms, +{cnn['added_us']:.1f} us; "
            f"with telemetry {cnn['ratio_telemetry']:.3f})",
            method,
        ),
        goal(
            "tiny MLP: absolute added time per predict (printed, no goal)",
            True,
            f"+{tiny['added_us']:.1f} us over bare {tiny['bare_ms'] * 1e3:.1f} us "
            f"(+{tiny['added_us_telemetry']:.1f} us with telemetry)",
            method,
        ),
        goal(
            "bundle open (verify + unwrap + decrypt + session) / InferenceSession(path) <= 1.3",
            opening["ratio"] <= 1.3,
            f"{opening['ratio']:.3f} ({opening['bundle_ms']:.2f} ms vs {opening['session_ms']:.2f} ms)",
            method,
        ),
    ]
    for n, w in wasm.items():
        goals.append(
            goal(
                f"WebAssembly normalize over {int(n):,} floats: per-call overhead vs numpy <= 20 us",
                w["overhead_us"] <= 20,
                f"+{w['overhead_us']:.1f} us (wasm {w['wasm_us']:.1f} us vs numpy {w['numpy_us']:.1f} us, "
                f"ratio {w['ratio']:.2f}, max |diff| {w['max_abs_diff']:.1e})",
                method,
            )
        )
    return {"predict": predict, "open": opening, "wasm": wasm, "goals": goals, "headline": {
        "cnn_predict_ratio": cnn["ratio"], "tiny_added_us": tiny["added_us"], "open_ratio": opening["ratio"],
    }}  # fmt: skip


def render(result: dict[str, Any]) -> list[Table]:
    t = Table(title="Runtime.predict vs bare InferenceSession.run (batch 1, 1 thread)", title_justify="left")
    for col in ("model", "bare ms", "runtime ms", "ratio", "+us", "with telemetry ms", "ratio", "+us"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, p in result["predict"].items():
        t.add_row(
            name, fmt_ms(p["bare_ms"]), fmt_ms(p["runtime_ms"]), f"{p['ratio']:.3f}", f"{p['added_us']:.1f}",
            fmt_ms(p["telemetry_ms"]), f"{p['ratio_telemetry']:.3f}", f"{p['added_us_telemetry']:.1f}",
        )  # fmt: skip
    o = result["open"]
    t2 = Table(title="Opening a model", title_justify="left")
    for col in ("InferenceSession(path) ms", "Runtime.open(bundle) ms", "ratio", "model bytes"):
        t2.add_column(col, justify="right")
    t2.add_row(fmt_ms(o["session_ms"]), fmt_ms(o["bundle_ms"]), f"{o['ratio']:.3f}", f"{o['model_bytes']:,}")
    t3 = Table(title="WebAssembly normalize vs numpy", title_justify="left")
    for col in ("floats", "numpy us", "wasm us", "ratio", "overhead us", "fast path"):
        t3.add_column(col, justify="right")
    for n, w in result["wasm"].items():
        t3.add_row(
            f"{int(n):,}", f"{w['numpy_us']:.1f}", f"{w['wasm_us']:.1f}", f"{w['ratio']:.2f}",
            f"{w['overhead_us']:.1f}", str(w["fast_path"]),
        )  # fmt: skip
    return [t, t2, t3, goals_table(result)]
