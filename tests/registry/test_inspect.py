"""Model inspection against real models: the MLPerf Tiny TFLite files, a PyTorch CNN exported to
ONNX, its int8 quantization, a scikit-learn model, hand-built control flow, and broken files."""

from __future__ import annotations

import io
import itertools
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from tinymlops.errors import InvalidModelError
from tinymlops.registry.inspect import inspect_model, inspect_onnx, inspect_tflite
from tinymlops.spec.model_info import ModelInfo, TensorSpec

MLPERF = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "mlperf-tiny"
MLPERF_FILES = [
    "ad01_fp32.tflite",
    "ad01_int8.tflite",
    "kws_ref_model.tflite",
    "kws_ref_model_float32.tflite",
    "pretrainedResnet.tflite",
    "pretrainedResnet_quant.tflite",
    "vww_96_float.tflite",
    "vww_96_int8.tflite",
]
FLOAT_INT8_PAIRS = [
    ("ad01_fp32.tflite", "ad01_int8.tflite"),
    ("kws_ref_model_float32.tflite", "kws_ref_model.tflite"),
    ("pretrainedResnet.tflite", "pretrainedResnet_quant.tflite"),
    ("vww_96_float.tflite", "vww_96_int8.tflite"),
]


def _mlperf(name: str) -> bytes:
    path = MLPERF / name
    if not path.is_file():
        pytest.skip(f"MLPerf Tiny model {name} not found under {MLPERF}")
    return path.read_bytes()


@pytest.fixture(scope="module")
def mlperf_infos() -> dict[str, ModelInfo]:
    return {name: inspect_model(_mlperf(name)) for name in MLPERF_FILES}


def _roundtrips(info: ModelInfo) -> None:
    assert ModelInfo.from_dict(info.to_dict()) == info


# --- MLPerf Tiny (TFLite) ------------------------------------------------------------------
@pytest.mark.parametrize("name", MLPERF_FILES)
def test_every_mlperf_model_is_inspected(name: str, mlperf_infos: dict[str, ModelInfo]) -> None:
    info = mlperf_infos[name]
    assert info.format == "tflite"
    assert info.opset is None
    assert info.producer.startswith("MLIR Converted.")
    assert info.parameters > 0 and info.macs > 0 and info.peak_activation_bytes > 0
    assert info.weight_bytes > 0 and info.weight_dtypes
    assert set(info.compute_dtypes) >= set(info.weight_dtypes)
    assert len(info.inputs) == 1 and len(info.outputs) == 1
    assert info.inputs[0].shape[0] == "batch"
    assert set(info.estimates) == {"macs", "peak_activation_bytes"}
    _roundtrips(info)


def test_kws_ds_cnn_matches_the_published_size(mlperf_infos: dict[str, ModelInfo]) -> None:
    info = mlperf_infos["kws_ref_model.tflite"]
    assert info.parameters == pytest.approx(22_600, rel=0.01)  # README: 22.6k params
    assert info.operators == {
        "AVERAGE_POOL_2D": 1, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 4,
        "FULLY_CONNECTED": 1, "RESHAPE": 1, "SOFTMAX": 1,
    }  # fmt: skip
    assert info.inputs[0] == TensorSpec("input_1", ("batch", 49, 10, 1), "int8", info.inputs[0].quantization)
    assert info.inputs[0].quantization is not None
    assert info.weight_dtypes == ("int32", "int8")  # int8 weights, int32 biases
    assert info.macs == pytest.approx(2.7e6, rel=0.03)  # DS-CNN (S): ~2.7M MACs


def test_kws_float_model_is_hybrid_quantized(mlperf_infos: dict[str, ModelInfo]) -> None:
    # the "float32" KWS file ships int8 CONV_2D filters (dynamic-range quantized) with float I/O
    info = mlperf_infos["kws_ref_model_float32.tflite"]
    assert info.inputs[0].dtype == "float32"
    assert "int8" in info.weight_dtypes and "float32" in info.weight_dtypes


def test_resnet8_matches_the_published_size(mlperf_infos: dict[str, ModelInfo]) -> None:
    info = mlperf_infos["pretrainedResnet.tflite"]
    assert info.parameters == pytest.approx(77_700, rel=0.005)  # README: 77.7k params
    assert info.macs == pytest.approx(12.5e6, rel=0.01)  # ResNet-8: ~12.5M MACs
    assert info.operators["CONV_2D"] == 9 and info.operators["ADD"] == 3
    # at a residual ADD three 32x32x16 float32 maps are live
    assert info.peak_activation_bytes == 3 * 32 * 32 * 16 * 4


def test_vww_mobilenet_matches_the_published_size(mlperf_infos: dict[str, ModelInfo]) -> None:
    info = mlperf_infos["vww_96_float.tflite"]
    assert 208_000 <= info.parameters <= 220_000  # MobileNetV1 0.25, 2 classes
    assert info.macs == pytest.approx(7.5e6, rel=0.02)
    assert info.operators["DEPTHWISE_CONV_2D"] == 13 and info.operators["CONV_2D"] == 14
    # a 48x48x8 depthwise output feeding a 48x48x16 pointwise output, float32
    assert info.peak_activation_bytes == 48 * 48 * (8 + 16) * 4


def test_ad01_autoencoder_macs_are_exact(mlperf_infos: dict[str, ModelInfo]) -> None:
    info = mlperf_infos["ad01_fp32.tflite"]
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    pairs = list(itertools.pairwise(widths))
    assert info.macs == sum(a * b for a, b in pairs)
    assert info.parameters == sum(a * b + b for a, b in pairs)
    assert info.operators == {"FULLY_CONNECTED": 10}
    assert info.peak_activation_bytes == (640 + 128) * 4


@pytest.mark.parametrize(("float_name", "int8_name"), FLOAT_INT8_PAIRS)
def test_int8_variant_has_same_size_and_a_quarter_of_the_activations(
    float_name: str, int8_name: str, mlperf_infos: dict[str, ModelInfo]
) -> None:
    f, q = mlperf_infos[float_name], mlperf_infos[int8_name]
    assert q.parameters == f.parameters
    assert q.macs == f.macs
    assert q.operators == f.operators
    assert q.peak_activation_bytes * 4 == f.peak_activation_bytes
    assert q.weight_bytes < f.weight_bytes
    assert "float32" not in q.weight_dtypes


def test_inspect_tflite_directly() -> None:
    assert inspect_tflite(_mlperf("ad01_int8.tflite")).format == "tflite"


# --- a real PyTorch CNN exported to ONNX ---------------------------------------------------
@pytest.fixture(scope="module")
def torch_cnn() -> tuple[object, bytes]:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 3x16x16 -> 8x16x16
        nn.ReLU(),
        nn.MaxPool2d(2),  # -> 8x8x8
        nn.Conv2d(8, 16, 3, groups=4),  # grouped: -> 16x6x6
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 6 * 6, 10),
    ).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 16, 16),),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return model, buf.getvalue()


def test_torch_cnn_macs_and_params_are_exact(torch_cnn: tuple[object, bytes]) -> None:
    model, data = torch_cnn
    info = inspect_model(data)
    conv1 = (8 * 16 * 16) * (3 * 3 * 3)
    conv2 = (16 * 6 * 6) * ((8 // 4) * 3 * 3)
    linear = (16 * 6 * 6) * 10
    assert info.macs == conv1 + conv2 + linear == 71_424
    assert info.parameters == sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    assert info.weight_bytes == info.parameters * 4
    assert info.weight_dtypes == ("float32",)
    assert info.compute_dtypes == ("float32",)
    assert info.operators == {"Conv": 2, "Relu": 2, "MaxPool": 1, "Flatten": 1, "Gemm": 1}
    assert info.format == "onnx" and info.opset is not None and info.opset >= 13
    assert info.producer.startswith("pytorch")
    assert info.inputs == (TensorSpec("x", ("batch", 3, 16, 16), "float32"),)
    assert info.outputs == (TensorSpec("logits", ("batch", 10), "float32"),)
    # the first conv's output and the ReLU's output (8x16x16 float32 each) are live together
    assert info.peak_activation_bytes == 2 * 8 * 16 * 16 * 4
    _roundtrips(info)


def test_signature_agrees_with_onnx_runtime(torch_cnn: tuple[object, bytes]) -> None:
    from tinymlops.edge.backends import OnnxRuntimeBackend

    _, data = torch_cnn
    backend = OnnxRuntimeBackend(data)
    info = inspect_onnx(data)
    assert info.inputs == backend.inputs
    assert info.outputs == backend.outputs


def test_int8_quantized_cnn_counts_the_same_macs(torch_cnn: tuple[object, bytes], tmp_path: Path) -> None:
    quantization = pytest.importorskip("onnxruntime.quantization")
    _, data = torch_cnn
    src, dst = tmp_path / "cnn.onnx", tmp_path / "cnn_int8.onnx"
    src.write_bytes(data)
    rng = np.random.default_rng(0)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            samples = [rng.standard_normal((1, 3, 16, 16), dtype=np.float32) for _ in range(4)]
            self.batches = iter([{"x": x} for x in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantization.quantize_static(
        str(src), str(dst), Reader(), quant_format=quantization.QuantFormat.QOperator,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
    )  # fmt: skip
    info = inspect_model(dst.read_bytes())
    assert info.operators.get("QLinearConv") == 2
    assert info.macs == 71_424
    assert "int8" in info.weight_dtypes and "uint8" in info.compute_dtypes
    assert info.weight_bytes < inspect_model(data).weight_bytes


# --- scikit-learn via skl2onnx -------------------------------------------------------------
@pytest.mark.parametrize("zipmap", [False, True])
def test_sklearn_logistic_regression(zipmap: bool) -> None:
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": zipmap}})
    info = inspect_model(onx.SerializeToString())
    assert info.operators["ai.onnx.ml::LinearClassifier"] == 1
    assert all(not op.startswith("ai.onnx::") for op in info.operators)
    assert info.producer.startswith("skl2onnx")
    # the learned values live in the node's attributes: 3 classes x 4 features + 3 intercepts
    assert info.parameters == 3 * 4 + 3
    assert info.macs == 0  # traditional-ML ops are not counted
    assert info.inputs[0].shape == ("batch", 4)
    if zipmap:
        assert info.operators["ai.onnx.ml::ZipMap"] == 1
        assert info.outputs[1].dtype == "seq(map(int64,float32))"
        assert "unknown shape" in info.estimates["peak_activation_bytes"]
    else:
        assert info.outputs[1] == TensorSpec("probabilities", ("batch", 3), "float32")
    _roundtrips(info)


# --- control flow and custom domains (hand-built) ------------------------------------------
def _control_flow_model() -> bytes:
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["rx"]),
            helper.make_node("MatMul", ["rx", "W"], ["e"]),
        ],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Gelu", ["y"], ["z"], domain="com.microsoft"),
        ],
        "control_flow",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])],
        initializer=[w],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return model.SerializeToString()


def test_subgraph_ops_and_custom_domains_are_counted() -> None:
    info = inspect_model(_control_flow_model())
    assert info.operators == {"If": 1, "MatMul": 2, "Relu": 1, "com.microsoft::Gelu": 1}
    assert info.macs == 2 * (1 * 3 * 4)  # each branch counted once, batch 1
    assert info.parameters == 12
    assert info.opset == 17
    assert info.inputs == (
        TensorSpec("cond", (), "bool"),
        TensorSpec("x", ("n", 4), "float32"),
    )
    assert set(info.compute_dtypes) == {"bool", "float32"}
    _roundtrips(info)


# --- broken files --------------------------------------------------------------------------
def _truncated_onnx() -> bytes:
    data = _control_flow_model()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"", "empty"),
        (lambda: b"hello, I am a text file\nnot a model\n", "unrecognised file header"),
        (lambda: bytes(range(256)) * 4, "unrecognised file header"),
        (lambda: b"\x08\x07" + b"\xff" * 64, "ONNX"),
        (_truncated_onnx, "ONNX"),
        # a well-formed ModelProto message without a graph
        (lambda: onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString(), "no graph"),
        (lambda: b"\x00\x00\x00\x00TFL3" + b"\x00" * 32, "TFLite"),
    ],
    ids=[
        "empty",
        "text",
        "garbage",
        "corrupt-onnx",
        "truncated-onnx",
        "protobuf-not-model",
        "corrupt-tflite",
    ],
)
def test_broken_files_raise_invalid_model_error(make: object, message: str) -> None:
    with pytest.raises(InvalidModelError, match=message):
        inspect_model(make())  # type: ignore[operator]


def test_truncated_tflite_raises_invalid_model_error() -> None:
    data = _mlperf("kws_ref_model.tflite")
    with pytest.raises(InvalidModelError, match=r"TFLite.*\(corrupt or truncated\?\)"):
        inspect_model(data[: len(data) // 2])


def test_onnx_rejected_by_the_checker_names_the_problem() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModelError, match=r"checker rejects it.*missing"):
        inspect_onnx(model.SerializeToString())


def _check_only_invalid_model_error(data: bytes) -> None:
    try:
        info = inspect_model(data)
    except InvalidModelError as exc:
        assert exc.message
    else:
        assert isinstance(info, ModelInfo)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_invalid_model_error(data: bytes) -> None:
    _check_only_invalid_model_error(data)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from([b"\x08", b"\x08\x07\x12", b"\x00\x00\x00\x00TFL3"]), st.binary(max_size=512))
def test_random_tail_after_a_model_header_only_raises_invalid_model_error(header: bytes, tail: bytes) -> None:
    _check_only_invalid_model_error(header + tail)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_models_only_raise_invalid_model_error(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["onnx", "kws_ref_model.tflite"]))
    original = _control_flow_model() if name == "onnx" else _mlperf(name)
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(mutated) - 1))
        mutated[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))]
    _check_only_invalid_model_error(bytes(mutated))
