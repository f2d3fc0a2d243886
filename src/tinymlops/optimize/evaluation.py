"""Evaluating variants against their base on the model's eval set, on this host.

Per artifact: accuracy (when the eval set has labels and the output is a class score vector),
top-1 agreement with the base, RMS difference of outputs from the base's, size (raw and
compressed), batch-1 latency and peak memory (the rise of this process's peak RSS while the
model is loaded and run, read from Linux's VmHWM after resetting it).

Latency is measured for the base and all its variants *side by side*: timing them one after
another let machine noise show up as fake speed-ups (identical models measured 1.5x apart), and
selection ranks variants on these numbers.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.edge.backends import Backend, open_backend
from tinymlops.errors import TinyMLOpsError
from tinymlops.optimize.calibration import generated_inputs
from tinymlops.registry.records import ArtifactRecord
from tinymlops.registry.store import Registry
from tinymlops.spec.model_info import TensorSpec
from tinymlops.workspace.config import EvaluationConfig

GENERATED_EVAL_SAMPLES = 64


@cache
def host_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {platform.system()})"


@dataclass(frozen=True)
class EvalData:
    x: np.ndarray
    y: np.ndarray | None
    label: str


def eval_data(registry: Registry, base: ArtifactRecord, config: EvaluationConfig, seed: int = 0) -> EvalData:
    record = registry.dataset_for(base.model, "eval")
    if record is None:
        return EvalData(generated_inputs(base.info, GENERATED_EVAL_SAMPLES, seed), None, f"generated:seed={seed}")
    data = registry.load_dataset(record)
    n = data.n if config.max_samples == 0 else min(data.n, config.max_samples)
    return EvalData(data.x[:n].astype(np.float32), None if data.y is None else data.y[:n], record.label)


def _vm_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def score_output_index(outputs: Sequence[TensorSpec]) -> int:
    """Which output to compare: the first float output shaped [batch, classes>1] (scikit-learn
    classifiers put the label first and the probabilities second), else the first output."""
    for i, spec in enumerate(outputs):
        last = spec.shape[-1] if spec.shape else None
        if spec.dtype.startswith("float") and len(spec.shape) == 2 and isinstance(last, int) and last > 1:
            return i
    return 0


def _predict_all(backend: Any, x: np.ndarray) -> np.ndarray:
    index = score_output_index(backend.outputs)
    outs = [backend.run(x[i : i + 1])[index] for i in range(x.shape[0])]
    return np.concatenate(outs, axis=0)


#: timed runs per block in the interleaved latency measurement
LATENCY_BLOCK = 10
LATENCY_METHOD = (
    "batch 1 on this host, 1 intra-op thread; all artifacts of the version loaded together and timed "
    "in interleaved blocks of 10 runs (shuffled order per round, GC paused), so ratios between "
    "variants are measured side by side; p50/p95 over all timed runs"
)


def load_and_predict(model: bytes, fmt: str, data: EvalData) -> tuple[Backend, np.ndarray, dict[str, Any]]:
    """Load one model, run it over the eval inputs; report its memory (peak RSS rise)."""
    rss_before = _vm_kib("VmRSS")
    can_peak = _reset_peak_rss()
    backend = open_backend(model, fmt)
    outputs = _predict_all(backend, data.x)
    peak = _vm_kib("VmHWM") if can_peak else _vm_kib("VmRSS")
    metrics: dict[str, Any] = {"backend": backend.name}
    if rss_before is not None and peak is not None:
        metrics["peak_memory_bytes"] = max(0, peak - rss_before) * 1024
        metrics["peak_memory_method"] = "peak RSS rise while loading and running (VmHWM)" if can_peak else "RSS rise"
    return backend, outputs, metrics


def interleaved_latency(
    backends: Mapping[int, Backend], sample: np.ndarray, config: EvaluationConfig, seed: int = 0
) -> dict[int, dict[str, Any]]:
    """Batch-1 latency of several loaded models, measured side by side (see LATENCY_METHOD)."""
    for backend in backends.values():
        for _ in range(config.warmup):
            backend.run(sample)
    samples: dict[int, list[float]] = {k: [] for k in backends}
    rounds = max(1, -(-config.runs // LATENCY_BLOCK))
    order = list(backends)
    rng = random.Random(seed)
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for key in order:
                run = backends[key].run
                run(sample)  # one untimed run after switching models
                bucket = samples[key]
                for _ in range(LATENCY_BLOCK):
                    t0 = clock()
                    run(sample)
                    bucket.append((clock() - t0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        key: {
            "latency_ms_p50": float(np.percentile(ts, 50)),
            "latency_ms_p95": float(np.percentile(ts, 95)),
            "latency_ms_mean": float(np.mean(ts)),
            "latency_runs": len(ts),
            "latency_method": LATENCY_METHOD,
        }
        for key, ts in samples.items()
    }


def _is_classifier(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] > 1


def evaluate(
    registry: Registry,
    base: ArtifactRecord,
    artifacts: Sequence[ArtifactRecord],
    config: EvaluationConfig,
    *,
    seed: int = 0,
    on_done: Callable[[ArtifactRecord, dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Evaluate ``base`` and each of ``artifacts`` (variants of it) and store the results."""
    data = eval_data(registry, base, config, seed)
    host = host_description()
    todo = [base, *[a for a in artifacts if a.id != base.id]]
    results: dict[int, dict[str, Any]] = {}
    outputs: dict[int, np.ndarray] = {}
    backends: dict[int, Backend] = {}
    for artifact in todo:
        model = registry.read_bytes(artifact)
        try:
            backends[artifact.id], outputs[artifact.id], metrics = load_and_predict(model, artifact.format, data)
        except TinyMLOpsError as exc:
            metrics = {"error": exc.message}
        metrics["size_bytes"] = artifact.size_bytes
        metrics["size_ratio"] = artifact.size_bytes / base.size_bytes
        # what a download costs: pruning zeros weights without shrinking the dense file, but the zeros compress
        metrics["compressed_bytes"] = len(zlib.compress(model, 6))
        metrics["samples"] = int(data.x.shape[0])
        results[artifact.id] = metrics
    for key, latency in interleaved_latency(backends, data.x[:1], config, seed).items():
        results[key].update(latency)
    backends.clear()

    base_out = outputs.get(base.id)
    for artifact in todo:
        metrics = results[artifact.id]
        out = outputs.get(artifact.id)
        if out is not None:
            if _is_classifier(out):
                pred = out.argmax(axis=1)
                if data.y is not None:
                    metrics["accuracy"] = float(np.mean(pred == data.y))
                if base_out is not None:
                    metrics["agreement"] = float(np.mean(pred == base_out.argmax(axis=1)))
            if base_out is not None and base_out.shape == out.shape:
                metrics["rmse_vs_base"] = float(np.sqrt(np.mean((out - base_out) ** 2)))
        registry.add_evaluation(artifact.id, data.label, host, metrics)
        if on_done:
            on_done(artifact, metrics)
    return results
