"""The device runtime's costs, each measured side by side with the bare alternative in one run.

1. ``Runtime.predict`` vs a bare ``onnxruntime.InferenceSession.run`` on the same model and
   input, batch 1: a tiny MLP (absolute added microseconds) and a CNN whose bare call takes
   >= 1 ms (ratio; goal <= 1.05). Both with no middleware and with the telemetry policy on.
2. Opening a bundle (verify signature + hashes, unwrap key, decrypt, create the session from
   bytes) vs ``InferenceSession(path)`` on the plaintext file with the same SessionOptions and
   providers (ratio; goal <= 1.3), ``InferenceSession(bytes)`` beside them, and a breakdown of
   ``Runtime.open`` by stage (the same reader functions, timed one by one).
3. The WebAssembly normalize step vs the same op in numpy over 1k and 100k floats (per-call
   overhead; goal <= 20 us), with the step's parts (copy in, process, copy out) timed beside
   it, and ``process`` alone over 100k floats for the unrolled vs one-vector loop, fuel on/off.

Method: each pair is timed in interleaved blocks (shuffled order per round, GC paused); the
ratio is the median over rounds of the two block medians' quotient.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
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


#: the stages of ``Runtime.open``, in order, as the breakdown row names them
OPEN_STAGES = (
    "read + unpack",
    "signature + parse",
    "member hashes",
    "unwrap key",
    "decrypt",
    "plaintext hash",
    "session",
    "pipeline + middleware",
)


def _staged_open(bundle: Path, device: Any, trusted: list[Any], times: dict[str, list[float]]) -> Any:
    """``Runtime.open`` spelled out with the same reader functions ``open_bundle`` calls, timing
    each stage into ``times`` (the benchmark prints their medians next to the real call)."""
    from tinymlops.bundle import reader
    from tinymlops.bundle.container import unpack
    from tinymlops.edge.backends import open_backend
    from tinymlops.edge.middleware import build_chain
    from tinymlops.edge.runtime import Runtime
    from tinymlops.pipeline import build_pipeline

    clock = time.perf_counter
    t0 = clock()
    members = unpack(reader.read_source(bundle))
    payload = {k: v for k, v in members.items() if k not in ("manifest.json", "manifest.sig")}
    t1 = clock()
    manifest, _ = reader.verify_manifest(members["manifest.json"], members["manifest.sig"], trusted)
    t2 = clock()
    reader.check_members(manifest, payload)
    if manifest.check is not None:
        manifest = manifest.with_check_data(payload[manifest.check.member])
    t3 = clock()
    key = reader.content_key(manifest, device)
    t4 = clock()
    plain = reader.decrypt_members(manifest, payload, key)
    t5 = clock()
    models = reader.check_models(manifest, plain)
    t6 = clock()
    backends = {name: open_backend(data) for name, data in models.items()}
    t7 = clock()
    chain = build_chain(manifest.policies, None)
    runtime = Runtime(manifest, backends, build_pipeline(manifest.pipeline, backends, {}), chain)
    t8 = clock()
    for name, (a, b) in zip(OPEN_STAGES, pairwise((t0, t1, t2, t3, t4, t5, t6, t7, t8)), strict=True):
        times[name].append(b - a)
    return runtime


def _open_cost(ws: Any, tmp: Path, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_public_key
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.backends import ORT_PROVIDERS, ort_session_options
    from tinymlops.edge.runtime import Runtime

    device = DeviceKeys.generate()
    trusted = [release_public_key(ws)]
    ref = "cnn:1"
    plain = tmp / "cnn.onnx"
    model = ws.registry.read_bytes(ws.registry.resolve(ref))
    plain.write_bytes(model)
    bundle = tmp / "cnn-open.tmlb"
    build_bundle(ws, ref, target="x86-edge-server", device_public_key=device.wrapping_public, out=bundle)
    # the baseline gets exactly the options and providers every session of the runtime gets
    opts, providers = ort_session_options(1), list(ORT_PROVIDERS)
    times: dict[str, list[float]] = {name: [] for name in OPEN_STAGES}
    fns = {
        "InferenceSession(path)": lambda: ort.InferenceSession(str(plain), sess_options=opts, providers=providers),
        "InferenceSession(bytes)": lambda: ort.InferenceSession(model, sess_options=opts, providers=providers),
        "Runtime.open(bundle)": lambda: Runtime.open(bundle, device, trusted),
        "staged": lambda: _staged_open(bundle, device, trusted, times),
    }  # fmt: skip
    blocks = _interleaved(fns, rounds, block=5)
    stages = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
    return {
        "session_ms": float(np.median(blocks["InferenceSession(path)"])) * 1e3,
        "session_bytes_ms": float(np.median(blocks["InferenceSession(bytes)"])) * 1e3,
        "bundle_ms": float(np.median(blocks["Runtime.open(bundle)"])) * 1e3,
        "staged_ms": float(np.median(blocks["staged"])) * 1e3,
        "ratio": _ratio(blocks, "Runtime.open(bundle)", "InferenceSession(path)"),
        "bytes_ratio": _ratio(blocks, "InferenceSession(bytes)", "InferenceSession(path)"),
        "stages_ms": stages,
        "model_bytes": len(model),
        "bundle_bytes": bundle.stat().st_size,
    }


def _wasm_cost(rounds: int) -> dict[str, Any]:
    """The step vs numpy, and the step's three parts timed alone beside them: the copy into
    linear memory, ``process`` (call + loop, fuel reset included) and the copy out."""
    from tinymlops.pipeline.wasm import WasmStep, builtin_module

    out = {}
    for n in (1_000, 100_000):
        x = np.random.default_rng(0).normal(size=n).astype(np.float32)
        step = WasmStep(builtin_module("normalize"), label="normalize", params=[0.5, 2.0])
        mean, std = 0.5, 2.0
        ref = (x - mean) / std
        max_abs_diff = float(np.max(np.abs(step(x) - ref)))  # also sizes the step's buffer
        view, ptr, fuel = step._view, step._buf_ptr, step.limits.fuel + step.limits.fuel_per_value * n
        fns = {
            "numpy": lambda x=x, m=mean, sd=std: (x - m) / sd,
            "wasm": lambda x=x, s=step: s(x),
            "copy in": lambda x=x, v=view, n=n: v.__setitem__(slice(0, n), x),
            "process": lambda s=step, p=ptr, n=n, f=fuel: s._process(f, p, n),
            "copy out": lambda v=view, n=n: v[:n].copy(),
        }
        blocks = _interleaved(fns, rounds)
        out[str(n)] = {
            "numpy_us": float(np.median(blocks["numpy"])) * 1e6,
            "wasm_us": float(np.median(blocks["wasm"])) * 1e6,
            "ratio": _ratio(blocks, "wasm", "numpy"),
            "overhead_us": float(np.median(blocks["wasm"] - blocks["numpy"])) * 1e6,
            "copy_in_us": float(np.median(blocks["copy in"])) * 1e6,
            "process_us": float(np.median(blocks["process"])) * 1e6,
            "copy_out_us": float(np.median(blocks["copy out"])) * 1e6,
            "max_abs_diff": max_abs_diff,
            "fast_path": bool(step.fast),
        }
    out["100000"]["loop_us"] = _wasm_loop_cost(rounds)
    return out


# normalize's process as it was before the unrolling: one f32x4 per loop iteration
_WASM_ONE_VECTOR_LOOP = """
(module
  (memory (export "memory") 8)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param $ptr i32) (param $n i32) (result i32)
    (local $end4 i32) (local $m4 v128) (local $s4 v128)
    (local.set $m4 (f32x4.splat (f32.const 0.5)))
    (local.set $s4 (f32x4.splat (f32.const 0.5)))
    (local.set $end4
      (i32.add (local.get $ptr) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done4
      (loop $simd
        (br_if $done4 (i32.ge_u (local.get $ptr) (local.get $end4)))
        (v128.store (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 16)))
        (br $simd)))
    (i32.const 0)))
"""


def _wasm_loop_cost(rounds: int, n: int = 100_000) -> dict[str, float]:
    """``process`` alone over ``n`` floats (no fuel reset, no copies): the shipped normalize
    loop (16 vectors per iteration) vs a one-vector loop, each with wasmtime's fuel metering
    on and off — what unrolling buys and what metering costs on this machine."""
    import wasmtime as wt

    from tinymlops.pipeline.wasm import _FastCall, builtin_module, wat_to_wasm

    modules = {
        "16 vectors/iteration": builtin_module("normalize"),
        "1 vector/iteration": wat_to_wasm(_WASM_ONE_VECTOR_LOOP),
    }
    fns = {}
    for fuel in (True, False):
        config = wt.Config()
        config.consume_fuel = fuel
        engine = wt.Engine(config)
        for label, wasm in modules.items():
            store = wt.Store(engine)
            if fuel:
                store.set_fuel(10**15)  # one budget for the whole run: only the metering is timed
            exports = wt.Instance(store, wt.Module(engine, wasm), []).exports(store)
            call = _FastCall(store, exports["process"], 2)
            call._slots[0].i32, call._slots[1].i32 = exports["alloc"](store, 4 * n), n
            fns[f"{label}, fuel {'on' if fuel else 'off'}"] = lambda c=call: c._call(*c._frame)
    blocks = _interleaved(fns, rounds)
    return {name: float(np.median(v)) * 1e6 for name, v in blocks.items()}


def run(quick: bool) -> dict[str, Any]:
    from tinymlops.workspace import Workspace

    rounds = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-runtime-") as d:
        tmp = Path(d)
        ws = Workspace.init(tmp / "ws")
        try:
            predict = _predict_overhead(ws, tmp, rounds)
            opening = _open_cost(ws, tmp, rounds)
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
            f"{opening['ratio']:.3f} ({opening['bundle_ms']:.2f} ms vs {opening['session_ms']:.2f} ms; "
            + ", ".join(f"{k} {v:.2f}" for k, v in opening["stages_ms"].items())
            + ")",
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
    t2 = Table(title="Opening a model (same SessionOptions and providers)", title_justify="left")
    for col in ("InferenceSession(path) ms", "InferenceSession(bytes) ms", "Runtime.open(bundle) ms", "ratio",
                "model bytes", "bundle bytes"):  # fmt: skip
        t2.add_column(col, justify="right")
    t2.add_row(
        fmt_ms(o["session_ms"]), f"{fmt_ms(o['session_bytes_ms'])} ({o['bytes_ratio']:.2f}x)", fmt_ms(o["bundle_ms"]),
        f"{o['ratio']:.3f}", f"{o['model_bytes']:,}", f"{o['bundle_bytes']:,}",
    )  # fmt: skip
    stages = o["stages_ms"]
    t2b = Table(title="Where Runtime.open's time goes (median per stage)", title_justify="left")
    for col in (*stages, "sum", "Runtime.open"):
        t2b.add_column(col, justify="right")
    t2b.add_row(*(fmt_ms(v) for v in stages.values()), fmt_ms(sum(stages.values())), fmt_ms(o["bundle_ms"]))
    t3 = Table(title="WebAssembly normalize vs numpy (wasm = copy in + process + copy out + Python)",
               title_justify="left")  # fmt: skip
    for col in ("floats", "numpy us", "wasm us", "ratio", "overhead us", "copy in us", "process us", "copy out us",
                "fast path"):  # fmt: skip
        t3.add_column(col, justify="right")
    for n, w in result["wasm"].items():
        t3.add_row(
            f"{int(n):,}", f"{w['numpy_us']:.1f}", f"{w['wasm_us']:.1f}", f"{w['ratio']:.2f}",
            f"{w['overhead_us']:.1f}", f"{w['copy_in_us']:.1f}", f"{w['process_us']:.1f}", f"{w['copy_out_us']:.1f}",
            str(w["fast_path"]),
        )  # fmt: skip
    loop = result["wasm"]["100000"]["loop_us"]
    t3.caption = "process alone over 100,000 floats (us): " + ", ".join(f"{k} {v:.1f}" for k, v in loop.items())
    return [t, t2, t2b, t3, goals_table(result)]
