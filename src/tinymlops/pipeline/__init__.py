"""Pre- and post-processing pipelines: built-in ops, WebAssembly steps and cascades.

A :class:`~tinymlops.spec.pipeline.PipelineSpec` (carried in the bundle manifest) lists the
stages before and after the model. :func:`validate_pipeline` checks it when a bundle is built;
:func:`build_pipeline` turns it into a :class:`Pipeline` on the device, whose
:meth:`Pipeline.run` returns a :class:`PipelineResult`::

    pipeline = build_pipeline(spec, {"main": backend, "big": other}, {"normalize": wasm_bytes})
    result = pipeline.run(x)
    result.value, result.outputs, result.models_called

Ops are plug-ins (:mod:`tinymlops.pipeline.ops`): ``cast``, ``scale``, ``normalize``,
``reshape``, ``clip``, ``softmax``, ``argmax``, ``top_k``, ``threshold``, ``label_map``, ``wasm``
(:mod:`tinymlops.pipeline.wasm`, ABI in ``docs/wasm-abi.md``) and ``cascade``.

Edge closure: numpy, the spec types, the errors and (lazily, for WebAssembly stages only)
wasmtime — never onnx, torch, sqlalchemy, fastapi or flwr.
"""

from tinymlops.pipeline.ops import OPS, BuildContext, RunContext, Stage, ValueInfo, register
from tinymlops.pipeline.pipeline import Pipeline, PipelineResult, build_pipeline, validate_pipeline
from tinymlops.pipeline.wasm import ABI_VERSION, BUILTIN_MODULES, WasmLimits, WasmStep, builtin_module, wat_to_wasm

__all__ = [
    "ABI_VERSION",
    "BUILTIN_MODULES",
    "OPS",
    "BuildContext",
    "Pipeline",
    "PipelineResult",
    "RunContext",
    "Stage",
    "ValueInfo",
    "WasmLimits",
    "WasmStep",
    "build_pipeline",
    "builtin_module",
    "register",
    "validate_pipeline",
    "wat_to_wasm",
]
