"""Static facts about an ONNX model: signature, operators, parameters, MACs, peak activations.

Everything here is read from the file alone (parse, check, shape inference); nothing runs.

* ``parameters``/``weight_bytes``/``weight_dtypes``: initializers (main graph and subgraphs),
  Constant-node values and the learned attributes of ``ai.onnx.ml`` operators (coefficients,
  tree thresholds, …; class labels excluded).
* ``operators``: op types of the main graph and every subgraph (If/Loop/Scan bodies), non-default
  domains written ``domain::OpType``.
* ``compute_dtypes``: dtypes of every tensor an operator reads (weights included), from the
  declared and inferred types.
* ``macs`` and ``peak_activation_bytes``: batch-1 estimates on a copy of the model whose
  symbolic or unknown input dimensions are fixed to 1 before shape inference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto

from tinymlops.errors import InvalidModelError
from tinymlops.spec.model_info import ModelInfo, TensorSpec

#: domains that name the standard operator set
DEFAULT_DOMAINS = ("", "ai.onnx")
ML_DOMAIN = "ai.onnx.ml"

_SUB_BYTE_BITS = {
    getattr(TensorProto, name): 4 for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, name)
}

MACS_NOTE = (
    "Conv/ConvTranspose/Gemm/MatMul (and their quantized and com.microsoft fused/quantized forms) "
    "multiply-accumulates at batch 1 from inferred shapes; elementwise, pooling and other ops "
    "are not counted; If/Loop bodies are counted once"
)
PEAK_NOTE = (
    "largest sum of live activation bytes (graph inputs, node outputs; not initializers or "
    "Constant outputs) over the main graph in node order, at batch 1"
)


def inspect_onnx(data: bytes) -> ModelInfo:
    """Parse, check and measure an ONNX model given as bytes.

    Raises :class:`InvalidModelError` if the bytes are not a valid ONNX model.
    """
    model = _load_checked(data)
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}

    weights = list(_weight_tensors(graph))
    parameters = sum(_numel(t.dims) for t in weights)
    weight_bytes = sum(_tensor_bytes(t.data_type, t.dims) for t in weights)
    weight_dtypes = tuple(sorted({_dtype_name(t.data_type) for t in weights}))

    inferred, inference_note = _infer(model)
    types = _value_types(inferred.graph)

    operators: Counter[str] = Counter()
    compute_dtypes: set[str] = set()
    macs = 0
    for node, scope in _walk_nodes(inferred.graph, types):
        operators[_op_name(node)] += 1
        for name in node.input:
            if name and name in scope and scope[name].HasField("tensor_type"):
                compute_dtypes.add(_dtype_name(scope[name].tensor_type.elem_type))
        macs += _node_macs(node, scope)

    peak, unknown = _peak_activation_bytes(inferred.graph, types, initializer_names)

    estimates = {"macs": MACS_NOTE, "peak_activation_bytes": PEAK_NOTE}
    if unknown:
        estimates["peak_activation_bytes"] += (
            f"; {len(unknown)} tensor(s) of unknown shape counted as 0 bytes (e.g. {', '.join(sorted(unknown)[:3])})"
        )
    if inference_note:
        estimates["shape_inference"] = inference_note

    return ModelInfo(
        format="onnx",
        inputs=tuple(_spec(v) for v in graph.input if v.name not in initializer_names),
        outputs=tuple(_spec(v) for v in graph.output),
        operators=dict(sorted(operators.items())),
        parameters=parameters,
        macs=macs,
        peak_activation_bytes=peak,
        weight_bytes=weight_bytes,
        weight_dtypes=weight_dtypes,
        compute_dtypes=tuple(sorted(compute_dtypes)),
        opset=_default_opset(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        estimates=estimates,
    )


# --- loading -------------------------------------------------------------------------------
def _load_checked(data: bytes) -> ModelProto:
    if not data:
        raise InvalidModelError("not an ONNX model: the file is empty")
    try:
        model = onnx.load_from_string(bytes(data))
    except Exception as exc:
        raise InvalidModelError(
            f"not an ONNX model: the bytes do not parse as an ONNX ModelProto "
            f"(corrupt or truncated?): {_first_line(exc)}"
        ) from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError("not an ONNX model: the file parses but holds no graph (corrupt or truncated?)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidModelError(f"invalid ONNX model: the checker rejects it: {_first_line(exc)}") from exc
    return model


def _default_opset(model: ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return None


# --- weights -------------------------------------------------------------------------------
class _Weight:
    __slots__ = ("data_type", "dims")

    def __init__(self, data_type: int, dims: tuple[int, ...]) -> None:
        self.data_type = data_type
        self.dims = dims


def _weight_tensors(graph: GraphProto) -> Iterator[_Weight]:
    """Initializers and Constant-node values of a graph and all its subgraphs."""
    for t in graph.initializer:
        yield _Weight(t.data_type, tuple(t.dims))
    for t in graph.sparse_initializer:
        yield _Weight(t.values.data_type, tuple(t.values.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    yield _Weight(attr.t.data_type, tuple(attr.t.dims))
                elif attr.name == "sparse_value" and attr.type == AttributeProto.SPARSE_TENSOR:
                    yield _Weight(attr.sparse_tensor.values.data_type, tuple(attr.sparse_tensor.values.dims))
                elif attr.name == "value_float":
                    yield _Weight(TensorProto.FLOAT, ())
                elif attr.name == "value_floats":
                    yield _Weight(TensorProto.FLOAT, (len(attr.floats),))
                elif attr.name == "value_int":
                    yield _Weight(TensorProto.INT64, ())
                elif attr.name == "value_ints":
                    yield _Weight(TensorProto.INT64, (len(attr.ints),))
        if node.domain == ML_DOMAIN:
            yield from _ml_attribute_weights(node)
        for sub in _subgraphs(node):
            yield from _weight_tensors(sub)


def _ml_attribute_weights(node: NodeProto) -> Iterator[_Weight]:
    """Traditional-ML ops (ai.onnx.ml) keep their learned values in attributes, not initializers."""
    for attr in node.attribute:
        if attr.name.startswith("classlabels"):
            continue
        if attr.type == AttributeProto.FLOATS:
            yield _Weight(TensorProto.FLOAT, (len(attr.floats),))
        elif attr.type == AttributeProto.INTS:
            yield _Weight(TensorProto.INT64, (len(attr.ints),))
        elif attr.type == AttributeProto.TENSOR:
            yield _Weight(attr.t.data_type, tuple(attr.t.dims))


def _numel(dims: tuple[int, ...] | list[int]) -> int:
    return math.prod(int(d) for d in dims)


def _tensor_bytes(data_type: int, dims: tuple[int, ...] | list[int]) -> int:
    bits = _SUB_BYTE_BITS.get(data_type)
    if bits is not None:
        return (_numel(dims) * bits + 7) // 8
    return _numel(dims) * _itemsize(data_type)


def _itemsize(data_type: int) -> int:
    if data_type == TensorProto.STRING:
        return 0  # variable length; not estimable from the type alone
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except Exception:
        return 0


def _dtype_name(data_type: int) -> str:
    if data_type == TensorProto.STRING:
        return "string"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).name
    except Exception:
        if data_type in TensorProto.DataType.values():
            return TensorProto.DataType.Name(data_type).lower()
        return "unknown"


# --- signature -----------------------------------------------------------------------------
def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type
    if t.HasField("tensor_type"):
        tt = t.tensor_type
        shape = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else ()
        return TensorSpec(value.name, shape, _dtype_name(tt.elem_type))
    # sequences, maps, optionals (e.g. scikit-learn's ZipMap output): no tensor shape
    return TensorSpec(value.name, (), _type_string(t))


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    # as ONNX Runtime reports them (see tinymlops.edge.backends): unnamed unknown dims are "batch"
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "batch"


def _type_string(t: TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return _dtype_name(t.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"seq({_type_string(t.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({_dtype_name(t.map_type.key_type)},{_type_string(t.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({_type_string(t.optional_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse({_dtype_name(t.sparse_tensor_type.elem_type)})"
    return "unknown"


# --- shape inference -----------------------------------------------------------------------
def _infer(model: ModelProto) -> tuple[ModelProto, str]:
    """Shape-infer a copy whose symbolic/unknown input dims are fixed to 1 (batch 1)."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    initializer_names = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializer_names or not value.type.HasField("tensor_type"):
            continue
        for d in value.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = 1
    # exporter-written value_info may carry symbolic batch dims; let inference recompute them
    del fixed.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True), ""
    except Exception as exc:
        note = f"shape inference failed ({_first_line(exc)}); estimates use declared shapes only"
        return model, note


def _value_types(graph: GraphProto) -> dict[str, TypeProto]:
    """Declared and inferred types of a graph's values; initializers and Constants by their data."""
    types: dict[str, TypeProto] = {v.name: v.type for v in (*graph.input, *graph.output, *graph.value_info)}
    for t in graph.initializer:
        types[t.name] = _tensor_type(t.data_type, t.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    types[node.output[0]] = _tensor_type(attr.t.data_type, attr.t.dims)
    return types


def _tensor_type(data_type: int, dims: Iterable[int]) -> TypeProto:
    tp = TypeProto()
    tp.tensor_type.elem_type = data_type
    shape = tp.tensor_type.shape
    for d in dims:
        shape.dim.add().dim_value = int(d)
    return tp


def _walk_nodes(
    graph: GraphProto, scope: Mapping[str, TypeProto]
) -> Iterator[tuple[NodeProto, Mapping[str, TypeProto]]]:
    """Every node of a graph and its subgraphs, with the value types visible to it."""
    for node in graph.node:
        yield node, scope
        for sub in _subgraphs(node):
            inner = {**scope, **_value_types(sub)}
            yield from _walk_nodes(sub, inner)


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _op_name(node: NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _shape(name: str, scope: Mapping[str, TypeProto]) -> tuple[int, ...] | None:
    """A tensor's shape with unknown/symbolic dims as 1, or None when not even the rank is known."""
    t = scope.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else 1 for d in t.tensor_type.shape.dim
    )


# --- MACs ----------------------------------------------------------------------------------
# Each counted op's MACs are (output elements) x (multiply-accumulates per output element).
# The output shape comes from shape inference; when inference does not know the op (contrib
# ops such as com.microsoft::QGemm) it is derived from the input shapes and attributes.

#: op type -> (index of X, index of W) for convolutions (W is [M, C/group, *kernel])
_CONV = {
    "Conv": (0, 1), "QLinearConv": (0, 3), "ConvInteger": (0, 1), "FusedConv": (0, 1), "NhwcConv": (0, 1),
}  # fmt: skip
#: op type -> (index of A, index of B) for matrix products
_GEMM = {"Gemm": (0, 1), "FusedGemm": (0, 1), "QGemm": (0, 3)}
_MATMUL = {
    "MatMul": (0, 1), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1), "FusedMatMul": (0, 1),
    "DynamicQuantizeMatMul": (0, 1), "MatMulIntegerToFloat": (0, 1), "MatMulNBits": (0, 1),
}  # fmt: skip
_MAC_DOMAINS = (*DEFAULT_DOMAINS, "com.microsoft")


def _node_macs(node: NodeProto, scope: Mapping[str, TypeProto]) -> int:
    if node.domain not in _MAC_DOMAINS or not node.output:
        return 0
    op = node.op_type
    attrs = {attr.name: _attr_value(attr) for attr in node.attribute}
    out = _shape(node.output[0], scope)
    if op in _CONV:
        xi, wi = _CONV[op]
        x, w = _input_shape(node, xi, scope), _input_shape(node, wi, scope)
        if w is None or len(w) < 3:
            return 0
        if out is None:
            channels_last = op == "NhwcConv" or bool(attrs.get("channels_last"))
            out = _conv_out(x, w, attrs, channels_last)
        return 0 if out is None else math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _input_shape(node, 0, scope), _input_shape(node, 1, scope)
        if x is None or w is None or len(w) < 2:
            return 0
        return math.prod(x) * math.prod(w[1:])  # every input element meets Cout/group x kernel weights
    if op in _GEMM:
        ai, bi = _GEMM[op]
        a, b = _input_shape(node, ai, scope), _input_shape(node, bi, scope)
        if a is None or len(a) != 2:
            return 0
        m, k = (a[1], a[0]) if attrs.get("transA") else a
        if out is None:
            if b is None or len(b) != 2:
                return 0
            out = (m, b[0] if attrs.get("transB") else b[1])
        return math.prod(out) * k
    if op in _MATMUL:
        ai, bi = _MATMUL[op]
        a, b = _input_shape(node, ai, scope), _input_shape(node, bi, scope)
        if not a:
            return 0
        k = a[-2] if attrs.get("transA") and len(a) >= 2 else a[-1]
        if op == "MatMulNBits":  # B is packed; K and N are attributes
            k = int(attrs.get("K") or k)
            if out is None:
                out = (*a[:-1], int(attrs.get("N") or 0))
        if out is None:
            out = _matmul_out(a, b, bool(attrs.get("transA")), bool(attrs.get("transB")))
        return 0 if out is None else math.prod(out) * k
    return 0


def _attr_value(attr: AttributeProto) -> object:
    return onnx.helper.get_attribute_value(attr)


def _conv_out(
    x: tuple[int, ...] | None, w: tuple[int, ...], attrs: Mapping[str, object], channels_last: bool
) -> tuple[int, ...] | None:
    if x is None or len(x) != len(w):
        return None
    spatial_in = x[1:-1] if channels_last else x[2:]
    kernel = w[2:]
    rank = len(kernel)
    strides = list(attrs.get("strides") or [1] * rank)  # type: ignore[call-overload]
    dilations = list(attrs.get("dilations") or [1] * rank)  # type: ignore[call-overload]
    pads = list(attrs.get("pads") or [0] * (2 * rank))  # type: ignore[call-overload]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    spatial = []
    for i in range(rank):
        span = dilations[i] * (kernel[i] - 1) + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spatial.append(-(-spatial_in[i] // strides[i]))
        elif auto_pad == "VALID":
            spatial.append(max(-(-(spatial_in[i] - span + 1) // strides[i]), 0))
        else:
            spatial.append(max((spatial_in[i] + pads[i] + pads[i + rank] - span) // strides[i] + 1, 0))
    return (x[0], w[0], *spatial)


def _matmul_out(a: tuple[int, ...], b: tuple[int, ...] | None, trans_a: bool, trans_b: bool) -> tuple[int, ...] | None:
    if not b:
        return None
    m = (a[-1] if trans_a else a[-2]) if len(a) >= 2 else 1
    n = (b[-2] if trans_b else b[-1]) if len(b) >= 2 else 1
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = (1,) * (width - len(batch_a)) + batch_a
    batch_b = (1,) * (width - len(batch_b)) + batch_b
    return (*(max(p, q) for p, q in zip(batch_a, batch_b, strict=True)), m, n)


def _input_shape(node: NodeProto, index: int, scope: Mapping[str, TypeProto]) -> tuple[int, ...] | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    return _shape(node.input[index], scope)


# --- peak activation memory ----------------------------------------------------------------
def _peak_activation_bytes(
    graph: GraphProto, types: Mapping[str, TypeProto], initializer_names: set[str]
) -> tuple[int, set[str]]:
    """Liveness over the main graph in node order; returns (peak bytes, tensors of unknown size)."""
    constants = set(initializer_names)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            constants.update(node.output)

    n = len(graph.node)
    birth: dict[str, int] = {}
    death: dict[str, int] = {}
    for value in graph.input:
        if value.name not in constants:
            birth[value.name] = 0
            death[value.name] = 0
    for step, node in enumerate(graph.node):
        for name in _consumed(node):
            if name in birth:
                death[name] = step
        for name in node.output:
            if name and name not in constants and name not in birth:
                birth[name] = step
                death[name] = step
    for value in graph.output:
        if value.name in birth:
            death[value.name] = max(n - 1, 0)

    unknown: set[str] = set()
    sizes: dict[str, int] = {}
    for name in birth:
        t = types.get(name)
        shape = _shape(name, types)
        if t is None or shape is None:
            unknown.add(name)
            sizes[name] = 0
        else:
            sizes[name] = _tensor_bytes(t.tensor_type.elem_type, shape)

    # sweep: +size at birth, -size after death
    delta = [0] * (max(n, 1) + 1)
    for name, size in sizes.items():
        delta[birth[name]] += size
        delta[death[name] + 1] -= size
    peak = live = 0
    for step in range(max(n, 1)):
        live += delta[step]
        peak = max(peak, live)
    return peak, unknown


def _consumed(node: NodeProto) -> set[str]:
    """Tensors a node reads: its inputs and the outer-scope names its subgraphs use."""
    names = {name for name in node.input if name}
    for sub in _subgraphs(node):
        names |= _outer_references(sub)
    return names


def _outer_references(graph: GraphProto) -> set[str]:
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= _consumed(node)
        defined.update(node.output)
    used |= {v.name for v in graph.output}
    return used - defined


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
