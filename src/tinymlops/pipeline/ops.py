"""Built-in pipeline ops: one small plug-in class per op behind one base class, :class:`Stage`.

Each op does two things, at two different times:

* :meth:`Stage.validate` — when a bundle is **built** (and again when a device builds the
  pipeline): check the parameters, and propagate what is statically known about the value
  (:class:`ValueInfo`: shape, dtype) so that a reshape to the wrong element count, a softmax
  over an axis the model's output lacks, or a label map shorter than the class count is refused
  before anything ships. Every problem is a :class:`PipelineError` naming the stage
  (``pre``/``post``, index, op, name) and the parameter.
* :meth:`Stage.build` — return the callable ``fn(value, run) -> value`` that runs per
  prediction. ``run`` is the :class:`RunContext` of that prediction.

What flows between stages: in ``pre``, the input array; in ``post``, the main model's *first*
output (its scores), then whatever the previous stage returned. Ops with more than one result
keep the main one flowing and record the others in ``run.outputs`` under
``"<stage label>.<what>"`` (``top_k`` → ``"top_k.values"``, ``cascade`` → ``"cascade.escalated"``),
where the label is the stage's ``name``, else its op. ``label_map`` turns class indices into
strings (a ``list``); nothing numeric may follow it.

Add an op by subclassing :class:`Stage` and registering it with :func:`register`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from tinymlops.errors import PipelineError
from tinymlops.spec.model_info import TensorSpec
from tinymlops.spec.pipeline import StageSpec

#: numeric dtypes ``cast`` can produce
CAST_DTYPES = (
    "float32",
    "float16",
    "float64",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "bool",
)
#: the ``ValueInfo.dtype`` of a label list (the result of ``label_map``)
LABELS = "labels"
CONFIDENCE = ("max_softmax", "max")

Signature = tuple[Sequence[TensorSpec], Sequence[TensorSpec]]
StageFn = Callable[[Any, "RunContext"], Any]


class RunContext:
    """The state one prediction shares between its stages."""

    __slots__ = ("model_input", "models", "models_called", "outputs")

    def __init__(self, models: Mapping[str, Any], models_called: list[str], outputs: dict[str, Any]) -> None:
        #: the (pre-processed) input the main model received
        self.model_input: Any = None
        self.models = models
        self.models_called = models_called
        self.outputs = outputs


@dataclass(frozen=True)
class ValueInfo:
    """What is known at build time about the value flowing at one point of the pipeline.

    ``shape`` is None when even the rank is unknown; a dimension is None when unknown (batch).
    ``dtype`` is a numpy dtype name, :data:`LABELS`, or None. ``classes`` is the size of the
    axis an ``argmax``/``top_k`` reduced (what a ``label_map`` must cover), when known.
    """

    shape: tuple[int | None, ...] | None = None
    dtype: str | None = None
    classes: int | None = None

    @classmethod
    def of(cls, spec: TensorSpec) -> ValueInfo:
        return cls(tuple(d if isinstance(d, int) and d > 0 else None for d in spec.shape), spec.dtype)


@dataclass
class BuildContext:
    """Where a stage sits and what it may refer to: the bundle's models and WebAssembly modules."""

    where: str
    index: int
    stage: StageSpec
    signatures: Mapping[str, Signature]
    wasm_modules: Mapping[str, bytes]
    main: str = "main"
    #: the loaded backends (only when building, not when validating a bundle)
    models: Mapping[str, Any] | None = None
    #: ops of the stages before this one in the same list
    previous: tuple[str, ...] = ()
    #: objects validate() made that build() may reuse (e.g. an instantiated WebAssembly step)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.stage.label

    def describe(self) -> str:
        named = f" '{self.stage.name}'" if self.stage.name else ""
        return f"pipeline {self.where} stage {self.index} ({self.stage.op}{named})"

    def error(self, message: str, param: str | None = None) -> PipelineError:
        what = f"param '{param}' " if param else ""
        return PipelineError(
            f"{self.describe()}: {what}{message}",
            where=self.where,
            stage=self.index,
            op=self.stage.op,
            param=param,
        )


# --- parameter readers ----------------------------------------------------------------------
_MISSING = object()


def _num(ctx: BuildContext, params: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    value = params.get(key, default)
    if value is _MISSING:
        raise ctx.error("is required", key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ctx.error(f"must be a finite number, got {value!r}", key)
    return float(value)


def _int(
    ctx: BuildContext, params: Mapping[str, Any], key: str, default: Any = _MISSING, *, minimum: int | None = None
) -> int:
    value = params.get(key, default)
    if value is _MISSING:
        raise ctx.error("is required", key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(f"must be an integer, got {value!r}", key)
    if minimum is not None and value < minimum:
        raise ctx.error(f"must be >= {minimum}, got {value}", key)
    return value


def _bool(ctx: BuildContext, params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ctx.error(f"must be true or false, got {value!r}", key)
    return value


def _str(ctx: BuildContext, params: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = params.get(key, default)
    if value is _MISSING:
        raise ctx.error("is required", key)
    if not isinstance(value, str) or not value:
        raise ctx.error(f"must be a non-empty string, got {value!r}", key)
    return value


def _choice(
    ctx: BuildContext, params: Mapping[str, Any], key: str, choices: Sequence[str], default: Any = _MISSING
) -> str:
    value = _str(ctx, params, key, default)
    if value not in choices:
        raise ctx.error(f"must be one of {', '.join(choices)}, got {value!r}", key)
    return value


def _nums(ctx: BuildContext, params: Mapping[str, Any], key: str, default: Any = _MISSING) -> float | list[float]:
    """A number, or a non-empty list of numbers (per channel)."""
    value = params.get(key, default)
    if value is _MISSING:
        raise ctx.error("is required", key)
    if isinstance(value, list):
        if not value or not all(
            not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) for v in value
        ):
            raise ctx.error(f"must be a number or a non-empty list of finite numbers, got {value!r}", key)
        return [float(v) for v in value]
    return _num(ctx, params, key, default)


def _axis(ctx: BuildContext, info: ValueInfo, axis: int, *, param: str = "axis") -> int | None:
    """The non-negative axis when the rank is known (checking it is in range), else None."""
    if info.shape is None:
        return None
    rank = len(info.shape)
    if not -rank <= axis < rank:
        raise ctx.error(f"is {axis} but the value here has rank {rank} (shape {_fmt(info.shape)})", param)
    return axis % rank


def _fmt(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "unknown"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _need_tensor(ctx: BuildContext, info: ValueInfo) -> None:
    if info.dtype == LABELS:
        raise ctx.error("cannot follow label_map: the value is a list of labels here, not a tensor")


# --- the plug-in base ---------------------------------------------------------------------------
class Stage(ABC):
    """One op. Subclasses set ``op``, the parameter names they accept, and where they may run."""

    op: ClassVar[str]
    #: every parameter name the op accepts
    allowed: ClassVar[frozenset[str]] = frozenset()
    #: "pre", "post" or both
    where: ClassVar[tuple[str, ...]] = ("pre", "post")

    def validate(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        """Check ``params`` (PipelineError naming stage and param) and return the value info after
        this stage, given ``info`` before it."""
        if ctx.where not in self.where:
            raise ctx.error(f"'{self.op}' can only run in {' or '.join(self.where)}-processing")
        unknown = sorted(set(params) - self.allowed)
        if unknown:
            known = ", ".join(sorted(self.allowed)) or "none"
            raise ctx.error(f"unknown parameter(s) {', '.join(unknown)}; '{self.op}' takes: {known}")
        _need_tensor(ctx, info)
        return self.check(params, ctx, info)

    @abstractmethod
    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        """The op's own parameter and shape checks (``validate`` has checked names and placement)."""

    @abstractmethod
    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        """The per-prediction callable ``fn(value, run) -> value`` (params are already valid)."""


OPS: dict[str, Stage] = {}


def register(stage: type[Stage]) -> type[Stage]:
    """Make an op available to pipelines under ``stage.op`` (usable as a class decorator)."""
    OPS[stage.op] = stage()
    return stage


# --- the ops ------------------------------------------------------------------------------------
@register
class Cast(Stage):
    """``cast(dtype)``: convert the value to a numeric dtype (NumPy ``astype`` semantics)."""

    op = "cast"
    allowed = frozenset({"dtype"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        return replace(info, dtype=_choice(ctx, params, "dtype", CAST_DTYPES))

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        dtype = np.dtype(params["dtype"])
        return lambda v, run: np.asarray(v).astype(dtype, copy=False)


@register
class Scale(Stage):
    """``scale(multiply=1, add=0)``: ``y = x * multiply + add`` in float32."""

    op = "scale"
    allowed = frozenset({"multiply", "add"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        _num(ctx, params, "multiply", 1.0)
        _num(ctx, params, "add", 0.0)
        return replace(info, dtype="float32")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        mul = np.float32(params.get("multiply", 1.0))
        add = np.float32(params.get("add", 0.0))

        def scale(v: Any, run: RunContext) -> np.ndarray:
            x = np.asarray(v, dtype=np.float32) * mul
            x += add
            return x

        return scale


@register
class Normalize(Stage):
    """``normalize(mean, std, axis=1)``: ``y = (x - mean) / std`` in float32.

    ``mean`` and ``std`` are numbers, or lists with one value per channel along ``axis``
    (default 1: the channel axis of NCHW and of ``[batch, features]``); a scalar broadcasts.
    """

    op = "normalize"
    allowed = frozenset({"mean", "std", "axis"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        mean = _nums(ctx, params, "mean")
        std = _nums(ctx, params, "std")
        for v in std if isinstance(std, list) else [std]:
            if v <= 0:
                raise ctx.error(f"must be > 0 everywhere, got {params['std']!r}", "std")
        lengths = {len(v) for v in (mean, std) if isinstance(v, list)}
        if len(lengths) > 1:
            raise ctx.error(f"has {len(std)} values but 'mean' has {len(mean)}", "std")  # type: ignore[arg-type]
        axis = _int(ctx, params, "axis", 1)
        if lengths:
            channels = lengths.pop()
            ax = _axis(ctx, info, axis)
            if ax is not None and info.shape is not None and info.shape[ax] not in (None, channels):
                raise ctx.error(
                    f"gives {channels} per-channel values but axis {axis} of the value here has "
                    f"size {info.shape[ax]} (shape {_fmt(info.shape)})",
                    "mean",
                )
        return replace(info, dtype="float32")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        mean = np.asarray(params["mean"], dtype=np.float32)
        std = np.asarray(params["std"], dtype=np.float32)
        axis = int(params.get("axis", 1))
        if mean.ndim == 0 and std.ndim == 0:
            m, s = np.float32(mean), np.float32(std)
            return lambda v, run: (np.asarray(v, dtype=np.float32) - m) / s
        channels = max(mean.size, std.size)
        mean = np.broadcast_to(mean, (channels,))
        std = np.broadcast_to(std, (channels,))
        shaped: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def normalize(v: Any, run: RunContext) -> np.ndarray:
            x = np.asarray(v, dtype=np.float32)
            if not -x.ndim <= axis < x.ndim or x.shape[axis] != channels:
                raise ValueError(
                    f"normalize has {channels} per-channel values for axis {axis}, "
                    f"but the value has shape {list(x.shape)}"
                )
            ms = shaped.get(x.ndim)
            if ms is None:
                shape = [1] * x.ndim
                shape[axis] = channels
                ms = shaped[x.ndim] = (mean.reshape(shape), std.reshape(shape))
            return (x - ms[0]) / ms[1]

        return normalize


@register
class Reshape(Stage):
    """``reshape(shape)``: keep the batch (first) axis, reshape the rest to ``shape`` (one -1 allowed)."""

    op = "reshape"
    allowed = frozenset({"shape"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        shape = params.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1) for d in shape)
            or shape.count(-1) > 1
        ):
            raise ctx.error(
                f"must be a non-empty list of positive sizes with at most one -1 (batch axis excluded), got {shape!r}",
                "shape",
            )
        known = math.prod(d for d in shape if d != -1)
        out: list[int | None] = [None, *(d if d != -1 else None for d in shape)]
        if info.shape is not None and len(info.shape) >= 1 and all(d is not None for d in info.shape[1:]):
            elements = math.prod(info.shape[1:])  # type: ignore[arg-type]
            if -1 in shape:
                if elements % known:
                    raise ctx.error(
                        f"{shape} cannot hold the {elements} values per item of the value here "
                        f"(shape {_fmt(info.shape)})",
                        "shape",
                    )
                out[shape.index(-1) + 1] = elements // known
            elif elements != known:
                raise ctx.error(
                    f"{shape} holds {known} values per item but the value here has {elements} "
                    f"(shape {_fmt(info.shape)})",
                    "shape",
                )
        return replace(info, shape=tuple(out))

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        shape = tuple(params["shape"])

        def reshape(v: Any, run: RunContext) -> np.ndarray:
            x = np.asarray(v)
            if x.ndim == 0:
                raise ValueError("reshape needs a batch axis; the value is a scalar")
            try:
                return x.reshape((x.shape[0], *shape))
            except ValueError:
                raise ValueError(
                    f"cannot reshape a value of shape {list(x.shape)} to [batch, {', '.join(map(str, shape))}]"
                ) from None

        return reshape


@register
class Clip(Stage):
    """``clip(min, max)``: limit the value to ``[min, max]`` (either bound may be omitted)."""

    op = "clip"
    allowed = frozenset({"min", "max"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        if "min" not in params and "max" not in params:
            raise ctx.error("needs 'min', 'max' or both", "min")
        lo = _num(ctx, params, "min", -math.inf) if "min" in params else -math.inf
        hi = _num(ctx, params, "max", math.inf) if "max" in params else math.inf
        if lo > hi:
            raise ctx.error(f"{lo} is greater than 'max' {hi}", "min")
        return info

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        lo = params.get("min")
        hi = params.get("max")

        def clip(v: Any, run: RunContext) -> np.ndarray:
            x = np.asarray(v)
            return np.clip(x, lo, hi).astype(x.dtype, copy=False)

        return clip


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@register
class Softmax(Stage):
    """``softmax(axis=-1)``: float32 probabilities along ``axis``."""

    op = "softmax"
    allowed = frozenset({"axis"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        _axis(ctx, info, _int(ctx, params, "axis", -1))
        return replace(info, dtype="float32")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        axis = int(params.get("axis", -1))
        return lambda v, run: softmax(v, axis)


def _reduced(info: ValueInfo, ax: int | None, keep: int | None, dtype: str) -> ValueInfo:
    if info.shape is None or ax is None:
        return ValueInfo(None, dtype, None)
    classes = info.shape[ax]
    shape = list(info.shape)
    if keep is None:
        del shape[ax]
    else:
        shape[ax] = keep
    return ValueInfo(tuple(shape), dtype, classes)


@register
class Argmax(Stage):
    """``argmax(axis=-1)``: int64 index of the largest value along ``axis`` (first one on ties)."""

    op = "argmax"
    allowed = frozenset({"axis"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        ax = _axis(ctx, info, _int(ctx, params, "axis", -1))
        return _reduced(info, ax, None, "int64")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        axis = int(params.get("axis", -1))
        return lambda v, run: np.argmax(np.asarray(v), axis=axis).astype(np.int64, copy=False)


def top_k(x: np.ndarray, k: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int64) and values of the ``k`` largest entries along ``axis``, largest first;
    equal values keep their index order."""
    x = np.asarray(x)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"top_k axis {axis} is out of range for a value of shape {list(x.shape)}")
    if k > x.shape[axis]:
        raise ValueError(f"top_k k={k} exceeds the {x.shape[axis]} entries along axis {axis}")
    key = -x if x.dtype.kind == "f" else -x.astype(np.float64)
    order = np.argsort(key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64, copy=False)
    return idx, np.take_along_axis(x, idx, axis=axis)


@register
class TopK(Stage):
    """``top_k(k, axis=-1)``: the indices of the ``k`` largest values flow on (int64, largest
    first); their values are recorded as ``outputs["<label>.values"]``."""

    op = "top_k"
    allowed = frozenset({"k", "axis"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        k = _int(ctx, params, "k", minimum=1)
        ax = _axis(ctx, info, _int(ctx, params, "axis", -1))
        if ax is not None and info.shape is not None and info.shape[ax] is not None and k > info.shape[ax]:
            raise ctx.error(f"is {k} but axis {ax} of the value here has only {info.shape[ax]} entries", "k")
        return _reduced(info, ax, k, "int64")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        k = int(params["k"])
        axis = int(params.get("axis", -1))
        key = f"{ctx.label}.values"

        def topk(v: Any, run: RunContext) -> np.ndarray:
            idx, values = top_k(v, k, axis)
            run.outputs[key] = values
            return idx

        return topk


@register
class Threshold(Stage):
    """``threshold(value, as_bool=false)``: 1 where ``x >= value`` else 0 (int64), or a bool mask."""

    op = "threshold"
    allowed = frozenset({"value", "as_bool"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        _num(ctx, params, "value")
        return replace(info, dtype="bool" if _bool(ctx, params, "as_bool", False) else "int64")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        value = float(params["value"])
        if params.get("as_bool", False):
            return lambda v, run: np.asarray(v) >= value
        return lambda v, run: (np.asarray(v) >= value).astype(np.int64)


@register
class LabelMap(Stage):
    """``label_map(labels)``: class indices → label strings (a nested ``list`` of the same shape,
    or one string for a scalar index)."""

    op = "label_map"
    allowed = frozenset({"labels"})
    where = ("post",)

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        labels = params.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
            raise ctx.error(f"must be a non-empty list of strings, got {labels!r}", "labels")
        if info.dtype is not None and np.dtype(info.dtype).kind not in "iu":
            raise ctx.error(f"needs class indices but the value here is {info.dtype}; put argmax or top_k before it")
        if info.classes is not None and len(labels) < info.classes:
            raise ctx.error(f"has {len(labels)} labels but the model scores {info.classes} classes", "labels")
        return ValueInfo(info.shape, LABELS, None)

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        table = np.asarray(params["labels"], dtype=object)
        n = len(table)

        def label_map(v: Any, run: RunContext) -> Any:
            idx = np.asarray(v)
            if idx.dtype.kind not in "iu":
                raise ValueError(f"label_map needs integer class indices, got {idx.dtype}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"class index out of range for {n} labels (got {idx.min()}..{idx.max()})")
            if idx.ndim == 0:
                return table[int(idx)]
            return table[idx].tolist()

        return label_map


@register
class Wasm(Stage):
    """``wasm(module, params=[], fuel, fuel_per_value, memory_limit)``: run a WebAssembly module
    the bundle carries on the value as float32, in a sandbox (see :mod:`tinymlops.pipeline.wasm`)."""

    op = "wasm"
    allowed = frozenset({"module", "params", "fuel", "fuel_per_value", "memory_limit"})

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        self._step(params, ctx)
        return replace(info, dtype="float32")

    def _step(self, params: Mapping[str, Any], ctx: BuildContext) -> Any:
        from tinymlops.pipeline.wasm import (
            DEFAULT_FUEL,
            DEFAULT_FUEL_PER_VALUE,
            DEFAULT_MEMORY_LIMIT,
            MAX_MEMORY_LIMIT,
            WasmLimits,
            WasmStep,
        )

        name = _str(ctx, params, "module")
        if name not in ctx.wasm_modules:
            have = ", ".join(sorted(ctx.wasm_modules)) or "none"
            raise ctx.error(
                f"names WebAssembly module {name!r}, which the bundle does not carry (modules: {have})", "module"
            )
        values = params.get("params", [])
        if not isinstance(values, list) or not all(
            not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v) for v in values
        ):
            raise ctx.error(f"must be a list of finite numbers, got {values!r}", "params")
        limits = WasmLimits(
            fuel=_int(ctx, params, "fuel", DEFAULT_FUEL, minimum=1),
            fuel_per_value=_int(ctx, params, "fuel_per_value", DEFAULT_FUEL_PER_VALUE, minimum=0),
            memory=_int(ctx, params, "memory_limit", DEFAULT_MEMORY_LIMIT, minimum=65536),
        )
        if limits.memory > MAX_MEMORY_LIMIT:
            raise ctx.error(f"must be <= {MAX_MEMORY_LIMIT} (a 32-bit memory)", "memory_limit")
        step = ctx.cache.get("wasm")
        if step is None:
            try:
                step = WasmStep(ctx.wasm_modules[name], label=ctx.stage.name or name, params=values, limits=limits)
            except PipelineError as exc:
                raise PipelineError(
                    f"{ctx.describe()}: {exc.message}", where=ctx.where, stage=ctx.index, op=self.op, param="module"
                ) from None
            ctx.cache["wasm"] = step
        return step

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        step = self._step(params, ctx)
        return lambda v, run: step(v)


def _compatible(a: TensorSpec, b: TensorSpec) -> bool:
    """Same dtype and rank; fixed dimensions equal (symbolic ones match anything)."""
    if a.dtype != b.dtype or len(a.shape) != len(b.shape):
        return False
    return all(
        not (isinstance(x, int) and x > 0 and isinstance(y, int) and y > 0) or x == y
        for x, y in zip(a.shape, b.shape, strict=True)
    )


def _spec_text(t: TensorSpec) -> str:
    return f"{t.dtype}[{', '.join(str(d) for d in t.shape)}]"


@register
class Cascade(Stage):
    """``cascade(model, threshold, confidence="max_softmax")``: escalate low-confidence items.

    The main model's scores flow in. Per item (batch row), confidence is the largest softmax
    probability (``max_softmax``) or the largest score as-is (``max``, for models that already
    output probabilities). Items with confidence below ``threshold`` are run again through
    ``model`` — a second model of the same bundle, fed the very input the main model got — and
    its scores replace theirs. ``outputs["<label>.escalated"]`` is the per-item boolean mask,
    and ``model`` joins ``models_called`` when any item was escalated.

    Cascades come first in ``post`` (several in a row form a chain: small → medium → large).
    """

    op = "cascade"
    allowed = frozenset({"model", "threshold", "confidence"})
    where = ("post",)

    def check(self, params: Mapping[str, Any], ctx: BuildContext, info: ValueInfo) -> ValueInfo:
        if any(op != "cascade" for op in ctx.previous):
            raise ctx.error("must come first in post-processing (before any other op): it needs the model's scores")
        model = _str(ctx, params, "model")
        threshold = _num(ctx, params, "threshold")
        if not 0.0 <= threshold <= 1.0:
            raise ctx.error(f"must be between 0 and 1, got {threshold}", "threshold")
        _choice(ctx, params, "confidence", CONFIDENCE, "max_softmax")
        if model == ctx.main:
            raise ctx.error(f"names the main model {model!r}; a cascade escalates to a second model", "model")
        if model not in ctx.signatures:
            have = ", ".join(sorted(m for m in ctx.signatures if m != ctx.main)) or "none"
            raise ctx.error(f"names model {model!r}, which the bundle does not carry (other models: {have})", "model")
        main_in, main_out = ctx.signatures[ctx.main]
        second_in, second_out = ctx.signatures[model]
        if len(main_in) != 1 or len(second_in) != 1:
            raise ctx.error("needs single-input models (the second model gets the main model's input)", "model")
        if not _compatible(main_in[0], second_in[0]):
            raise ctx.error(
                f"model {model!r} takes {_spec_text(second_in[0])} but the main model takes "
                f"{_spec_text(main_in[0])}; both must accept the same pre-processed input",
                "model",
            )
        if not second_out or not main_out:
            raise ctx.error(f"model {model!r} or the main model has no outputs", "model")
        a, b = ValueInfo.of(main_out[0]), ValueInfo.of(second_out[0])
        same_rank = a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape)
        if not same_rank or any(
            x is not None and y is not None and x != y
            for x, y in zip(a.shape[1:], b.shape[1:], strict=False)  # type: ignore[index]
        ):
            raise ctx.error(
                f"model {model!r} outputs {_spec_text(second_out[0])} but the main model outputs "
                f"{_spec_text(main_out[0])}; their scores must have the same shape to be merged",
                "model",
            )
        return replace(info, dtype="float32")

    def build(self, params: Mapping[str, Any], ctx: BuildContext) -> StageFn:
        name = params["model"]
        if ctx.models is None or name not in ctx.models:
            raise ctx.error(f"names model {name!r}, which was not loaded", "model")
        backend = ctx.models[name]
        threshold = float(params["threshold"])
        use_softmax = params.get("confidence", "max_softmax") == "max_softmax"
        key = f"{ctx.label}.escalated"

        def cascade(v: Any, run: RunContext) -> np.ndarray:
            scores = np.asarray(v, dtype=np.float32)
            x = run.model_input
            rows = scores.ndim >= 1 and isinstance(x, np.ndarray) and x.ndim >= 1 and x.shape[0] == scores.shape[0]
            if rows:
                per_item = scores if scores.ndim >= 2 else scores[:, None]
                probs = softmax(per_item, -1) if use_softmax else per_item
                conf = probs.reshape(len(per_item), -1).max(axis=1)
            else:
                probs = softmax(scores, -1) if use_softmax else scores
                conf = np.asarray([probs.max()])
            low = ~(conf >= threshold)  # NaN confidence escalates too
            run.outputs[key] = low
            if not low.any():
                return scores
            run.models_called.append(name)
            if not rows or low.all():
                return np.asarray(backend.run(x)[0], dtype=np.float32).reshape(scores.shape)
            better = np.asarray(backend.run(x[low])[0], dtype=np.float32)
            merged = scores.copy()
            merged[low] = better.reshape(merged[low].shape)
            return merged

        return cascade


__all__ = [
    "CAST_DTYPES",
    "CONFIDENCE",
    "LABELS",
    "OPS",
    "BuildContext",
    "RunContext",
    "Stage",
    "StageFn",
    "ValueInfo",
    "register",
    "softmax",
    "top_k",
]
