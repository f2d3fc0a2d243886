"""Our reading of ONNX Runtime's NNAPI/CoreML operator tables agrees with ORT's own checker.

ORT's usability checker (``onnxruntime.tools.mobile_helpers.usability_checker``) decides op support
purely by ``(node.domain or "ai.onnx") + ":" + op_type`` being a row of the table. We run its
``check_nnapi_partitions`` / ``check_coreml_partitions`` on ONNX models and assert that the
operators our compatibility check flags are exactly the ones ORT reports in ``unsupported_ops``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinymlops.errors import ConfigError
from tinymlops.spec import DeviceProfile, ModelInfo, TensorSpec
from tinymlops.targets import TABLE_FILES, canonical_op, check_compatibility, load_table
from tinymlops.targets.ort_tables import parse_table, split_op

usability_checker = pytest.importorskip("onnxruntime.tools.mobile_helpers.usability_checker")

# ops that are in some tables and not others, or in none, or in a non-default domain
EXTRA_OPS = [
    "Conv",
    "Relu",
    "Gemm",
    "Erf",
    "HardSwish",
    "ArgMax",
    "Argmax",
    "ReduceSum",
    "Gelu",
    "Einsum",
    "QLinearAdd",
    "com.microsoft::QLinearAdd",
    "com.microsoft::FusedConv",
    "com.microsoft::Gelu",
    "ai.onnx.ml::LinearClassifier",
    "my.custom::Frobnicate",
]


def _all_table_ops() -> list[str]:
    ops = set(EXTRA_OPS)
    for name in TABLE_FILES:
        ops |= load_table(name).ops
    return sorted(ops)


def _chain_model(ops: list[str]) -> onnx.ModelProto:
    """A graph that is a chain of single-input nodes, one per op (structure only: ORT's checker
    looks at op types and edges, not at semantics)."""
    nodes = []
    for i, key in enumerate(ops):
        domain, op_type = split_op(key)
        attrs = {"perm": [0, 1]} if op_type == "Transpose" else {}  # the checker reads Transpose's perm
        nodes.append(helper.make_node(op_type, [f"t{i}"], [f"t{i + 1}"], name=f"n{i}", domain=domain, **attrs))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(f"t{len(ops)}", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph)


def _ort_unsupported(model: onnx.ModelProto, table: str, *, fixed_sizes: bool = False) -> set[str]:
    if table == "nnapi":
        info = usability_checker.check_nnapi_partitions(model, fixed_sizes)
    else:
        info = usability_checker.check_coreml_partitions(model, fixed_sizes, TABLE_FILES[table])
    return {canonical_op(op) for op in info.unsupported_ops}


def _profile(table: str) -> DeviceProfile:
    return DeviceProfile(
        name=f"test-{table}",
        device_class="phone",
        backends=("onnxruntime",),
        dtypes=("fp32",),
        ram_mb=1024,
        storage_mb=1024,
        relative_compute=0.5,
        active_power_w=3,
        idle_power_w=0.1,
        onnx_operator_table=table,
    )


def _info(ops: Counter[str]) -> ModelInfo:
    t = TensorSpec("x", (1, 4), "float32")
    return ModelInfo(
        format="onnx",
        inputs=(t,),
        outputs=(t,),
        operators=dict(ops),
        parameters=0,
        macs=0,
        peak_activation_bytes=0,
        weight_bytes=0,
        weight_dtypes=(),
        compute_dtypes=("float32",),
        opset=17,
    )


def _our_unsupported(ops: Counter[str], table: str) -> set[str]:
    report = check_compatibility(_info(ops), 100, _profile(table))
    assert {i.kind for i in report.issues} <= {"operator"}
    return {i.subject for i in report.issues}


@pytest.mark.parametrize("table", list(TABLE_FILES))
def test_every_table_row_and_extra_ops_agree_with_ort_checker(table: str) -> None:
    ops = _all_table_ops()
    model = _chain_model(ops)
    ours = _our_unsupported(Counter(canonical_op(o) for o in ops), table)
    theirs = _ort_unsupported(model, table)
    assert ours == theirs
    # sanity: the tables really differ, so this is not vacuous
    assert theirs and len(theirs) < len(ops)


@pytest.mark.parametrize("table", list(TABLE_FILES))
def test_each_unsupported_op_is_its_own_issue(table: str) -> None:
    ops = Counter({"Conv": 3, "Relu": 3, "HardSwish": 2, "my.custom::Frobnicate": 1, "Einsum": 1})
    report = check_compatibility(_info(ops), 100, _profile(table))
    subjects = [i.subject for i in report.issues]
    assert sorted(subjects) == sorted(set(subjects))
    assert {"HardSwish", "my.custom::Frobnicate", "Einsum"} <= set(subjects)
    assert "Conv" not in subjects and "Relu" not in subjects
    assert all(table in i.message for i in report.issues)
    assert report.caveats.get("Conv")  # the table's partial-support note is passed on


def _real_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_shape: list[int]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "real",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _w(name: str, shape: list[int]) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.full(shape, 0.01, dtype=np.float32), name)


REAL_MODELS = {
    # Conv/Relu/Gemm: supported everywhere
    "cnn": lambda: _real_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1),
        ],
        [_w("w", [4, 3, 3, 3]), _w("b", [4]), _w("gw", [10, 4]), _w("gb", [10])],
        [1, 10],
    ),
    # Erf (GELU) and HardSwish: Erf is only in the CoreML ML Program table, HardSwish in none
    "gelu-hardswish": lambda: _real_model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"]),
            helper.make_node("Erf", ["c"], ["e"]),
            helper.make_node("HardSwish", ["e"], ["h"]),
            helper.make_node("GlobalAveragePool", ["h"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"]),
        ],
        [_w("w", [4, 3, 3, 3]), _w("b", [4])],
        [1, 4],
    ),
    # ArgMax (spelled "Argmax" in the ML Program table) and ReduceSum ("ai.onnx.ReduceSum" in the
    # NeuralNetwork table): both rows are ignored by ORT's checker, so both are unsupported there
    "argmax-reducesum": lambda: _real_model(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
            helper.make_node("Flatten", ["s"], ["f"]),
            helper.make_node("ArgMax", ["f"], ["a"], axis=1, keepdims=1),
            helper.make_node("Cast", ["a"], ["y"], to=TensorProto.FLOAT),
        ],
        [onnx.numpy_helper.from_array(np.array([2, 3], dtype="int64"), "axes")],
        [1, 1],
    ),
}


@pytest.mark.parametrize("table", list(TABLE_FILES))
@pytest.mark.parametrize("model_name", list(REAL_MODELS))
def test_real_models_agree_with_ort_checker(model_name: str, table: str) -> None:
    data = REAL_MODELS[model_name]()
    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(data), strict_mode=True)
    theirs = _ort_unsupported(model, table, fixed_sizes=True)
    try:
        from tinymlops.registry.inspect import inspect_model
    except ImportError:  # pragma: no cover - the registry inspector is optional here
        ops = Counter(canonical_op((n.domain or "") + "::" + n.op_type) for n in model.graph.node)
        info = _info(ops)
    else:
        info = inspect_model(data)
    report = check_compatibility(info, len(data), _profile(table))
    ours = {i.subject for i in report.issues if i.kind == "operator"}
    assert ours == theirs
    assert report.compatible == (not theirs)


def test_known_quirks_of_the_shipped_tables() -> None:
    nn = load_table("coreml-neuralnetwork")
    assert "ai.onnx.ReduceSum" in nn.ignored_rows and "ReduceSum" not in nn
    ml = load_table("coreml-mlprogram")
    assert "Argmax" in ml.ops and "ArgMax" not in ml
    nnapi = load_table("nnapi")
    assert "com.microsoft::QLinearAdd" in nnapi and "QLinearAdd" not in nnapi
    assert nnapi.supports("ai.onnx:Conv") and nnapi.supports("ai.onnx::Conv") and nnapi.supports("Conv")
    assert "2D" in nnapi.note("Conv")


def test_parse_table_follows_ort_rules() -> None:
    text = "\n".join(
        [
            "<!-- comment | with | pipes -->",
            "|Operator|Note|",
            "|--------|------|",
            "|ai.onnx:Conv|Only 2D.<br/>Weights constant.|",
            "|com.microsoft:QLinearAdd||",
            "|ai.onnx.Typo||",
            "|ai.onnx:Too|many|cells|",
            " |ai.onnx:Indented||",
        ]
    )
    ops, ignored = parse_table(text)
    assert ops == {"Conv": "Only 2D. Weights constant.", "com.microsoft::QLinearAdd": ""}
    assert "ai.onnx.Typo" in ignored
    assert any("Too" in row for row in ignored)


def test_unknown_table_name() -> None:
    with pytest.raises(ConfigError, match="unknown ONNX Runtime operator table"):
        load_table("tensorrt")
