"""Validate a pipeline spec against a bundle's models, build it, and run it per prediction.

Two entry points, two moments:

* :func:`validate_pipeline` — when a bundle is **built**: every stage names a known op with
  valid parameters, every WebAssembly stage a module the bundle carries (self-contained and
  following the ABI), every cascade a second model of the bundle taking the same input; shapes
  and dtypes are followed through the stages as far as they are statically known, and the
  pre-processed value must fit the main model's input. Any problem is a :class:`PipelineError`.
* :func:`build_pipeline` — on the device: the same validation against the loaded backends,
  then the per-prediction callables. :meth:`Pipeline.run` runs ``pre`` stages → the main
  model → ``post`` stages and returns a :class:`PipelineResult`.

Errors at run time: input the pre-processing cannot take, or a pre-processed value that does
not fit the main model's input (shape or dtype), is an :class:`InputMismatchError` naming the
expected and received shape and dtype; a failing post stage or WebAssembly step is a
:class:`StageError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinymlops.errors import InputMismatchError, PipelineError, StageError, TinyMLOpsError
from tinymlops.pipeline.ops import OPS, BuildContext, RunContext, Signature, StageFn, ValueInfo
from tinymlops.spec.model_info import TensorSpec
from tinymlops.spec.pipeline import PipelineSpec, StageSpec


@dataclass(frozen=True)
class PipelineResult:
    """What one prediction produced.

    ``outputs`` holds every output of the main model by its own name, except that the
    *primary* one (the model's first output, named by ``primary``) holds the value after the
    post stages; plus the result of every named stage under its name and side results such as
    ``"top_k.values"`` or ``"cascade.escalated"``. ``models_called`` lists the models run, in order.
    """

    outputs: dict[str, Any]
    models_called: tuple[str, ...]
    primary: str = ""

    @property
    def value(self) -> Any:
        """The pipeline's final value (``outputs[primary]``)."""
        return self.outputs[self.primary]


def _signature(name: str, model: Any) -> Signature:
    if isinstance(model, tuple | list) and len(model) == 2:
        inputs, outputs = model
    elif hasattr(model, "inputs") and hasattr(model, "outputs"):
        inputs, outputs = model.inputs, model.outputs
    else:
        raise PipelineError(
            f"pipeline: model {name!r} must be given as (inputs, outputs) or an object with .inputs/.outputs"
        )
    if not all(isinstance(t, TensorSpec) for t in (*inputs, *outputs)):
        raise PipelineError(f"pipeline: model {name!r}'s signature must be TensorSpec objects")
    return tuple(inputs), tuple(outputs)


def _accepted_dtypes(spec: TensorSpec) -> frozenset[np.dtype] | None:
    """Dtypes a model input accepts through :meth:`Backend.run` (None: do not check)."""
    try:
        native = np.dtype(spec.dtype)
    except TypeError:
        return None
    accepted = {native}
    if spec.quantization is not None and native.kind in "iu":
        accepted.add(np.dtype(np.float32))  # the backend quantizes float input itself
    return frozenset(accepted)


def _fmt_spec(spec: TensorSpec) -> str:
    return f"{spec.dtype} [{', '.join(str(d) for d in spec.shape)}]"


def _static_fit(info: ValueInfo, spec: TensorSpec, ctx_text: str) -> None:
    """Refuse a statically known pre-processed value that cannot feed the model input."""
    accepted = _accepted_dtypes(spec)
    if (
        info.dtype is not None
        and accepted is not None
        and (info.dtype == "labels" or np.dtype(info.dtype) not in accepted)
    ):
        raise PipelineError(
            f"pipeline: {ctx_text} produces {info.dtype} but the main model's input '{spec.name}' "
            f"takes {_fmt_spec(spec)}; add a 'cast' stage"
        )
    if info.shape is not None:
        expected = ValueInfo.of(spec).shape or ()
        shown = "[" + ", ".join("?" if d is None else str(d) for d in info.shape) + "]"
        if len(info.shape) != len(expected) or any(
            a is not None and b is not None and a != b for a, b in zip(info.shape, expected, strict=False)
        ):
            raise PipelineError(
                f"pipeline: {ctx_text} produces shape {shown} but the main model's input '{spec.name}' "
                f"takes {_fmt_spec(spec)}"
            )


def _walk(
    spec: PipelineSpec,
    signatures: Mapping[str, Signature],
    wasm_modules: Mapping[str, bytes],
    main: str,
    models: Mapping[str, Any] | None,
) -> tuple[list[tuple[StageSpec, BuildContext]], list[tuple[StageSpec, BuildContext]]]:
    """Validate every stage in order; return the stages with the contexts to build them in."""
    if not isinstance(spec, PipelineSpec):
        raise PipelineError(f"pipeline: expected a PipelineSpec, got {type(spec).__name__}")
    if main not in signatures:
        raise PipelineError(f"pipeline: the bundle has no model named {main!r} (models: {', '.join(signatures)})")
    main_in, main_out = signatures[main]
    if spec.pre and len(main_in) != 1:
        raise PipelineError(f"pipeline: pre-processing feeds one array but the main model has {len(main_in)} inputs")
    if spec.post and not main_out:
        raise PipelineError("pipeline: post-processing needs a model output, but the main model has none")
    output_names = {t.name for t in main_out}
    built: dict[str, list[tuple[StageSpec, BuildContext]]] = {"pre": [], "post": []}
    for where, stages in (("pre", spec.pre), ("post", spec.post)):
        # post stages see the main model's first output as Backend.run returns it: float32
        info = ValueInfo() if where == "pre" else replace(ValueInfo.of(main_out[0]), dtype="float32")
        previous: list[str] = []
        for i, stage in enumerate(stages):
            ctx = BuildContext(
                where=where,
                index=i,
                stage=stage,
                signatures=signatures,
                wasm_modules=wasm_modules,
                main=main,
                models=models,
                previous=tuple(previous),
            )
            op = OPS.get(stage.op)
            if op is None:
                raise ctx.error(f"unknown op {stage.op!r}; known ops: {', '.join(sorted(OPS))}")
            if stage.name is not None and stage.name in output_names:
                raise ctx.error(f"name {stage.name!r} is also the name of a model output; pick another")
            info = op.validate(stage.params, ctx, info)
            built[where].append((stage, ctx))
            previous.append(stage.op)
        if where == "pre" and stages:
            _static_fit(info, main_in[0], "pre-processing")
    return built["pre"], built["post"]


def validate_pipeline(
    spec: PipelineSpec,
    model_signatures: Mapping[str, Any],
    wasm_modules: Mapping[str, bytes] | None = None,
    *,
    main: str = "main",
) -> None:
    """Check ``spec`` against the bundle's models and WebAssembly modules (build time).

    ``model_signatures`` maps each model name the pipeline may call (``main`` and any cascade
    models) to its signature: an ``(inputs, outputs)`` pair of :class:`TensorSpec` tuples, or an
    object with ``.inputs`` and ``.outputs`` (a :class:`~tinymlops.spec.ModelInfo`, a backend).
    Raises :class:`PipelineError` naming the stage and parameter at fault.
    """
    signatures = {name: _signature(name, m) for name, m in model_signatures.items()}
    _walk(spec, signatures, dict(wasm_modules or {}), main, None)


def build_pipeline(
    spec: PipelineSpec | Mapping[str, Any] | None,
    models: Mapping[str, Any],
    wasm_modules: Mapping[str, bytes] | None = None,
    *,
    main: str = "main",
) -> Pipeline:
    """Validate ``spec`` against the loaded ``models`` (name → :class:`Backend`) and build it."""
    if spec is None:
        spec = PipelineSpec()
    elif isinstance(spec, Mapping):
        spec = PipelineSpec.from_dict(spec)
    signatures = {name: _signature(name, m) for name, m in models.items()}
    pre, post = _walk(spec, signatures, dict(wasm_modules or {}), main, models)
    build = [[(stage, ctx, OPS[stage.op].build(stage.params, ctx)) for stage, ctx in stages] for stages in (pre, post)]
    return Pipeline(spec, models, main, build[0], build[1])


class Pipeline:
    """A built pipeline: ``run(x)`` = pre stages → main model → post stages."""

    def __init__(
        self,
        spec: PipelineSpec,
        models: Mapping[str, Any],
        main: str,
        pre: Sequence[tuple[StageSpec, BuildContext, StageFn]],
        post: Sequence[tuple[StageSpec, BuildContext, StageFn]],
    ) -> None:
        self.spec = spec
        self.models = dict(models)
        self.main = main
        self._model = self.models[main]
        self._pre = [(ctx.describe(), stage.name, fn) for stage, ctx, fn in pre]
        self._post = [(ctx.describe(), stage.name, fn) for stage, ctx, fn in post]
        self.inputs: tuple[TensorSpec, ...] = tuple(self._model.inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(self._model.outputs)
        self._output_names = [t.name for t in self.outputs]
        self.primary = self._output_names[0] if self._output_names else ""
        self._main_only = (main,)
        self._checks = [(t, _accepted_dtypes(t), ValueInfo.of(t).shape or ()) for t in self.inputs]
        # the common case, checked in three comparisons: one input, only the batch axis free
        self._fast: tuple[frozenset[np.dtype], int, tuple[int, ...]] | None = None
        if len(self._checks) == 1:
            _, accepted, shape = self._checks[0]
            if accepted is not None and shape and shape[0] is None and None not in shape[1:]:
                self._fast = (accepted, len(shape), tuple(shape[1:]))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Pipeline(main={self.main!r}, pre={len(self._pre)}, post={len(self._post)})"

    def _check(self, x: np.ndarray, spec: TensorSpec, accepted: frozenset[np.dtype] | None, shape: tuple) -> None:
        ok = accepted is None or x.dtype in accepted
        if ok and x.ndim == len(shape):
            for got, want in zip(x.shape, shape, strict=True):
                if want is not None and got != want:
                    ok = False
                    break
            else:
                return
        after = " after pre-processing" if self._pre else ""
        hint = ""
        if accepted is not None and x.dtype not in accepted:
            hint = f"; convert the input to {spec.dtype}" + (" or add a 'cast' pre-stage" if not self._pre else "")
        raise InputMismatchError(
            f"model input '{spec.name}' expects {_fmt_spec(spec)}, got {x.dtype} {list(x.shape)}{after}{hint}",
            expected_shape=[d if isinstance(d, int) else str(d) for d in spec.shape],
            expected_dtype=spec.dtype,
            shape=list(x.shape),
            dtype=str(x.dtype),
        )

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> PipelineResult:
        """Run one prediction (any batch size the model accepts)."""
        outputs: dict[str, Any] = {}
        called = [self.main]
        run = RunContext(self.models, called, outputs) if self._pre or self._post else None
        if type(x) is not np.ndarray:
            if isinstance(x, Mapping):
                return self._run_feeds(x, run, outputs, called)
            x = _as_array(x)
        for describe, name, fn in self._pre:
            try:
                x = fn(x, run)
            except TinyMLOpsError:
                raise
            except Exception as exc:
                raise InputMismatchError(
                    f"{describe} cannot take the input ({x.dtype} {list(np.shape(x))}): {exc}"
                ) from None
            if name is not None:
                outputs[name] = x
        if self._pre:
            x = _as_array(x)
        fast = self._fast
        if fast is None or x.ndim != fast[1] or x.shape[1:] != fast[2] or x.dtype not in fast[0]:
            if len(self._checks) != 1:
                raise InputMismatchError(
                    f"the main model has {len(self._checks)} inputs; pass a mapping of input name to array"
                )
            self._check(x, *self._checks[0])
        return self._finish(x, run, outputs, called)

    def _run_feeds(
        self, feeds: Mapping[str, Any], run: RunContext | None, outputs: dict[str, Any], called: list[str]
    ) -> PipelineResult:
        """A model with several inputs (or a caller who names them): no pre-processing."""
        if self._pre:
            raise InputMismatchError("this pipeline pre-processes one array; pass an array, not a mapping")
        for spec, accepted, shape in self._checks:
            if spec.name not in feeds:
                raise InputMismatchError(f"missing model input '{spec.name}'")
            self._check(_as_array(feeds[spec.name]), spec, accepted, shape)
        return self._finish({k: _as_array(v) for k, v in feeds.items()}, run, outputs, called)

    def _finish(self, feed: Any, run: RunContext | None, outputs: dict[str, Any], called: list[str]) -> PipelineResult:
        raw = self._model.run(feed)
        outputs.update(zip(self._output_names, raw, strict=False))
        if run is None or not self._post:
            return PipelineResult(outputs, self._main_only, self.primary)
        run.model_input = feed
        value: Any = raw[0]
        for describe, name, fn in self._post:
            try:
                value = fn(value, run)
            except TinyMLOpsError:
                raise
            except Exception as exc:
                raise StageError(f"{describe} failed: {exc}") from None
            if name is not None:
                outputs[name] = value
        outputs[self.primary] = value
        return PipelineResult(outputs, tuple(called), self.primary)


def _as_array(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise InputMismatchError(f"input must be an array, got {type(x).__name__}: {exc}") from None
    return x


__all__ = ["Pipeline", "PipelineResult", "build_pipeline", "validate_pipeline"]
