"""Helpers shared by the benchmarks: machine description, timing statistics, goals, tables."""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                core = line.split(":", 1)[1].strip()
                pairs.add((phys, core))
        return len(pairs) or None
    except OSError:
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        modified = sorted(line[3:] for line in dirty.splitlines() if line.strip())
        return {"commit": commit, "dirty": bool(dirty.strip()), "modified": modified, "src_sha256": _src_digest()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "modified": None, "src_sha256": _src_digest()}


def _src_digest() -> str:
    """sha256 over src/tinymlops/**/*.py (path and bytes): which code was measured, even when the
    working tree has uncommitted edits."""
    h = hashlib.sha256()
    src = ROOT.parent / "src" / "tinymlops"
    for path in sorted(src.rglob("*.py")):
        h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (recorded in every result file)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    ort_build: dict[str, Any] = {}
    try:
        import onnxruntime as ort

        ort_build = {"device": ort.get_device(), "providers": ort.get_available_providers()}
    except ImportError:
        pass
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": affinity,
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("onnxruntime", "onnx", "numpy", "torch", "scikit-learn", "sqlalchemy", "psycopg", "tinymlops")
        },
        "onnxruntime_build": ort_build,
        "git": _git(),
    }


def stats_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """Median / p95 / mean / min of a list of durations in seconds, in milliseconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "n": int(a.size),
    }


def time_calls(fn: Callable[[], Any], runs: int, warmup: int = 1, *, pause_gc: bool = False) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times; return each duration (s).

    The garbage collector stays on by default: for calls that build many objects its pauses
    are part of what a caller waits for."""
    for _ in range(warmup):
        fn()
    out = []
    gc.collect()
    with gc_paused() if pause_gc else nullcontext():
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection pauses inside a timed region (collected before it starts)."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def interleaved_calls(fns: dict[str, Any], requests: list[Any], calls: int) -> dict[str, np.ndarray]:
    """Every function called once per round on the same request, in a shuffled order, each call timed:
    the chains compared see the same machine state within microseconds of each other (on this shared
    VM the model's own speed drifts by several percent over tens of milliseconds, so blocks of calls
    compared side by side differed by ±5% between identical chains). ``calls`` rounds, GC paused."""
    import random

    names = list(fns)
    out = {n: np.empty(calls) for n in names}
    for fn in fns.values():
        for r in requests[:300]:  # warm (bench_telemetry: past the recorder's first buffer reduction)
            fn(r)
    rng = random.Random(1)
    clock = time.perf_counter
    with gc_paused():
        for i in range(calls):
            rng.shuffle(names)
            r = requests[i % len(requests)]
            for n in names:
                fn = fns[n]
                t0 = clock()
                fn(r)
                out[n][i] = clock() - t0
    return out


def tiny_onnx(graph_name: str = "tiny") -> bytes:
    """A real ONNX model, a 4 → 2 MatMul: for benchmarks where the model's own cost should stay small."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        graph_name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def goal(name: str, passed: bool, measured: str, method: str, **extra: Any) -> dict[str, Any]:
    return {"goal": name, "passed": bool(passed), "measured": measured, "method": method, **extra}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def fmt_ms(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def pass_text(passed: bool | None) -> str:
    if passed is None:
        return "[yellow]n/a[/]"
    return "[green]PASS[/]" if passed else "[red]FAIL[/]"


def goals_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="Goals", title_justify="left")
    t.add_column("goal")
    t.add_column("result")
    t.add_column("measured")
    for g in result["goals"]:
        t.add_row(g["goal"], pass_text(g["passed"]), g["measured"])
    return t
