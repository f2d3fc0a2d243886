"""Per-device counters and their per-profile fold; the prediction workload a bundle gets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import tiny_onnx
from tinymlops.edge.backends import open_backend
from tinymlops.fleet.stats import BUCKETS_MS, DeviceStats, LatencyHistogram, summarize
from tinymlops.fleet.workload import digits_test_split, workload_for

latencies = st.lists(st.floats(0.001, 50_000.0), min_size=1, max_size=300)


@settings(max_examples=100, deadline=None)
@given(latencies, st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_histogram_percentiles_are_within_one_bucket_of_the_exact_ones(values: list[float], q: float) -> None:
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    exact = sorted(values)[max(1, int(np.ceil(q * len(values)))) - 1]
    got = hist.percentile(q)
    assert got is not None
    assert exact <= got <= max(exact, BUCKETS_MS[0]) * 2 ** (1 / 4) * (1 + 1e-9)


@settings(max_examples=50, deadline=None)
@given(latencies, latencies)
def test_histograms_add_up(a: list[float], b: list[float]) -> None:
    ha, hb, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in a:
        ha.add(v)
        both.add(v)
    for v in b:
        hb.add(v)
        both.add(v)
    ha.merge(hb)
    assert ha.counts == both.counts and ha.total == len(a) + len(b)
    assert LatencyHistogram().percentile(0.5) is None
    with pytest.raises(ValueError, match="buckets"):
        LatencyHistogram([1, 2, 3])


def _device(name: str, entry: str, **values: Any) -> dict[str, Any]:
    s = DeviceStats(name, entry, entry)
    with s:
        for k, v in values.items():
            setattr(s, k, v)
    return s.to_dict()


def test_summaries_fold_devices_per_profile_and_in_total() -> None:
    devices = [
        _device(
            "d1",
            "rpi-4",
            predictions=10,
            labelled=10,
            correct=9,
            cycles={"idle": 3, "installed": 1},
            device_id="a",
            bundle_id="b",
            ref="digits:1",
            context={"network_s": {"wifi": 5.0, "offline": 1.0}, "flat_s": 0.0, "battery": 1.0},
        ),
        _device(
            "d2",
            "rpi-4",
            predictions=5,
            errors=1,
            refused=2,
            cycles={"offline": 2, "error": 1},
            context={"network_s": {"wifi": 3.0, "offline": 3.0}, "flat_s": 0.0, "battery": 1.0},
        ),
        _device(
            "d3",
            "phone",
            offline_predictions=4,
            predictions=4,
            labelled=4,
            correct=1,
            device_id="c",
            context={"network_s": {"cellular": 6.0}, "flat_s": 2.5, "battery": 0.5},
        ),
    ]
    out = summarize(devices)
    rpi, phone = out["profiles"]
    assert (rpi["profile"], rpi["devices"], rpi["enrolled"], rpi["serving"]) == ("rpi-4", 2, 1, 1)
    assert (rpi["predictions"], rpi["errors"], rpi["refused"], rpi["installs"], rpi["cycle_errors"]) == (15, 1, 2, 1, 1)
    assert rpi["accuracy"] == 0.9 and rpi["offline_s"] == 4.0 and rpi["refs"] == ["digits:1"]
    assert phone["accuracy"] == 0.25 and phone["flat_s"] == 2.5 and phone["battery_mean"] == 0.5
    total = out["total"]
    assert total["predictions"] == 19 and total["offline_predictions"] == 4 and total["accuracy"] == 10 / 14
    assert total["network_s"] == {"cellular": 6.0, "offline": 4.0, "wifi": 8.0}
    assert total["states"] == {"starting": 3}


def flat_digits_onnx(shape: list[Any]) -> bytes:
    """A real ONNX model taking ``shape`` (64 values a sample): Flatten -> MatMul -> 10 scores."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 10])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("shape", [["batch", 1, 8, 8], ["batch", 64], [1, 8, 8]])
def test_a_model_taking_64_values_per_sample_gets_the_held_out_digits(shape: list[Any]) -> None:
    backend = open_backend(flat_digits_onnx(shape))
    w = workload_for(SimpleNamespace(backends={"main": backend}), seed=1)
    digits = digits_test_split()
    assert digits is not None
    assert w.kind == "digits" and len(w.x) == len(digits[0]) == 450
    seen = {w.next()[1] for _ in range(450)}
    assert seen == set(range(10))  # a permutation: every label comes round
    x, label = w.next()
    assert label is not None
    assert x.shape == (1, *shape[1:]) and x.flags.writeable and x.min() >= 0.0 and x.max() <= 1.0
    scores = backend.run(x)[0]
    assert w.score({"y": scores}, label) == (int(np.argmax(scores)) == label)
    one_hot = np.zeros((1, 10), np.float32)
    one_hot[0, label] = 1.0
    assert w.score({"y": one_hot}, label) is True
    assert w.score({"y": np.array([(label + 1) % 10])}, label) is False
    assert w.score({"y": np.zeros((1, 3), np.float32)}, label) is None


def test_another_model_gets_generated_inputs_of_its_shape_that_it_runs() -> None:
    backend = open_backend(tiny_onnx(1.0))
    runtime = SimpleNamespace(backends={"main": backend})
    w = workload_for(runtime, seed=3)
    assert w.kind == "generated" and w.y is None
    x, label = w.next()
    assert label is None and x.shape == (1, 4) and x.dtype == np.float32
    assert backend.run(x)[0].shape == (1, 2)
    np.testing.assert_array_equal(workload_for(runtime, seed=3).next()[0], x)  # seeded per device
    assert workload_for(SimpleNamespace(backends={}), seed=0).kind == "none"


def test_an_input_shift_moves_exactly_its_features_by_their_standard_deviations() -> None:
    from tinymlops.errors import UsageError
    from tinymlops.fleet.workload import InputShift, digits_test_split

    split = digits_test_split()
    assert split is not None
    x, _ = split
    shifted = InputShift((19, 20, 44), 0.5).apply(x)
    assert shifted.shape == x.shape and not np.shares_memory(shifted, x)
    flat, moved = x.reshape(len(x), -1), shifted.reshape(len(x), -1)
    delta = moved - flat
    std = flat.std(axis=0)
    for i in range(64):
        want = 0.5 * std[i] if i in (19, 20, 44) else 0.0
        np.testing.assert_allclose(delta[:, i], want, atol=1e-6)
    with pytest.raises(UsageError, match="outside the model input's 64 values"):
        InputShift((64,), 0.5).apply(x)
    for bad in ((), (1, 1), (-1,)):
        with pytest.raises(UsageError):
            InputShift(bad, 0.5)
    with pytest.raises(UsageError):
        InputShift((1,), float("nan"))
