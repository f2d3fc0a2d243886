"""Merging telemetry windows: how a device's upload store makes two waiting windows into one coarser
window instead of dropping either (issue 6: "oldest windows are merged into coarser ones").

:func:`merge_windows` takes two **exact** windows (histograms not privatized — privatize at upload,
with :func:`tinymlops.observe.privacy.privatize`, after merging) of the same bundle and returns one
window spanning both, in which nothing is lost that the spec can say: requests and errors add,
latency buckets add (the same log buckets: percentiles of the merged window are those of the
union), peak memory is the larger, energy per inference is the mean weighted by the measured calls,
and the input profiles merge exactly as :meth:`InputProfile.merge` defines (KLL sketch merge,
Chan's formula for the moments, histograms added).

Two cases keep one side only, and say so here rather than inventing numbers: energy measured by
different methods (``rapl`` and ``model`` do not average) keeps the side with more measured calls;
an input profile on one side only keeps that side's (its ``rows`` say how many rows it covers).
"""

from __future__ import annotations

from tinymlops.errors import UsageError
from tinymlops.observe.sketches import InputProfile
from tinymlops.spec.telemetry import (
    Energy,
    HistogramPrivacy,
    InputsSummary,
    LatencyBuckets,
    Performance,
    Privacy,
    TelemetryWindow,
)


def _exact(window: TelemetryWindow) -> bool:
    p = window.privacy
    return not p.withheld and all(h is None or h.mechanism == "none" for h in (p.classes, p.confidence))


def _latency(a: LatencyBuckets | None, b: LatencyBuckets | None) -> LatencyBuckets | None:
    if a is None or b is None:
        return a or b
    counts = dict(a.buckets)
    for index, n in b.buckets:
        counts[index] = counts.get(index, 0) + n
    return LatencyBuckets(tuple(sorted(counts.items())), min(a.min_s, b.min_s), max(a.max_s, b.max_s))


def _energy(a: Energy | None, b: Energy | None) -> Energy | None:
    if a is None or b is None:
        return a or b
    if a.method != b.method:
        return a if a.inferences >= b.inferences else b
    n = a.inferences + b.inferences
    joules = (a.joules_per_inference * a.inferences + b.joules_per_inference * b.inferences) / n
    return Energy(a.method, joules, n)


def _inputs(a: InputsSummary | None, b: InputsSummary | None) -> InputsSummary | None:
    if a is None or b is None:
        return a or b
    merged = InputProfile.from_window_dict(a)
    merged.merge(InputProfile.from_window_dict(b))
    return merged.summary()


def merge_windows(a: TelemetryWindow, b: TelemetryWindow) -> TelemetryWindow:
    """Both windows as one (see the module doc). UsageError for different bundles or models, or a
    window whose histograms were already privatized."""
    if a.bundle_id != b.bundle_id:
        raise UsageError(f"cannot merge a window of bundle {b.bundle_id} into one of bundle {a.bundle_id}")
    if a.model is not None and b.model is not None and a.model != b.model:
        raise UsageError(f"cannot merge windows of models {a.model!r} and {b.model!r}")
    if not (_exact(a) and _exact(b)):
        raise UsageError("only exact windows merge: privatize after merging, at upload")
    pa, pb = a.performance, b.performance
    memory = [m for m in (pa.peak_memory_bytes, pb.peak_memory_bytes) if m is not None]
    performance = Performance(
        requests=pa.requests + pb.requests,
        errors=pa.errors + pb.errors,
        latency=_latency(pa.latency, pb.latency),
        peak_memory_bytes=max(memory) if memory else None,
        energy=_energy(pa.energy, pb.energy),
    )
    inputs = _inputs(a.inputs, b.inputs)
    exact = HistogramPrivacy("none")
    privacy = Privacy(
        classes=None if inputs is None or inputs.classes is None else exact,
        confidence=None if inputs is None or inputs.confidence is None else exact,
    )
    return TelemetryWindow(
        bundle_id=a.bundle_id,
        model=a.model if a.model is not None else b.model,
        window_start=min(a.window_start, b.window_start),
        window_end=max(a.window_end, b.window_end),
        performance=performance,
        inputs=inputs,
        privacy=privacy,
    )


__all__ = ["merge_windows"]
