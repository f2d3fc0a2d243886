"""Aggregation of telemetry windows (pure): latency merged exactly (the sum of the windows' buckets is
the histogram of every call), energy per method never mixed silently, and the per-class comparison
of a release's bundles with the ones they replaced, on the devices that have both."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.edge.agent.serving_stats import LatencyHistogram
from tinymlops.observe.performance import Member, WindowPerf, aggregate, by_class, compare_classes
from tinymlops.observe.recorder import latency_buckets

latency_lists = st.lists(st.floats(1e-6, 10.0, allow_nan=False), min_size=1, max_size=60)


def _window(device: str, bundle: str, latencies: list[float], *, profile: str = "rpi-4", errors: int = 0,
            joules: float | None = None, method: str = "model", peak: int | None = None) -> WindowPerf:  # fmt: skip
    h = LatencyHistogram()
    for s in latencies:
        h.add(s)
    buckets = latency_buckets(h)
    return WindowPerf(
        device_id=device,
        profile=profile,
        bundle_id=bundle,
        ref="m:1",
        requests=len(latencies) + errors,
        errors=errors,
        latency=None if buckets is None else buckets.to_dict(),
        energy_j=joules,
        energy_method=None if joules is None else method,
        energy_inferences=None if joules is None else len(latencies),
        peak_memory_bytes=peak,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(latency_lists, min_size=1, max_size=6))
def test_merged_percentiles_are_those_of_every_call(windows: list[list[float]]) -> None:
    stats = aggregate(_window("d", "b", w) for w in windows)
    union = LatencyHistogram()
    for w in windows:
        for s in w:
            union.add(s)
    want = [v * 1e3 for v in union.quantiles([0.5, 0.95, 0.99])]
    assert [stats.p50_ms, stats.p95_ms, stats.p99_ms] == pytest.approx(want, rel=1e-12)
    assert stats.latency_samples == sum(len(w) for w in windows)
    everything = np.concatenate([np.array(w) for w in windows])
    for q, got in ((50, stats.p50_ms), (95, stats.p95_ms)):
        exact = float(np.percentile(everything, q, method="inverted_cdf")) * 1e3
        assert got == pytest.approx(exact, rel=0.0101, abs=1e-6)


def test_energy_is_weighted_per_method_and_mixing_is_said() -> None:
    stats = aggregate(
        [
            _window("a", "b", [0.001] * 30, joules=0.002, method="rapl", peak=10),
            _window("b", "b", [0.001] * 10, joules=0.006, method="rapl", peak=30),
            _window("c", "b", [0.001] * 20, joules=0.010, method="model", errors=5),
        ]
    )
    by = {e.method: e for e in stats.energy}
    assert by["rapl"].joules_per_inference == pytest.approx((30 * 0.002 + 10 * 0.006) / 40)
    assert by["rapl"].inferences == 40 and by["model"].joules_per_inference == pytest.approx(0.010)
    assert stats.energy_method == "mixed" and stats.peak_memory_bytes == 30
    assert (stats.requests, stats.errors, stats.devices, stats.windows) == (65, 5, 3, 3)
    assert stats.error_rate == pytest.approx(5 / 65)
    classes = by_class([_window("x", "b", [0.1], profile="z"), _window("y", "b", [0.1], profile="a")])
    assert [(c.profile, c.stats.windows) for c in classes] == [("a", 1), ("z", 1)]


def test_a_class_comparison_counts_only_devices_with_both_bundles() -> None:
    members = [
        Member("d1", "rpi-4", "new1", "old1"),
        Member("d2", "rpi-4", "new2", "old2"),
        Member("d3", "rpi-4", "new3", None),  # a first install: no baseline
        Member("d4", "x86", "new4", "old4"),
    ]
    windows = [
        _window("d1", "old1", [0.002] * 100, joules=0.01, method="rapl"),
        _window("d1", "new1", [0.004] * 100, joules=0.02, method="rapl"),
        _window("d2", "old2", [0.050] * 100, joules=0.5, method="rapl"),  # no telemetry from its new bundle yet
        _window("d3", "new3", [0.100] * 100, joules=1.0, method="rapl"),
        _window("d4", "old4", [0.002] * 50, joules=0.01, method="model"),
        _window("d4", "new4", [0.002] * 50, joules=0.01, method="rapl"),  # another method: no energy pair
    ]
    rpi, x86 = compare_classes(members, windows)
    assert (rpi.profile, rpi.devices) == ("rpi-4", 2)
    assert (rpi.new_latency_samples, rpi.base_latency_samples) == (100, 100)
    assert rpi.p95_ratio == pytest.approx(2.0, rel=0.02) and rpi.energy_ratio == pytest.approx(2.0)
    assert rpi.energy_method == "rapl" and rpi.latency_baseline and rpi.energy_baseline
    assert x86.energy_baseline and x86.energy_method is None and x86.energy_ratio is None
    assert x86.p95_ratio == pytest.approx(1.0)


def test_energy_is_compared_on_the_method_with_the_most_paired_samples_rapl_on_a_tie() -> None:
    """A class whose devices measure with RAPL and estimate with the power model: the comparison uses
    ONE method for both sides — the one with the most paired inferences (the smaller side of the
    pair counts), RAPL when they tie — and never mixes the two."""
    members = [Member(d, p, f"new-{d}", f"old-{d}") for d, p in (("d1", "a"), ("d2", "a"), ("d3", "b"),
               ("d4", "b"), ("d5", "c"), ("d6", "c"))]  # fmt: skip

    def pair(device: str, method: str, base: tuple[int, float], new: tuple[int, float]) -> list[WindowPerf]:
        (nb, jb), (nn, jn) = base, new
        return [
            _window(device, f"old-{device}", [0.001] * nb, joules=jb, method=method),
            _window(device, f"new-{device}", [0.001] * nn, joules=jn, method=method),
        ]

    windows = [
        *pair("d1", "rapl", (10, 0.01), (10, 0.03)),  # class a: rapl pairs 10 inferences, ratio 3
        *pair("d2", "model", (40, 0.10), (40, 0.20)),  # ... model pairs 40, ratio 2: model wins
        *pair("d3", "rapl", (20, 0.01), (20, 0.03)),  # class b: 20 and 20, a tie: rapl
        *pair("d4", "model", (20, 0.10), (20, 0.20)),
        *pair("d5", "model", (10, 0.10), (100, 0.20)),  # class c: model pairs min(10, 100) = 10 ...
        *pair("d6", "rapl", (30, 0.01), (30, 0.03)),  # ... rapl 30: rapl, though model has more in all
    ]
    a, b, c = compare_classes(members, windows)
    assert (a.profile, a.energy_method, a.new_energy_samples, a.base_energy_samples) == ("a", "model", 40, 40)
    assert (a.new_energy_j, a.base_energy_j, a.energy_ratio) == pytest.approx((0.20, 0.10, 2.0))
    assert (b.profile, b.energy_method, b.new_energy_samples, b.base_energy_samples) == ("b", "rapl", 20, 20)
    assert (b.new_energy_j, b.base_energy_j, b.energy_ratio) == pytest.approx((0.03, 0.01, 3.0))
    assert (c.profile, c.energy_method, c.new_energy_samples, c.base_energy_samples) == ("c", "rapl", 30, 30)
    assert c.energy_ratio == pytest.approx(3.0)
