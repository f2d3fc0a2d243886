"""The built-in recipes on real models: a CNN trained here on scikit-learn's 8x8 digits and
exported by torch, and the MLPerf Tiny TFLite reference models.

Nothing is mocked: ONNX Runtime quantizes and runs, tflite2onnx converts, LiteRT runs the
originals.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tinymlops.edge.backends import open_backend
from tinymlops.errors import ConfigError, ConversionMismatchError, InvalidDatasetError, RecipeError
from tinymlops.optimize.base import RecipeContext, RecipeOutput, available_recipes, get_recipe
from tinymlops.optimize.calibration import generated_inputs
from tinymlops.spec.model_info import ModelInfo, TensorSpec

MLPERF = Path(__file__).resolve().parents[2].parent / "shared/models/mlperf-tiny"


# --- fixtures ---------------------------------------------------------------------------------
def info_of(data: bytes, fmt: str) -> ModelInfo:
    """The signature part of a ModelInfo, read by the real backend (the rest is not used here)."""
    backend = open_backend(data, fmt)
    return ModelInfo(
        format=fmt,
        inputs=backend.inputs,
        outputs=backend.outputs,
        operators={},
        parameters=0,
        macs=0,
        peak_activation_bytes=0,
        weight_bytes=0,
        weight_dtypes=(),
        compute_dtypes=(),
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Digits:
    model: bytes
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fp32_pred: np.ndarray

    @property
    def fp32_accuracy(self) -> float:
        return float((self.fp32_pred == self.y_test).mean())

    def ctx(self, model: bytes | None = None, fmt: str = "onnx") -> RecipeContext:
        data = self.model if model is None else model
        return RecipeContext(
            model=data,
            format=fmt,
            info=info_of(self.model, "onnx"),
            calibration=self.x_train,
            calibration_source="dataset:digits-train",
        )


def predict(model: bytes, x: np.ndarray) -> np.ndarray:
    return open_backend(model, "onnx").run(x)[0].argmax(axis=1)


def _export(net: Any, example: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    names = {"input_names": ["pixels"], "output_names": ["logits"]}
    try:  # the TorchScript exporter: deterministic and fast; deprecated but present in torch 2.13
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (example,),
                buf,
                dynamo=False,
                opset_version=17,
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
        return buf.getvalue()
    except (TypeError, RuntimeError):  # pragma: no cover - a torch without it: the dynamo exporter
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            opset_version=18,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
            **names,
        )
        return program.model_proto.SerializeToString()


@pytest.fixture(scope="module")
def digits() -> Digits:
    """A small CNN trained for a few epochs on the real 8x8 digits (about 3 s, deterministic)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            order = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), 64):
                idx = order[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
        net.eval()
        model = _export(net, xt[:1])
    finally:
        torch.set_num_threads(threads)
    return Digits(model, x_train, x_test, y_test, predict(model, x_test))


def mlperf_bytes(name: str) -> bytes:
    path = MLPERF / name
    if not path.is_file():
        pytest.skip(f"MLPerf Tiny model {name} not found in {MLPERF}")
    return path.read_bytes()


def tflite_ctx(name: str, n: int = 16, seed: int = 0) -> RecipeContext:
    data = mlperf_bytes(name)
    info = info_of(data, "tflite")
    return RecipeContext(
        model=data,
        format="tflite",
        info=info,
        calibration=generated_inputs(info, n, seed),
        calibration_source=f"generated:seed={seed}",
    )


def run(name: str, ctx: RecipeContext, **params: Any) -> RecipeOutput:
    recipe = get_recipe(name)
    return recipe.apply(ctx, recipe.resolve_params(params))


def onnx_signature(model: bytes) -> list[tuple[str, tuple[int | str, ...], str]]:
    backend = open_backend(model, "onnx")
    return [(t.name, t.shape, t.dtype) for t in (*backend.inputs, *backend.outputs)]


# --- the registry -----------------------------------------------------------------------------
def test_every_builtin_recipe_is_registered_with_a_summary() -> None:
    recipes = available_recipes()
    for name in ("quantize-dynamic", "quantize-static", "fp16", "prune", "tflite-to-onnx"):
        assert name in recipes
        cls = recipes[name]
        assert cls.name == name and cls.summary and cls.input_formats
    assert recipes["tflite-to-onnx"].input_formats == ("tflite",)


# --- every ONNX recipe on the digits CNN ----------------------------------------------------------
ONNX_CASES = [
    ("quantize-dynamic", {}),
    ("quantize-static", {}),
    ("fp16", {}),
    ("prune", {}),
]


@pytest.mark.parametrize(("name", "params"), ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_recipe_produces_a_faithful_deterministic_variant(
    digits: Digits, name: str, params: dict[str, Any]
) -> None:
    first = run(name, digits.ctx(), **params)
    second = run(name, digits.ctx(), **params)

    assert first.format == "onnx"
    onnx.checker.check_model(onnx.load_from_string(first.model))  # the registry runs it too
    assert sha(first.model) == sha(second.model), "same bytes + same params must give the same bytes"
    assert onnx_signature(first.model) == onnx_signature(digits.model)
    assert dict(first.params) == {**get_recipe(name).defaults, **params}
    assert {"onnx", "numpy", "protobuf"} <= set(first.tools)
    assert all(v and v != "not installed" for v in first.tools.values())

    pred = predict(first.model, digits.x_test)
    agreement = float((pred == digits.fp32_pred).mean())
    assert agreement >= 0.9, f"{name}: top-1 agreement with fp32 {agreement:.3f}"


@pytest.mark.parametrize("name", ["quantize-dynamic", "quantize-static", "fp16"])
def test_quantizing_recipes_record_onnxruntime_and_shrink_the_file(digits: Digits, name: str) -> None:
    out = run(name, digits.ctx())
    assert "onnxruntime" in out.tools
    assert len(out.model) < len(digits.model)


@pytest.mark.parametrize(
    ("activation_type", "weight_type"), [("quint8", "qint8"), ("qint8", "qint8"), ("quint8", "quint8")]
)
def test_static_int8_keeps_accuracy_within_two_points(digits: Digits, activation_type: str, weight_type: str) -> None:
    out = run("quantize-static", digits.ctx(), activation_type=activation_type, weight_type=weight_type)
    accuracy = float((predict(out.model, digits.x_test) == digits.y_test).mean())
    assert digits.fp32_accuracy > 0.9
    assert accuracy >= digits.fp32_accuracy - 0.02, (accuracy, digits.fp32_accuracy)


def test_static_records_calibration_source_and_rows_used(digits: Digits) -> None:
    out = run("quantize-static", digits.ctx())
    assert out.notes["calibration_source"] == "dataset:digits-train"
    assert out.notes["calibration_samples_used"] == 128
    few = run("quantize-static", digits.ctx(), calibration_samples=10)
    assert few.notes["calibration_samples_used"] == 10
    assert sha(few.model) != sha(out.model)  # the ranges come from the rows
    many = run("quantize-static", digits.ctx(), calibration_samples=100_000)
    assert many.notes["calibration_samples_used"] == len(digits.x_train)


@pytest.mark.parametrize(
    "params",
    [
        {"calibrate_method": "entropy"},
        {"calibrate_method": "percentile"},
        {"quant_format": "qoperator"},
        {"per_channel": True},
    ],
    ids=["entropy", "percentile", "qoperator", "per-channel"],
)
def test_static_variants_are_deterministic_and_agree(digits: Digits, params: dict[str, Any]) -> None:
    a = run("quantize-static", digits.ctx(), **params)
    b = run("quantize-static", digits.ctx(), **params)
    assert sha(a.model) == sha(b.model)
    assert float((predict(a.model, digits.x_test) == digits.fp32_pred).mean()) >= 0.9
    if params.get("calibrate_method") == "entropy":
        assert "calibrate_method_note" in a.notes


def test_static_rejects_calibration_rows_of_the_wrong_shape(digits: Digits) -> None:
    ctx = RecipeContext(
        model=digits.model,
        format="onnx",
        info=digits.ctx().info,
        calibration=np.zeros((4, 1, 7, 7), np.float32),
        calibration_source="generated:seed=0",
    )
    with pytest.raises(RecipeError, match="do not fit input 'pixels'"):
        run("quantize-static", ctx)


def test_dynamic_honours_op_types(digits: Digits) -> None:
    out = run("quantize-dynamic", digits.ctx(), op_types=["Gemm"])
    ops = {n.op_type for n in onnx.load_from_string(out.model).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops
    assert out.notes["op_types"] == ["Gemm"]


def test_fp16_stores_float16_weights_and_keeps_float32_io(digits: Digits) -> None:
    out = run("fp16", digits.ctx())
    model = onnx.load_from_string(out.model)
    weights = {i.data_type for i in model.graph.initializer if len(i.dims) >= 2}
    assert weights == {onnx.TensorProto.FLOAT16}
    assert [t[2] for t in onnx_signature(out.model)] == ["float32", "float32"]
    assert out.notes["keep_io_types"] is True
    assert out.notes["clamped_weight_values"] == 0


# --- prune --------------------------------------------------------------------------------------
def _targeted(model: bytes) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    from tinymlops.optimize.recipes.prune import prunable_weights

    m = onnx.load_from_string(model)
    names = set(prunable_weights(m))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name in names}


def _others(model: bytes) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    m = onnx.load_from_string(model)
    names = set(_targeted(model))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name not in names}


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("scope", ["per-tensor", "global"])
def test_prune_reaches_the_requested_sparsity_on_weights_only(digits: Digits, sparsity: float, scope: str) -> None:
    out = run("prune", digits.ctx(), sparsity=sparsity, scope=scope)
    weights = _targeted(out.model)
    assert len(weights) == 4  # two Conv kernels, two Gemm matrices
    total = sum(w.size for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert abs(zeros / total - sparsity) <= 0.01
    assert abs(out.notes["achieved_sparsity"] - zeros / total) < 1e-12
    if scope == "per-tensor":
        for name, w in weights.items():
            assert abs(float((w == 0).mean()) - sparsity) <= 0.01, name
    before, after = _others(digits.model), _others(out.model)
    assert before.keys() == after.keys() and before  # the biases are there, untouched
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def _conv_bn_matmul_model() -> bytes:
    """Conv (weight + bias) -> BatchNormalization -> Flatten -> MatMul -> Add: every kind of
    initializer the prune recipe must tell apart."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "conv_w"),  # all ties
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bn_bias"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bn_mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_var"),
        numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"]),
        helper.make_node("Flatten", ["bn"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["m"]),
        helper.make_node("Add", ["m", "fc_b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "prune-me",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_prune_leaves_biases_and_batchnorm_alone_and_breaks_ties_by_position() -> None:
    data = _conv_bn_matmul_model()
    info = info_of(data, "onnx")
    ctx = RecipeContext(data, "onnx", info, generated_inputs(info, 4, 0), "generated:seed=0")
    out = run("prune", ctx, sparsity=0.5)
    assert sorted(_targeted(out.model)) == ["conv_w", "fc_w"]
    before, after = _others(data), _others(out.model)
    assert sorted(before) == ["bn_bias", "bn_mean", "bn_scale", "bn_var", "conv_b", "fc_b"]
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    conv = _targeted(out.model)["conv_w"].reshape(-1)  # 36 equal magnitudes: the first 18 go
    np.testing.assert_array_equal(conv, np.r_[np.zeros(18), np.ones(18)].astype(np.float32))
    assert sha(run("prune", ctx, sparsity=0.5).model) == sha(out.model)


def test_prune_without_weights_is_a_recipe_error() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "nothing-to-prune",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx.checker.check_model(model)
    info = info_of(data, "onnx")
    with pytest.raises(RecipeError, match="no float Conv/Gemm/MatMul weight"):
        run("prune", RecipeContext(data, "onnx", info, generated_inputs(info, 2, 0), "generated:seed=0"))


# --- bad parameters and bad models --------------------------------------------------------------
BAD_PARAMS = [
    ("quantize-dynamic", {"weight_type": "int4"}, "weight_type"),
    ("quantize-dynamic", {"per_channel": "yes"}, "per_channel"),
    ("quantize-dynamic", {"op_types": "Conv"}, "op_types"),
    ("quantize-dynamic", {"op_types": []}, "op_types"),
    ("quantize-dynamic", {"reduce_range": True}, "reduce_range"),
    ("quantize-static", {"activation_type": "float8"}, "activation_type"),
    ("quantize-static", {"weight_type": 8}, "weight_type"),
    ("quantize-static", {"calibrate_method": "mse"}, "calibrate_method"),
    ("quantize-static", {"quant_format": "tensorrt"}, "quant_format"),
    ("quantize-static", {"calibration_samples": 0}, "calibration_samples"),
    ("quantize-static", {"calibration_samples": 1.5}, "calibration_samples"),
    ("quantize-static", {"per_channel": 1}, "per_channel"),
    ("quantize-static", {"activation_type": "qint8", "weight_type": "quint8"}, "weight_type"),
    ("fp16", {"op_block_list": "Resize"}, "op_block_list"),
    ("prune", {"sparsity": 0}, "sparsity"),
    ("prune", {"sparsity": 1.0}, "sparsity"),
    ("prune", {"sparsity": -0.5}, "sparsity"),
    ("prune", {"sparsity": "half"}, "sparsity"),
    ("prune", {"sparsity": float("nan")}, "sparsity"),
    ("prune", {"scope": "per-layer"}, "scope"),
    ("tflite-to-onnx", {"tolerance": -1e-3}, "tolerance"),
    ("tflite-to-onnx", {"tolerance": "tight"}, "tolerance"),
    ("tflite-to-onnx", {"samples": 0}, "samples"),
]


@pytest.mark.parametrize(("name", "params", "key"), BAD_PARAMS)
def test_bad_params_are_config_errors_naming_the_param(name: str, params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_recipe(name).resolve_params(params)
    assert key in err.value.message


@pytest.mark.parametrize("name", ["quantize-dynamic", "quantize-static", "fp16", "prune"])
@pytest.mark.parametrize("garbage", [b"", b"not a model at all", b"\x08\x07\x12\xff\xff\xff", "truncated"])
def test_garbage_model_bytes_are_recipe_errors(digits: Digits, name: str, garbage: bytes | str) -> None:
    data = digits.model[: len(digits.model) // 2] if garbage == "truncated" else garbage
    assert isinstance(data, bytes)
    with pytest.raises(RecipeError) as err:
        run(name, digits.ctx(data))
    assert name in err.value.message


@pytest.mark.parametrize("name", ["quantize-dynamic", "quantize-static", "fp16", "prune"])
def test_onnx_recipes_refuse_tflite_input(name: str) -> None:
    with pytest.raises(RecipeError, match="reads onnx models"):
        run(name, tflite_ctx("pretrainedResnet.tflite"))


def test_tflite_to_onnx_refuses_onnx_input(digits: Digits) -> None:
    with pytest.raises(RecipeError, match="reads tflite models"):
        run("tflite-to-onnx", digits.ctx())


def test_tflite_to_onnx_on_garbage_is_a_recipe_error() -> None:
    ctx = tflite_ctx("pretrainedResnet.tflite")
    bad = RecipeContext(b"\x00\x00\x00\x00TFL3" + b"\x00" * 64, "tflite", ctx.info, ctx.calibration, "x")
    with pytest.raises(RecipeError, match="LiteRT cannot load"):
        run("tflite-to-onnx", bad)


# --- tflite-to-onnx on the MLPerf Tiny models ---------------------------------------------------
@pytest.mark.parametrize("name", ["pretrainedResnet.tflite", "vww_96_float.tflite", "ad01_fp32.tflite"])
def test_tflite_to_onnx_converts_float_models_keeping_the_signature(name: str) -> None:
    ctx = tflite_ctx(name)
    out = run("tflite-to-onnx", ctx)

    assert out.format == "onnx"
    onnx.checker.check_model(onnx.load_from_string(out.model))
    assert out.notes["max_abs_diff"] <= out.params["tolerance"] == 1e-4
    assert out.notes["samples_compared"] == 16
    assert out.notes["calibration_source"] == "generated:seed=0"
    assert {"tflite2onnx", "onnx", "numpy"} <= set(out.tools)
    lite = open_backend(ctx.model, "tflite")
    variant = open_backend(out.model, "onnx")
    assert [(t.name, t.shape, t.dtype) for t in variant.inputs] == [(t.name, t.shape, t.dtype) for t in lite.inputs]
    assert [(t.name, t.shape, t.dtype) for t in variant.outputs] == [(t.name, t.shape, t.dtype) for t in lite.outputs]
    # The same NHWC data feeds both — batched on the variant, since its batch stays symbolic.
    x = ctx.calibration[:4]
    expected = np.concatenate([lite.run(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(variant.run(x)[0], expected, rtol=0, atol=1e-4)
    assert sha(run("tflite-to-onnx", ctx).model) == sha(out.model)


def test_tflite_to_onnx_keeps_nhwc_by_transposing_inside_the_graph() -> None:
    out = run("tflite-to-onnx", tflite_ctx("vww_96_float.tflite"))
    model = onnx.load_from_string(out.model)
    first = model.graph.node[0]
    assert first.op_type == "Transpose" and list(first.input) == ["input_1"]
    assert list(first.attribute[0].ints) == [0, 3, 1, 2]
    assert "NHWC" in out.notes["layouts"]["input_1"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 96, 96, 3]


def test_tflite_to_onnx_rejects_kws_float_because_onnxruntime_refuses_it() -> None:
    with pytest.raises(ConversionMismatchError) as err:
        run("tflite-to-onnx", tflite_ctx("kws_ref_model_float32.tflite"))
    assert "tensor(int8)" in err.value.message
    assert err.value.details["stage"] == "load"
    assert "tensor(int8)" in str(err.value.details["load_error"])


@pytest.mark.parametrize("name", ["vww_96_int8.tflite", "pretrainedResnet_quant.tflite", "kws_ref_model.tflite"])
def test_tflite_to_onnx_rejects_per_channel_int8_models_with_the_converters_reason(name: str) -> None:
    with pytest.raises(RecipeError) as err:
        run("tflite-to-onnx", tflite_ctx(name))
    assert "tflite2onnx cannot convert" in err.value.message
    assert "Per-tensor support only" in err.value.message
    assert err.value.details["stage"] == "convert"


def test_tflite_to_onnx_rejects_int8_autoencoder_that_onnxruntime_cannot_load() -> None:
    with pytest.raises(ConversionMismatchError, match=r"tensor\(int8\)"):
        run("tflite-to-onnx", tflite_ctx("ad01_int8.tflite"))


def test_tflite_to_onnx_with_zero_tolerance_reports_the_measured_difference() -> None:
    with pytest.raises(ConversionMismatchError) as err:
        run("tflite-to-onnx", tflite_ctx("pretrainedResnet.tflite"), tolerance=0.0)
    diff = err.value.details["max_abs_diff"]
    assert isinstance(diff, float) and 0 < diff < 1e-4
    assert f"{diff:.6g}" in err.value.message
    assert err.value.details["stage"] == "verify"


def test_tflite_to_onnx_rejects_calibration_rows_that_do_not_fit() -> None:
    ctx = tflite_ctx("pretrainedResnet.tflite")
    nchw = RecipeContext(ctx.model, "tflite", ctx.info, np.zeros((4, 3, 32, 32), np.float32), "x")
    with pytest.raises(RecipeError, match="do not fit input 'input_1'"):
        run("tflite-to-onnx", nchw)


def test_a_converted_model_quantizes_on_the_original_nhwc_calibration_rows() -> None:
    """The chain tflite-to-onnx -> quantize-static: the variant kept the TFLite signature, so the
    base model's calibration rows feed it unchanged; per-channel QDQ lifts the opset-11 graph."""
    lctx = tflite_ctx("pretrainedResnet.tflite", n=32)
    converted = run("tflite-to-onnx", lctx).model
    ctx = RecipeContext(converted, "onnx", info_of(converted, "onnx"), lctx.calibration, lctx.calibration_source)
    out = run("quantize-static", ctx, per_channel=True)
    assert "upgraded from 11 to 13" in out.notes["opset"]
    assert onnx_signature(out.model) == onnx_signature(converted)
    reference = open_backend(converted, "onnx").run(lctx.calibration)[0]
    quantized = open_backend(out.model, "onnx").run(lctx.calibration)[0]
    assert float(np.abs(quantized - reference).max()) < 0.2 * float(np.abs(reference).max())


def test_tflite_to_onnx_compares_at_most_samples_rows() -> None:
    out = run("tflite-to-onnx", tflite_ctx("pretrainedResnet.tflite", n=5), samples=3)
    assert out.notes["samples_compared"] == 3


# --- generated calibration inputs ---------------------------------------------------------------
def test_generated_inputs_are_deterministic_float_rows(digits: Digits) -> None:
    info = digits.ctx().info
    a = generated_inputs(info, 32, seed=7)
    assert a.dtype == np.float32 and a.shape == (32, 1, 8, 8)
    np.testing.assert_array_equal(a, generated_inputs(info, 32, seed=7))
    assert not np.array_equal(a, generated_inputs(info, 32, seed=8))
    assert abs(float(a.mean())) < 0.2 and 0.8 < float(a.std()) < 1.2  # standard normal


def test_generated_inputs_cover_a_quantized_inputs_representable_range() -> None:
    info = info_of(mlperf_bytes("vww_96_int8.tflite"), "tflite")
    spec = info.inputs[0]
    assert spec.dtype == "int8" and spec.quantization is not None
    scale, zero = spec.quantization
    x = generated_inputs(info, 8, seed=0)
    assert x.shape == (8, 96, 96, 3) and x.dtype == np.float32
    low, high = scale * (-128 - zero), scale * (127 - zero)
    assert low - 1e-6 <= float(x.min()) and float(x.max()) <= high + 1e-6
    assert float(x.min()) < low + 0.05 * (high - low) and float(x.max()) > high - 0.05 * (high - low)


def _info(*inputs: TensorSpec) -> ModelInfo:
    return ModelInfo("onnx", tuple(inputs), (), {}, 0, 0, 0, 0, (), ())


def test_generated_inputs_always_put_n_rows_first() -> None:
    fixed = _info(TensorSpec("x", (1, 640), "float32"))
    assert generated_inputs(fixed, 5, 0).shape == (5, 640)
    uint8 = _info(TensorSpec("x", ("n", 4), "uint8", (0.5, 10)))
    x = generated_inputs(uint8, 1000, 0)
    assert x.shape == (1000, 4) and x.min() >= -5.0 and x.max() <= 122.5


def test_generated_inputs_refuse_what_they_cannot_generate() -> None:
    two = _info(TensorSpec("a", (1, 4), "float32"), TensorSpec("b", (1, 4), "float32"))
    with pytest.raises(InvalidDatasetError, match="single-input model; this one has 2 inputs"):
        generated_inputs(two, 4, 0)
    with pytest.raises(InvalidDatasetError, match="int64"):
        generated_inputs(_info(TensorSpec("ids", ("batch", 16), "int64")), 4, 0)
    with pytest.raises(ConfigError):
        generated_inputs(_info(TensorSpec("x", (1, 4), "float32")), 0, 0)


# --- determinism across processes ---------------------------------------------------------------
@pytest.mark.slow
def test_recipes_give_the_same_bytes_in_another_process(digits: Digits, tmp_path: Path) -> None:
    """Hash randomization and object addresses differ between processes; the bytes must not."""
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits.model)
    calib = tmp_path / "calib.npy"
    np.save(calib, digits.x_train)
    resnet = MLPERF / "pretrainedResnet.tflite"
    if not resnet.is_file():
        pytest.skip("MLPerf Tiny models not found")
    script = f"""
import hashlib
import numpy as np
from tinymlops.edge.backends import open_backend
from tinymlops.optimize.base import RecipeContext, get_recipe
from tinymlops.optimize.calibration import generated_inputs
from tinymlops.spec.model_info import ModelInfo

def info(data, fmt):
    b = open_backend(data, fmt)
    return ModelInfo(fmt, b.inputs, b.outputs, {{}}, 0, 0, 0, 0, (), ())

onnx_bytes = open({str(model)!r}, "rb").read()
calib = np.load({str(calib)!r})
ctx = RecipeContext(onnx_bytes, "onnx", info(onnx_bytes, "onnx"), calib, "dataset:digits-train")
for name in ("quantize-dynamic", "quantize-static", "fp16", "prune"):
    r = get_recipe(name)
    print(name, hashlib.sha256(r.apply(ctx, r.resolve_params({{}})).model).hexdigest())
lite = open({str(resnet)!r}, "rb").read()
li = info(lite, "tflite")
r = get_recipe("tflite-to-onnx")
lctx = RecipeContext(lite, "tflite", li, generated_inputs(li, 16, 0), "generated:seed=0")
out = r.apply(lctx, r.resolve_params({{}}))
print("tflite-to-onnx", hashlib.sha256(out.model).hexdigest())
"""
    here = {
        name: sha(run(name, digits.ctx()).model) for name in ("quantize-dynamic", "quantize-static", "fp16", "prune")
    }
    here["tflite-to-onnx"] = sha(run("tflite-to-onnx", tflite_ctx("pretrainedResnet.tflite")).model)
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        there = dict(line.split() for line in proc.stdout.splitlines() if line.count(" ") == 1)
        assert there == here, f"PYTHONHASHSEED={seed}"
