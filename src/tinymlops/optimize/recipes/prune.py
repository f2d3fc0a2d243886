"""prune: unstructured magnitude pruning of the weights of Conv, ConvTranspose, Gemm and MatMul.

The ``sparsity`` fraction of smallest-magnitude weights is set to exactly zero, per tensor or
over all targeted weights at once (``scope = "global"``). Biases, normalization parameters and
every other initializer are left alone. Ties are broken by position (a stable sort), so the
result is deterministic. The file stays dense — the same size — until something compresses
it (a zipped bundle, or a sparse kernel on the device).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tinymlops.errors import RecipeError
from tinymlops.optimize.base import Recipe, RecipeContext, RecipeOutput, register_recipe
from tinymlops.optimize.recipes._common import (
    ONNX_TOOLS,
    check_choice,
    check_format,
    check_number,
    check_output,
    load_onnx,
    serialize,
    tool_versions,
)

SCOPES = ("per-tensor", "global")
#: op type -> positions of its inputs that are weights (biases and the rest are never pruned)
WEIGHT_INPUTS: Mapping[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
}


@register_recipe
class Prune(Recipe):
    name = "prune"
    summary = "zero the smallest-magnitude Conv/Gemm/MatMul weights (unstructured magnitude pruning)"
    input_formats = ("onnx",)
    defaults: Mapping[str, Any] = {"sparsity": 0.5, "scope": "per-tensor"}

    def check_params(self, params: Mapping[str, Any]) -> None:
        check_number(self.name, params, "sparsity", low=0.0, high=1.0, low_open=True, high_open=True)
        check_choice(self.name, params, "scope", SCOPES)

    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        from onnx import numpy_helper

        check_format(self.name, ctx, self.input_formats)
        model = load_onnx(self.name, ctx.model)
        targets = prunable_weights(model)
        if not targets:
            raise RecipeError(
                f"recipe '{self.name}': the model has no float Conv/Gemm/MatMul weight initializers to prune",
                recipe=self.name,
            )
        inits = {init.name: init for init in model.graph.initializer}
        arrays = {name: numpy_helper.to_array(inits[name]) for name in targets}
        sparsity = float(params["sparsity"])
        if params["scope"] == "global":
            pruned = _prune_global(arrays, targets, sparsity)
        else:
            pruned = {name: _prune_tensor(arrays[name], sparsity) for name in targets}
        for name in targets:
            inits[name].CopyFrom(numpy_helper.from_array(pruned[name], name))

        total = sum(a.size for a in pruned.values())
        zeros = sum(int(np.count_nonzero(a == 0)) for a in pruned.values())
        data = serialize(model)
        check_output(self.name, data)
        return RecipeOutput(
            model=data,
            format="onnx",
            params=dict(params),
            tools=tool_versions(*ONNX_TOOLS),
            notes={
                "achieved_sparsity": zeros / total,
                "pruned_weights": total,
                "zero_weights": zeros,
                "per_tensor_sparsity": {
                    name: int(np.count_nonzero(pruned[name] == 0)) / pruned[name].size for name in targets
                },
                "storage": "dense (same file size; zeros compress)",
            },
        )


def prunable_weights(model: Any) -> list[str]:
    """Names of the float initializers used as weights of Conv/ConvTranspose/Gemm/MatMul, in
    initializer order."""
    from onnx import TensorProto

    floats = {
        init.name
        for init in model.graph.initializer
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    }
    used: set[str] = set()
    for node in model.graph.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            if pos < len(node.input) and node.input[pos] in floats:
                used.add(node.input[pos])
    # A Gemm/MatMul initializer with fewer than 2 dimensions is not a weight matrix.
    ranked = {init.name: len(init.dims) for init in model.graph.initializer}
    return [init.name for init in model.graph.initializer if init.name in used and ranked[init.name] >= 2]


def _n_pruned(size: int, sparsity: float) -> int:
    return min(size, round(sparsity * size))


def _prune_tensor(w: np.ndarray, sparsity: float) -> np.ndarray:
    flat = w.reshape(-1).copy()
    k = _n_pruned(flat.size, sparsity)
    if k:
        order = np.argsort(np.abs(flat.astype(np.float64)), kind="stable")
        flat[order[:k]] = 0
    return flat.reshape(w.shape)


def _prune_global(arrays: Mapping[str, np.ndarray], names: list[str], sparsity: float) -> dict[str, np.ndarray]:
    flats = [arrays[n].reshape(-1) for n in names]
    magnitudes = np.concatenate([np.abs(f.astype(np.float64)) for f in flats])
    k = _n_pruned(magnitudes.size, sparsity)
    mask = np.zeros(magnitudes.size, dtype=bool)
    mask[np.argsort(magnitudes, kind="stable")[:k]] = True
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, flat in zip(names, flats, strict=True):
        pruned = flat.copy()
        pruned[mask[start : start + flat.size]] = 0
        out[name] = pruned.reshape(arrays[name].shape)
        start += flat.size
    return out
