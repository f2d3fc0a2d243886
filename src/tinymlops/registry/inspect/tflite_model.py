"""Static facts about a TFLite model: signature, operators, parameters, MACs, peak activations.

The LiteRT interpreter verifies and loads the flatbuffer (nothing is invoked); the model's
description string is read from the flatbuffer itself. Only the main subgraph is measured.

Constant tensors are those operators read but no operator writes and that are not model
inputs: weights, biases, and small constants such as a RESHAPE's target shape. They make up
``parameters``, ``weight_bytes`` and ``weight_dtypes``. A "float32" model may still hold int8
weights (dynamic-range quantization); ``weight_dtypes`` shows it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tinymlops.edge.backends import _litert_spec
from tinymlops.errors import BackendError, InvalidModelError
from tinymlops.spec.model_info import ModelInfo

MACS_NOTE = (
    "CONV_2D/DEPTHWISE_CONV_2D/TRANSPOSE_CONV/CONV_3D/FULLY_CONNECTED/BATCH_MATMUL "
    "multiply-accumulates at batch 1 from the model's tensor shapes; other ops are not counted; "
    "main subgraph only"
)
PEAK_NOTE = (
    "largest sum of live activation bytes (graph inputs and op outputs, not constant tensors) "
    "over the main subgraph in op order, at batch 1; the interpreter's arena planner may share "
    "or add buffers"
)


def inspect_tflite(data: bytes) -> ModelInfo:
    """Verify, load and measure a TFLite flatbuffer given as bytes.

    Raises :class:`InvalidModelError` if the bytes are not a valid TFLite model.
    """
    if not data:
        raise InvalidModelError("not a TFLite model: the file is empty")
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendError("inspecting TFLite models needs ai-edge-litert (pip install 'tinymlops[edge]')") from exc
    try:
        interpreter = Interpreter(
            model_content=bytes(data),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.allocate_tensors()
        tensors = {int(t["index"]): t for t in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()
        inputs = tuple(_litert_spec(d) for d in interpreter.get_input_details())
        outputs = tuple(_litert_spec(d) for d in interpreter.get_output_details())
        input_ids = [int(d["index"]) for d in interpreter.get_input_details()]
        output_ids = [int(d["index"]) for d in interpreter.get_output_details()]
    except Exception as exc:
        raise InvalidModelError(
            f"invalid TFLite model: LiteRT cannot load it (corrupt or truncated?): {_first_line(exc)}"
        ) from exc

    op_inputs = [[int(i) for i in op["inputs"] if int(i) >= 0] for op in ops]
    op_outputs = [[int(i) for i in op["outputs"] if int(i) >= 0] for op in ops]
    produced = {i for outs in op_outputs for i in outs}
    constants = sorted({i for ins in op_inputs for i in ins} - produced - set(input_ids))

    def shape(i: int) -> tuple[int, ...] | None:
        t = tensors.get(i)
        return None if t is None else tuple(int(d) if int(d) >= 0 else 1 for d in t["shape"])

    def nbytes(i: int) -> int:
        t = tensors.get(i)
        if t is None:
            return 0
        return math.prod(shape(i) or ()) * int(np.dtype(t["dtype"]).itemsize)

    operators = Counter(str(op["op_name"]) for op in ops)
    compute_dtypes = {_dtype_name(tensors[i]) for ins in op_inputs for i in ins if i in tensors}
    macs = sum(
        _op_macs(str(op["op_name"]), [shape(i) for i in ins], [shape(i) for i in outs])
        for op, ins, outs in zip(ops, op_inputs, op_outputs, strict=True)
    )

    return ModelInfo(
        format="tflite",
        inputs=inputs,
        outputs=outputs,
        operators=dict(sorted(operators.items())),
        parameters=sum(math.prod(shape(i) or (0,)) for i in constants if i in tensors),
        macs=macs,
        peak_activation_bytes=_peak(op_inputs, op_outputs, input_ids, output_ids, set(constants), nbytes),
        weight_bytes=sum(nbytes(i) for i in constants),
        weight_dtypes=tuple(sorted({_dtype_name(tensors[i]) for i in constants if i in tensors})),
        compute_dtypes=tuple(sorted(compute_dtypes)),
        opset=None,
        producer=_producer(data),
        estimates={"macs": MACS_NOTE, "peak_activation_bytes": PEAK_NOTE},
    )


def _dtype_name(detail: Mapping[str, Any]) -> str:
    return np.dtype(detail["dtype"]).name


def _op_macs(op: str, ins: Sequence[tuple[int, ...] | None], outs: Sequence[tuple[int, ...] | None]) -> int:
    out = outs[0] if outs else None
    if op in ("CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        if out is None or len(ins) < 2 or ins[1] is None:
            return 0
        w = ins[1]
        if op == "CONV_2D":  # filter [cout, kh, kw, cin/groups]
            per_output = math.prod(w[1:])
        elif op == "CONV_3D":  # filter [kd, kh, kw, cin, cout]
            per_output = math.prod(w[:-1])
        elif op == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, cout]
            per_output = math.prod(w[1:-1])
        else:  # FULLY_CONNECTED: weights [out, in]
            per_output = w[-1]
        return math.prod(out) * per_output
    if op == "TRANSPOSE_CONV":  # inputs: output_shape, filter [cout, kh, kw, cin], input
        if len(ins) < 3 or ins[1] is None or ins[2] is None:
            return 0
        return math.prod(ins[2]) * math.prod(ins[1][:-1])
    if op == "BATCH_MATMUL":  # A [..., M, K] (or [..., K, M] with adj_x), out [..., M, N]
        a = ins[0] if ins else None
        if out is None or a is None or len(a) < 2 or len(out) < 2:
            return 0
        k = a[-1] if out[-2] == a[-2] else a[-2]
        return math.prod(out) * k
    return 0


def _peak(
    op_inputs: list[list[int]],
    op_outputs: list[list[int]],
    input_ids: list[int],
    output_ids: list[int],
    constants: set[int],
    nbytes: Callable[[int], int],
) -> int:
    """Liveness over op order: a tensor lives from its producer (inputs: step 0) to its last reader."""
    n_ops = len(op_inputs)
    birth: dict[int, int] = {i: 0 for i in input_ids}
    death: dict[int, int] = {i: 0 for i in input_ids}
    for step, (ins, outs) in enumerate(zip(op_inputs, op_outputs, strict=True)):
        for i in ins:
            if i in birth:
                death[i] = step
        for i in outs:
            if i not in constants and i not in birth:
                birth[i] = step
                death[i] = step
    for i in output_ids:
        if i in birth:
            death[i] = max(n_ops - 1, 0)
    steps = max(n_ops, 1)
    delta = [0] * (steps + 1)
    for i, start in birth.items():
        size = nbytes(i)
        delta[start] += size
        delta[death[i] + 1] -= size
    peak = live = 0
    for step in range(steps):
        live += delta[step]
        peak = max(peak, live)
    return peak


def _producer(data: bytes) -> str:
    """The converter's description string (e.g. 'MLIR Converted.') and min runtime version."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(data, 0)
        text = (model.Description() or b"").decode("utf-8", "replace").strip()
        for k in range(model.MetadataLength()):
            meta = model.Metadata(k)
            if meta.Name() == b"min_runtime_version":
                raw = model.Buffers(meta.Buffer()).DataAsNumpy()
                if not isinstance(raw, np.ndarray):
                    continue
                version = raw.tobytes().split(b"\0", 1)[0].decode("ascii", "replace")
                if version:
                    text = f"{text} (min runtime {version})".strip()
        return text
    except Exception:  # the interpreter already verified the buffer; this is best effort
        return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
