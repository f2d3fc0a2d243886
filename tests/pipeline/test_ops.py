"""Built-in ops against NumPy references, build-time validation, and pipelines on a real model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from tinymlops.edge.backends import open_backend
from tinymlops.errors import InputMismatchError, PipelineError, StageError
from tinymlops.pipeline import (
    OPS,
    BuildContext,
    PipelineResult,
    RunContext,
    Stage,
    ValueInfo,
    build_pipeline,
    register,
    validate_pipeline,
)
from tinymlops.spec import PipelineSpec, StageSpec, TensorSpec

RNG = np.random.default_rng(0)
DIGITS_IN = (TensorSpec("input", ("batch", 1, 8, 8), "float32"),)
DIGITS_OUT = (TensorSpec("output", ("batch", 10), "float32"),)
SIGS = {"main": (DIGITS_IN, DIGITS_OUT)}


def run_op(op: str, params: Mapping[str, Any], value: Any, *, where: str = "post", info: ValueInfo | None = None):
    """Validate, build and run one op on ``value``; return (result, side outputs)."""
    stage = StageSpec(op, params)
    ctx = BuildContext(where, 0, stage, SIGS, {})
    OPS[op].validate(stage.params, ctx, info or ValueInfo())
    fn = OPS[op].build(stage.params, ctx)
    run = RunContext({}, [], {})
    return fn(value, run), run.outputs


def spec(pre: list[dict] | None = None, post: list[dict] | None = None) -> PipelineSpec:
    return PipelineSpec.from_dict({"spec_version": "1.0", "pre": pre or [], "post": post or []})


# --- each op against NumPy ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float64", "int8", "uint8", "int32", "int64", "bool"])
def test_cast(dtype: str) -> None:
    x = RNG.normal(0, 50, (4, 5)).astype(np.float32)
    y, _ = run_op("cast", {"dtype": dtype}, x)
    np.testing.assert_array_equal(y, x.astype(dtype))
    assert y.dtype == np.dtype(dtype)


def test_scale() -> None:
    x = RNG.integers(0, 255, (3, 8, 8)).astype(np.uint8)
    y, _ = run_op("scale", {"multiply": 1 / 255, "add": -0.5}, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5), rtol=1e-6)
    y, _ = run_op("scale", {}, x)
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_normalize_scalar_and_per_channel() -> None:
    x = RNG.normal(3, 2, (5, 3, 4, 4)).astype(np.float32)
    y, _ = run_op("normalize", {"mean": 3.0, "std": 2.0}, x)
    np.testing.assert_allclose(y, (x - 3.0) / 2.0, rtol=1e-6)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    y, _ = run_op("normalize", {"mean": mean, "std": std}, x)
    ref = (x - np.array(mean, np.float32)[None, :, None, None]) / np.array(std, np.float32)[None, :, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert y.dtype == np.float32
    # channels last, scalar std broadcast over per-channel mean
    z = RNG.normal(0, 1, (2, 4, 4, 3)).astype(np.float32)
    y, _ = run_op("normalize", {"mean": mean, "std": 0.5, "axis": -1}, z)
    np.testing.assert_allclose(y, (z - np.array(mean, np.float32)) / np.float32(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="3 per-channel values"):
        run_op("normalize", {"mean": mean, "std": std}, RNG.normal(0, 1, (2, 4, 8, 8)))


def test_reshape_keeps_the_batch_axis() -> None:
    x = RNG.normal(0, 1, (6, 64)).astype(np.float32)
    y, _ = run_op("reshape", {"shape": [1, 8, 8]}, x)
    np.testing.assert_array_equal(y, x.reshape(6, 1, 8, 8))
    y, _ = run_op("reshape", {"shape": [-1, 8]}, x)
    assert y.shape == (6, 8, 8)
    with pytest.raises(ValueError, match=r"cannot reshape a value of shape \[6, 64\]"):
        run_op("reshape", {"shape": [1, 8, 7]}, x)


def test_clip() -> None:
    x = RNG.normal(0, 3, (4, 10)).astype(np.float32)
    for params, lo, hi in [({"min": -1, "max": 2}, -1, 2), ({"min": 0}, 0, None), ({"max": 0.5}, None, 0.5)]:
        y, _ = run_op("clip", params, x)
        np.testing.assert_array_equal(y, np.clip(x, lo, hi))
        assert y.dtype == np.float32
    ints = np.arange(-5, 5, dtype=np.int16)
    y, _ = run_op("clip", {"min": -2, "max": 3}, ints)
    np.testing.assert_array_equal(y, np.clip(ints, -2, 3))
    assert y.dtype == np.int16


def _softmax_ref(x: np.ndarray, axis: int) -> np.ndarray:
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis: int) -> None:
    x = RNG.normal(0, 4, (5, 7)).astype(np.float32)
    y, _ = run_op("softmax", {"axis": axis}, x)
    np.testing.assert_allclose(y, _softmax_ref(x, axis), rtol=1e-5, atol=1e-7)
    assert y.dtype == np.float32
    big = np.array([[1000.0, 999.0, -1000.0]], np.float32)  # no overflow
    y, _ = run_op("softmax", {}, big)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, _softmax_ref(big, -1), rtol=1e-5)


def test_argmax() -> None:
    x = RNG.normal(0, 1, (6, 10)).astype(np.float32)
    y, _ = run_op("argmax", {}, x)
    np.testing.assert_array_equal(y, np.argmax(x, axis=-1))
    assert y.dtype == np.int64
    y, _ = run_op("argmax", {"axis": 0}, x)
    np.testing.assert_array_equal(y, np.argmax(x, axis=0))


def test_top_k_indices_flow_values_are_recorded() -> None:
    x = RNG.normal(0, 1, (8, 10)).astype(np.float32)
    y, side = run_op("top_k", {"k": 3}, x)
    ref = np.argsort(-x, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(side["top_k.values"], np.take_along_axis(x, ref, axis=-1))
    assert (np.diff(side["top_k.values"], axis=-1) <= 0).all()
    # ties keep index order; integer input works
    y, side = run_op("top_k", {"k": 2}, np.array([[1, 5, 5, 0]], np.uint8))
    assert y.tolist() == [[1, 2]] and side["top_k.values"].tolist() == [[5, 5]]
    y, _ = run_op("top_k", {"k": 2, "axis": 0}, x)
    np.testing.assert_array_equal(y, np.argsort(-x, axis=0, kind="stable")[:2])


def test_threshold() -> None:
    x = np.array([[0.1, 0.5, 0.9]], np.float32)
    y, _ = run_op("threshold", {"value": 0.5}, x)
    assert y.tolist() == [[0, 1, 1]] and y.dtype == np.int64
    y, _ = run_op("threshold", {"value": 0.5, "as_bool": True}, x)
    np.testing.assert_array_equal(y, x >= 0.5)


def test_label_map() -> None:
    labels = ["cat", "dog", "emu"]
    y, _ = run_op("label_map", {"labels": labels}, np.array([2, 0, 1]))
    assert y == ["emu", "cat", "dog"]
    y, _ = run_op("label_map", {"labels": labels}, np.array([[0, 2], [1, 1]]))
    assert y == [["cat", "emu"], ["dog", "dog"]]
    assert run_op("label_map", {"labels": labels}, np.int64(1))[0] == "dog"
    with pytest.raises(ValueError, match="out of range"):
        run_op("label_map", {"labels": labels}, np.array([3]))
    with pytest.raises(ValueError, match="integer class indices"):
        run_op("label_map", {"labels": labels}, np.array([0.5]))


# --- build-time validation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pre", "post", "match"),
    [
        ([], [{"op": "nope"}], r"post stage 0 \(nope\): unknown op 'nope'; known ops: argmax"),
        ([{"op": "cast"}], [], r"pre stage 0 \(cast\): param 'dtype' is required"),
        ([{"op": "cast", "params": {"dtype": "complex64"}}], [], "param 'dtype' must be one of"),
        ([], [{"op": "softmax", "params": {"axis": 2}}], "param 'axis' is 2 but the value here has rank 2"),
        ([], [{"op": "softmax", "params": {"dim": 1}}], r"unknown parameter\(s\) dim; 'softmax' takes: axis"),
        ([], [{"op": "top_k", "params": {"k": 11}}], "param 'k' is 11 but axis 1 of the value here has only 10"),
        ([], [{"op": "top_k", "params": {"k": 0}}], "param 'k' must be >= 1"),
        ([], [{"op": "top_k", "params": {"k": True}}], "param 'k' must be an integer"),
        ([], [{"op": "threshold"}], "param 'value' is required"),
        ([], [{"op": "clip", "params": {"min": 2, "max": 1}}], "param 'min' 2.0 is greater than 'max'"),
        ([], [{"op": "clip"}], "needs 'min', 'max' or both"),
        ([], [{"op": "normalize", "params": {"mean": 0, "std": 0}}], "param 'std' must be > 0"),
        ([], [{"op": "normalize", "params": {"mean": [0, 1], "std": [1, 1, 1]}}], "has 3 values but 'mean' has 2"),
        ([], [{"op": "normalize", "params": {"mean": [0, 1], "std": 1}}], "2 per-channel values but axis 1"),
        ([], [{"op": "label_map", "params": {"labels": ["a"]}}], "needs class indices"),
        ([], [{"op": "argmax"}, {"op": "label_map", "params": {"labels": ["a", "b"]}}], "has 2 labels but"),
        ([], [{"op": "argmax"}, {"op": "label_map", "params": {"labels": []}}], "non-empty list of strings"),
        (
            [],
            [{"op": "argmax"}, {"op": "label_map", "params": {"labels": list("abcdefghij")}}, {"op": "softmax"}],
            "cannot follow label_map",
        ),
        ([{"op": "label_map", "params": {"labels": ["a"]}}], [], "can only run in post-processing"),
        ([{"op": "reshape", "params": {"shape": [8, 9]}}], [], r"produces shape \[\?, 8, 9\] but the main model"),
        ([{"op": "reshape", "params": {"shape": [-1, -1]}}], [], "at most one -1"),
        (
            [{"op": "reshape", "params": {"shape": [64]}}, {"op": "reshape", "params": {"shape": [7, -1]}}],
            [],
            r"\[7, -1\] cannot hold the 64 values",
        ),
        (
            [{"op": "reshape", "params": {"shape": [64]}}, {"op": "reshape", "params": {"shape": [1, 8, 7]}}],
            [],
            "holds 56 values per item but the value here has 64",
        ),
        ([{"op": "cast", "params": {"dtype": "int8"}}], [], "produces int8 but the main model's input"),
        ([], [{"op": "softmax", "name": "output"}], "also the name of a model output"),
        ([{"op": "wasm", "params": {"module": "norm"}}], [], "names WebAssembly module 'norm', which the bundle"),
    ],
)
def test_invalid_pipelines_are_refused_at_build_time(pre: list, post: list, match: str) -> None:
    with pytest.raises(PipelineError, match=match):
        validate_pipeline(spec(pre, post), SIGS, {})


def test_validation_errors_carry_details() -> None:
    with pytest.raises(PipelineError) as info:
        validate_pipeline(spec(post=[{"op": "softmax"}, {"op": "top_k", "name": "best", "params": {"k": -1}}]), SIGS)
    err = info.value
    assert "pipeline post stage 1 (top_k 'best'): param 'k'" in err.message
    assert err.details == {"where": "post", "stage": 1, "op": "top_k", "param": "k"}


def test_validate_accepts_signature_objects_and_checks_main() -> None:
    class Info:
        inputs, outputs = DIGITS_IN, DIGITS_OUT

    validate_pipeline(spec(post=[{"op": "softmax"}]), {"main": Info()})
    validate_pipeline(spec(post=[{"op": "softmax"}]), {"small": Info()}, main="small")
    with pytest.raises(PipelineError, match="no model named 'main'"):
        validate_pipeline(spec(post=[{"op": "softmax"}]), {"small": Info()})
    with pytest.raises(PipelineError, match=r"must be given as \(inputs, outputs\)"):
        validate_pipeline(spec(), {"main": 42})
    two_inputs = (DIGITS_IN * 2, DIGITS_OUT)
    with pytest.raises(PipelineError, match="the main model has 2 inputs"):
        validate_pipeline(spec(pre=[{"op": "scale"}]), {"main": two_inputs})


# --- custom ops are plug-ins ---------------------------------------------------------------------
class Explode(Stage):
    op = "explode_for_test"
    allowed = frozenset({"message"})
    where = ("post",)

    def check(self, params, ctx, info):
        if not isinstance(params.get("message", ""), str):
            raise ctx.error("must be a string", "message")
        return info

    def build(self, params, ctx):
        def explode(v, run):
            raise RuntimeError(params.get("message", "boom"))

        return explode


@pytest.fixture
def explode_op():
    register(Explode)
    yield
    OPS.pop(Explode.op)


# --- pipelines on a real model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn(digits_model):
    return open_backend(digits_model.onnx)


def test_no_pipeline_gives_the_model_outputs_unchanged(cnn, digits_model) -> None:
    x = digits_model.x_test[:5]
    result = build_pipeline(PipelineSpec(), {"main": cnn}).run(x)
    assert isinstance(result, PipelineResult) and result.models_called == ("main",)
    assert list(result.outputs) == ["output"] and result.primary == "output"
    np.testing.assert_array_equal(result.value, cnn.session.run(None, {"input": x})[0])
    assert build_pipeline(None, {"main": cnn}).run({"input": x}).outputs.keys() == {"output"}


def test_full_pipeline_on_digits_matches_numpy(cnn, digits_model) -> None:
    flat = (digits_model.x_test * 16.0).reshape(len(digits_model.x_test), 64)  # raw 0..16 pixels, flat
    labels = [f"digit-{i}" for i in range(10)]
    pipe = build_pipeline(
        spec(
            pre=[
                {"op": "scale", "params": {"multiply": 1 / 16}},
                {"op": "reshape", "name": "image", "params": {"shape": [1, 8, 8]}},
            ],
            post=[
                {"op": "softmax", "name": "probabilities"},
                {"op": "top_k", "name": "best", "params": {"k": 2}},
                {"op": "label_map", "params": {"labels": labels}},
            ],
        ),
        {"main": cnn},
    )
    result = pipe.run(flat)
    logits = cnn.session.run(None, {"input": flat.reshape(-1, 1, 8, 8) / np.float32(16)})[0]
    ref_top = np.argsort(-logits, axis=1, kind="stable")[:, :2]
    assert result.value == [[labels[i] for i in row] for row in ref_top]
    assert set(result.outputs) == {"output", "image", "probabilities", "best", "best.values"}
    np.testing.assert_allclose(result.outputs["probabilities"], _softmax_ref(logits, -1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(result.outputs["best"], ref_top)
    accuracy = float(np.mean(ref_top[:, 0] == digits_model.y_test))
    assert accuracy > 0.9


def test_wrong_input_shape_or_dtype_is_refused_clearly(cnn, digits_model) -> None:
    pipe = build_pipeline(PipelineSpec(), {"main": cnn})
    x = digits_model.x_test[:2]
    with pytest.raises(InputMismatchError, match=r"expects float32 \[batch, 1, 8, 8\], got float32 \[2, 8, 8\]"):
        pipe.run(x[:, 0])
    with pytest.raises(InputMismatchError, match=r"got float64 \[2, 1, 8, 8\]; convert the input to float32") as info:
        pipe.run(x.astype(np.float64))
    assert info.value.details["expected_dtype"] == "float32" and info.value.details["shape"] == [2, 1, 8, 8]
    with pytest.raises(InputMismatchError, match="got int64"):
        pipe.run(np.zeros((1, 1, 8, 8), dtype=np.int64))
    with pytest.raises(InputMismatchError, match="must be an array"):
        pipe.run([[1, 2], [3]])
    with pytest.raises(InputMismatchError, match="missing model input 'input'"):
        pipe.run({"x": x})
    reshaping = build_pipeline(spec(pre=[{"op": "reshape", "params": {"shape": [1, 8, 8]}}]), {"main": cnn})
    with pytest.raises(
        InputMismatchError, match=r"pre stage 0 \(reshape\) cannot take the input \(float32 \[2, 63\]\)"
    ):
        reshaping.run(np.zeros((2, 63), np.float32))
    with pytest.raises(InputMismatchError, match="after pre-processing"):
        reshaping.run(np.zeros((2, 64), np.float64))
    np.testing.assert_array_equal(reshaping.run(x.reshape(2, 64)).value, pipe.run(x).value)


def test_a_failing_post_stage_is_a_stage_error(cnn, digits_model, explode_op) -> None:
    pipe = build_pipeline(spec(post=[{"op": "explode_for_test", "params": {"message": "kaput"}}]), {"main": cnn})
    with pytest.raises(StageError, match=r"post stage 0 \(explode_for_test\) failed: kaput"):
        pipe.run(digits_model.x_test[:1])
    with pytest.raises(PipelineError, match="param 'message' must be a string"):
        validate_pipeline(spec(post=[{"op": "explode_for_test", "params": {"message": 1}}]), SIGS)


def test_build_from_a_manifest_table(cnn, digits_model) -> None:
    table = {"spec_version": "1.0", "post": [{"op": "argmax"}]}
    pred = build_pipeline(table, {"main": cnn}).run(digits_model.x_test[:7]).value
    np.testing.assert_array_equal(pred, np.argmax(cnn.session.run(None, {"input": digits_model.x_test[:7]})[0], 1))


def test_pipeline_package_stays_in_the_edge_closure() -> None:
    code = (
        "import sys, json; import tinymlops.pipeline, tinymlops.spec.pipeline;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    forbidden = {"onnx", "sqlalchemy", "torch", "fastapi", "flwr", "sklearn"}
    assert not loaded & forbidden
    assert "wasmtime" not in loaded  # imported only when a WebAssembly stage is built
