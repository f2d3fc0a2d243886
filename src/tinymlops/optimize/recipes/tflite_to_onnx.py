"""tflite-to-onnx: convert a TFLite model to ONNX with ``tflite2onnx``, keep the original's
signature, and accept the result only when it computes the same thing.

``tflite2onnx`` is old and partial: it rejects per-channel int8 models, emits graphs ONNX
Runtime will not load (int8 weights fed straight to Conv), and turns 4-D NHWC inputs into NCHW.
So this recipe

1. converts (in a private temporary directory, the converter's logging silenced), and puts the
   converter's set-ordered initializers and value infos in name order so the bytes are stable;
2. restores the original signature: every input and output keeps its TFLite name, shape,
   layout and dtype — a ``Transpose`` (perm ``[0, 3, 1, 2]``) turns a new NHWC input into the
   converter's NCHW one, and 4-D outputs the converter made NCHW are transposed back — so the
   same data feeds the original and the variant; the batch dimension stays symbolic when the
   original's is (and the converted graph runs batched), else it is fixed at 1;
3. verifies numerically: the original runs in LiteRT and the result in ONNX Runtime on the
   first ``samples`` calibration rows; the largest absolute difference of the outputs must be at
   most ``tolerance``. Otherwise :class:`~tinymlops.errors.ConversionMismatchError` says by how
   much (or why ONNX Runtime refused the model).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.errors import BackendError, ConversionMismatchError, RecipeError
from tinymlops.optimize.base import Recipe, RecipeContext, RecipeOutput, register_recipe
from tinymlops.optimize.recipes._common import (
    ONNX_TOOLS,
    check_format,
    check_int,
    check_number,
    check_output,
    first_line,
    graph_inputs,
    quiet,
    serialize,
    tool_versions,
)
from tinymlops.spec.model_info import TensorSpec

#: NHWC tensor -> NCHW tensor, and back
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
#: at most this many layout interpretations are tried when shapes alone are ambiguous
MAX_LAYOUT_CANDIDATES = 8


@register_recipe
class TfliteToOnnx(Recipe):
    name = "tflite-to-onnx"
    summary = "convert TFLite to ONNX (tflite2onnx), same signature, verified against LiteRT"
    input_formats = ("tflite",)
    defaults: Mapping[str, Any] = {"tolerance": 1e-4, "samples": 16}

    def check_params(self, params: Mapping[str, Any]) -> None:
        check_number(self.name, params, "tolerance", low=0.0)
        check_int(self.name, params, "samples", minimum=1)

    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        from tinymlops.edge.backends import open_backend

        check_format(self.name, ctx, self.input_formats)
        try:
            original = open_backend(ctx.model, "tflite")
        except BackendError as exc:
            raise RecipeError(
                f"recipe '{self.name}': LiteRT cannot load the TFLite model: {exc.message}", recipe=self.name
            ) from exc
        if len(original.inputs) != 1:
            raise RecipeError(
                f"recipe '{self.name}' verifies single-input models only; this one has {len(original.inputs)} inputs",
                recipe=self.name,
            )
        converted = self._convert(ctx.model)
        rows = _rows(self.name, ctx.calibration, original.inputs[0], params["samples"])
        expected = _run_litert(self.name, original, rows)
        tolerance = float(params["tolerance"])

        candidates = _layout_candidates(self.name, converted, original.inputs, original.outputs)
        best: tuple[float, bytes, dict[str, str], str] | None = None
        for layouts in candidates:
            data, batch, diff = self._build_and_verify(converted, original, layouts, rows, expected)
            if best is None or diff < best[0]:
                best = (diff, data, _describe(layouts, original), batch)
            if diff <= tolerance:
                break
        assert best is not None
        diff, data, layout_notes, batch = best
        notes: dict[str, Any] = {
            "max_abs_diff": diff,
            "tolerance": tolerance,
            "samples_compared": len(rows),
            "calibration_source": ctx.calibration_source,
            "layouts": layout_notes,
            "batch": batch,
            "verified_with": tool_versions("onnxruntime", "ai-edge-litert"),
        }
        if not diff <= tolerance:
            raise ConversionMismatchError(
                f"recipe '{self.name}': the converted model's outputs differ from the original's by up to "
                f"{diff:.6g} (max abs difference over {len(rows)} samples), "
                f"more than the tolerance {tolerance:g}",
                recipe=self.name,
                stage="verify",
                **notes,
            )
        check_output(self.name, data)
        return RecipeOutput(
            model=data,
            format="onnx",
            params=dict(params),
            tools=tool_versions(*ONNX_TOOLS, "tflite2onnx", "tflite"),
            notes=notes,
        )

    # --- steps ----------------------------------------------------------------------------
    def _convert(self, model: bytes) -> Any:
        import onnx

        try:
            import tflite2onnx
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RecipeError(
                f"recipe '{self.name}' needs tflite2onnx (pip install 'tinymlops[server]')", recipe=self.name
            ) from exc
        with tempfile.TemporaryDirectory(prefix="tinymlops-tflite2onnx-") as tmp:
            src = Path(tmp) / "model.tflite"
            dst = Path(tmp) / "model.onnx"
            src.write_bytes(bytes(model))
            try:
                with quiet("tflite2onnx"):
                    tflite2onnx.convert(str(src), str(dst))
                converted = onnx.load_from_string(dst.read_bytes())
            except Exception as exc:
                reason = f"{type(exc).__name__}: {first_line(exc)}"
                raise RecipeError(
                    f"recipe '{self.name}': tflite2onnx cannot convert this model ({reason})",
                    recipe=self.name,
                    stage="convert",
                    reason=reason,
                ) from exc
        # tflite2onnx collects these in sets of Python objects: put them in a stable order.
        graph = converted.graph
        inits = sorted(graph.initializer, key=lambda t: t.name)
        infos = sorted(graph.value_info, key=lambda v: v.name)
        del graph.initializer[:]
        graph.initializer.extend(inits)
        del graph.value_info[:]
        graph.value_info.extend(infos)
        return converted

    def _build_and_verify(
        self,
        converted: Any,
        original: Any,
        layouts: _Layouts,
        rows: np.ndarray,
        expected: list[list[np.ndarray]],
    ) -> tuple[bytes, str, float]:
        from tinymlops.edge.backends import open_backend

        symbolic = bool(original.inputs[0].shape) and isinstance(original.inputs[0].shape[0], str)
        if symbolic:
            # Keep the batch symbolic, as in the original, when the converted graph runs batched.
            model = _with_signature(self.name, converted, original.inputs, original.outputs, layouts, True)
            data = serialize(model)
            try:
                got = _run_onnx(open_backend(data, "onnx"), original, rows, batched=True)
                return (
                    data,
                    f"symbolic ({original.inputs[0].shape[0]!r}, as in the original)",
                    _max_abs_diff(expected, got),
                )
            except BackendError as exc:
                batch_note = f"1 (with a symbolic batch the converted graph fails: {exc.message})"
        else:
            batch_note = "1 (as in the original)"
        model = _with_signature(self.name, converted, original.inputs, original.outputs, layouts, False)
        data = serialize(model)
        try:
            backend = open_backend(data, "onnx")
        except BackendError as exc:
            raise ConversionMismatchError(
                f"recipe '{self.name}': the converted model is unusable — {exc.message}",
                recipe=self.name,
                stage="load",
                load_error=exc.message,
            ) from exc
        try:
            got = _run_onnx(backend, original, rows, batched=False)
        except BackendError as exc:
            raise ConversionMismatchError(
                f"recipe '{self.name}': the converted model is unusable — {exc.message}",
                recipe=self.name,
                stage="run",
                run_error=exc.message,
            ) from exc
        return data, batch_note, _max_abs_diff(expected, got)


# --- signature --------------------------------------------------------------------------------
#: one permutation (or None: unchanged) per input, then per output
_Layouts = tuple[tuple[tuple[int, ...] | None, ...], tuple[tuple[int, ...] | None, ...]]


def _converted_dims(value: Any) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim
    ]


def _matches(dims: Sequence[int | None], shape: Sequence[int]) -> bool:
    return len(dims) == len(shape) and all(d is None or d == s for d, s in zip(dims, shape, strict=True))


def _tensor_candidates(recipe: str, kind: str, spec: TensorSpec, value: Any) -> list[tuple[int, ...] | None]:
    """How the converter may have laid out this tensor: unchanged, or NHWC made NCHW."""
    shape = spec.concrete_shape(1)
    dims = _converted_dims(value)
    out: list[tuple[int, ...] | None] = []
    if _matches(dims, shape):
        out.append(None)
    if len(shape) == 4 and _matches(dims, [shape[i] for i in TO_NCHW]):
        out.append(TO_NCHW)
    if not out:
        shown = ["?" if d is None else d for d in dims]
        raise RecipeError(
            f"recipe '{recipe}': tflite2onnx changed {kind} '{spec.name}' "
            f"from shape {list(shape)} to {shown}, "
            "which is no layout change this recipe knows how to undo",
            recipe=recipe,
            stage="signature",
        )
    return out


def _layout_candidates(
    recipe: str, converted: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> list[_Layouts]:
    c_in = graph_inputs(converted)
    c_out = list(converted.graph.output)
    if len(c_in) != len(inputs) or len(c_out) != len(outputs):
        raise RecipeError(
            f"recipe '{recipe}': tflite2onnx changed the number of inputs/outputs "
            f"({len(inputs)}/{len(outputs)} -> {len(c_in)}/{len(c_out)})",
            recipe=recipe,
            stage="signature",
        )
    per_in = [_tensor_candidates(recipe, "input", s, v) for s, v in zip(inputs, c_in, strict=True)]
    per_out = [_tensor_candidates(recipe, "output", s, v) for s, v in zip(outputs, c_out, strict=True)]
    combos = itertools.product(itertools.product(*per_in), itertools.product(*per_out))
    return list(itertools.islice(combos, MAX_LAYOUT_CANDIDATES))


def _describe(layouts: _Layouts, original: Any) -> dict[str, str]:
    notes: dict[str, str] = {}
    for spec, perm in zip(original.inputs, layouts[0], strict=True):
        notes[spec.name] = "unchanged" if perm is None else "NHWC kept; transposed to NCHW inside the graph"
    for spec, perm in zip(original.outputs, layouts[1], strict=True):
        notes[spec.name] = "unchanged" if perm is None else "NHWC kept; transposed back from NCHW inside the graph"
    return notes


def _with_signature(
    recipe: str,
    converted: Any,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    layouts: _Layouts,
    symbolic_batch: bool,
) -> Any:
    """A copy of ``converted`` whose inputs and outputs are the TFLite model's."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(converted)
    graph = model.graph
    c_in = graph_inputs(model)
    c_out = list(graph.output)

    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    taken |= {t.name for t in graph.initializer}
    renames: dict[str, str] = {}

    def internal(name: str) -> str:
        candidate, i = f"{name}__converted", 1
        while candidate in taken:
            candidate, i = f"{name}__converted{i}", i + 1
        taken.add(candidate)
        return candidate

    def value(spec: TensorSpec, elem_type: int) -> Any:
        shape: list[int | str] = list(spec.concrete_shape(1))
        if symbolic_batch and spec.shape and isinstance(spec.shape[0], str):
            shape[0] = spec.shape[0]
        return helper.make_tensor_value_info(spec.name, elem_type, shape)

    head: list[Any] = []
    new_inputs: list[Any] = []
    for spec, cv, perm in zip(inputs, c_in, layouts[0], strict=True):
        elem = cv.type.tensor_type.elem_type
        if perm is None and cv.name == spec.name:
            new_inputs.append(value(spec, elem))
            continue
        if spec.name in taken and spec.name != cv.name:
            raise RecipeError(f"recipe '{recipe}': input name '{spec.name}' is used inside the converted graph")
        inner = internal(cv.name)
        renames[cv.name] = inner
        new_inputs.append(value(spec, elem))
        if perm is None:
            head.append(helper.make_node("Identity", [spec.name], [inner], name=f"tinymlops_input_{spec.name}"))
        else:
            head.append(
                helper.make_node(
                    "Transpose",
                    [spec.name],
                    [inner],
                    name=f"tinymlops_nhwc_to_nchw_{spec.name}",
                    perm=list(perm),
                )
            )

    tail: list[Any] = []
    new_outputs: list[Any] = []
    for spec, cv, perm in zip(outputs, c_out, layouts[1], strict=True):
        elem = cv.type.tensor_type.elem_type
        if perm is None and cv.name == spec.name:
            new_outputs.append(value(spec, elem))
            continue
        if spec.name in taken and spec.name != cv.name:
            raise RecipeError(f"recipe '{recipe}': output name '{spec.name}' is used inside the converted graph")
        inner = renames.get(cv.name) or internal(cv.name)
        renames[cv.name] = inner
        new_outputs.append(value(spec, elem))
        if perm is None:
            tail.append(helper.make_node("Identity", [inner], [spec.name], name=f"tinymlops_output_{spec.name}"))
        else:
            tail.append(
                helper.make_node(
                    "Transpose",
                    [inner],
                    [spec.name],
                    name=f"tinymlops_nchw_to_nhwc_{spec.name}",
                    perm=list(TO_NHWC),
                )
            )

    for node in graph.node:
        for i, n in enumerate(node.input):
            if n in renames:
                node.input[i] = renames[n]
        for i, n in enumerate(node.output):
            if n in renames:
                node.output[i] = renames[n]
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)

    real_inputs = {c.name for c in c_in}
    initializer_inputs = [_copy(v) for v in graph.input if v.name not in real_inputs]
    del graph.input[:]
    graph.input.extend([*new_inputs, *initializer_inputs])
    del graph.output[:]
    graph.output.extend(new_outputs)
    if symbolic_batch:
        # the converter's intermediate shapes all say batch 1
        del graph.value_info[:]
    else:
        for v in graph.value_info:
            if v.name in renames:
                v.name = renames[v.name]
    return model


def _copy(value: Any) -> Any:
    out = type(value)()
    out.CopyFrom(value)
    return out


# --- verification -----------------------------------------------------------------------------
def _rows(recipe: str, calibration: np.ndarray, spec: TensorSpec, samples: int) -> np.ndarray:
    x = np.asarray(calibration, dtype=np.float32)
    shape = spec.concrete_shape(1)
    if x.ndim != len(shape) or tuple(x.shape[1:]) != tuple(shape[1:]) or x.shape[0] == 0:
        raise RecipeError(
            f"recipe '{recipe}': calibration rows of shape {list(x.shape)} do not fit input '{spec.name}' "
            f"of shape {list(spec.shape)}",
            recipe=recipe,
            calibration_shape=list(x.shape),
        )
    return x[:samples]


def _native(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is not None and spec.dtype in ("int8", "uint8", "int16"):
        scale, zero = spec.quantization
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(spec.dtype)
    return x.astype(spec.dtype)


def _as_float(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is not None and spec.dtype in ("int8", "uint8", "int16"):
        scale, zero = spec.quantization
        return (y.astype(np.float64) - zero) * scale
    return y.astype(np.float64)


def _run_litert(recipe: str, backend: Any, rows: np.ndarray) -> list[list[np.ndarray]]:
    """Per output, the original's float outputs for every row (run one row at a time, as shipped)."""
    spec = backend.inputs[0]
    per_row = []
    for i in range(len(rows)):
        try:
            raw = backend.run_raw({spec.name: _native(rows[i : i + 1], spec)})
        except BackendError as exc:
            raise RecipeError(
                f"recipe '{recipe}': LiteRT cannot run the original: {exc.message}", recipe=recipe
            ) from exc
        per_row.append([_as_float(y, s) for y, s in zip(raw, backend.outputs, strict=True)])
    return [np.concatenate([r[k] for r in per_row]) for k in range(len(backend.outputs))]


def _run_onnx(backend: Any, original: Any, rows: np.ndarray, *, batched: bool) -> list[np.ndarray]:
    """The variant's outputs, fed and read with the *original's* quantization parameters (the
    variant keeps its I/O types)."""
    spec = original.inputs[0]
    native = _native(rows, spec)
    if batched:
        raw_rows = [backend.run_raw({spec.name: native})]
    else:
        raw_rows = [backend.run_raw({spec.name: native[i : i + 1]}) for i in range(len(rows))]
    return [np.concatenate([_as_float(r[k], s) for r in raw_rows]) for k, s in enumerate(original.outputs)]


def _max_abs_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(expected, got, strict=True):
        if a.shape != b.shape:
            return float("inf")
        both_nan = np.isnan(a) & np.isnan(b)
        d = np.where(both_nan, 0.0, np.abs(a - b))
        d = np.where(np.isnan(d), np.inf, d)
        if d.size:
            worst = max(worst, float(d.max()))
    return worst
