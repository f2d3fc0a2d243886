"""Helpers shared by the built-in recipes: parameter checks, model decoding, tool versions."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from tinymlops.errors import ConfigError, RecipeError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from tinymlops.optimize.base import RecipeContext


# --- parameters ----------------------------------------------------------------------------
def check_choice(recipe: str, params: Mapping[str, Any], key: str, choices: Sequence[str]) -> None:
    value = params[key]
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"recipe '{recipe}': parameter '{key}' must be one of {', '.join(choices)}; got {value!r}",
            param=key,
        )


def check_bool(recipe: str, params: Mapping[str, Any], key: str) -> None:
    if not isinstance(params[key], bool):
        raise ConfigError(f"recipe '{recipe}': parameter '{key}' must be true or false; got {params[key]!r}", param=key)


def check_int(recipe: str, params: Mapping[str, Any], key: str, minimum: int) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"recipe '{recipe}': parameter '{key}' must be an integer >= {minimum}; got {value!r}",
            param=key,
        )


def check_number(
    recipe: str,
    params: Mapping[str, Any],
    key: str,
    *,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = params[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = f"{'(' if low_open else '['}{low}"
        hi = f"{high}{')' if high_open else ']'}" if high is not None else "inf)"
        raise ConfigError(
            f"recipe '{recipe}': parameter '{key}' must be a number in {lo}, {hi}; got {value!r}", param=key
        )


def check_str_list(recipe: str, params: Mapping[str, Any], key: str) -> None:
    """``None`` or a non-empty list of non-empty strings (e.g. ONNX op types)."""
    value = params[key]
    if value is None:
        return
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ConfigError(
            f"recipe '{recipe}': parameter '{key}' must be a non-empty list of names (or unset); got {value!r}",
            param=key,
        )


# --- tools ---------------------------------------------------------------------------------
def tool_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the distributions that shaped a recipe's output, sorted by name."""
    out: dict[str, str] = {}
    for dist in sorted(set(distributions)):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


#: every ONNX-rewriting recipe's bytes depend on these (protobuf serializes the bytes)
ONNX_TOOLS = ("onnx", "protobuf", "numpy")


# --- models --------------------------------------------------------------------------------
def check_format(recipe: str, ctx: RecipeContext, formats: Sequence[str]) -> None:
    if ctx.format not in formats:
        raise RecipeError(
            f"recipe '{recipe}' reads {', '.join(formats)} models; this one is {ctx.format}",
            recipe=recipe,
            format=ctx.format,
        )


def load_onnx(recipe: str, data: bytes) -> onnx.ModelProto:
    """Decode and sanity-check ONNX bytes; a :class:`RecipeError` (not a protobuf error) if they
    are not a usable model."""
    import onnx

    try:
        model = onnx.load_from_string(bytes(data))
    except Exception as exc:
        raise RecipeError(
            f"recipe '{recipe}': the input is not a valid ONNX model ({type(exc).__name__}: {first_line(exc)})",
            recipe=recipe,
        ) from exc
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise RecipeError(
            f"recipe '{recipe}': the input is not a valid ONNX model (no IR version, nodes or outputs)",
            recipe=recipe,
        )
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (older IRs also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def signature(model: onnx.ModelProto) -> list[tuple[str, str, int, tuple[int | str, ...]]]:
    """(kind, name, elem type, shape) of every graph input and output."""
    out = []
    for kind, values in (("input", graph_inputs(model)), ("output", list(model.graph.output))):
        for v in values:
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)
            out.append((kind, v.name, v.type.tensor_type.elem_type, dims))
    return out


def topological_sort(model: onnx.ModelProto) -> None:
    """Order the main graph's nodes so that every node comes after the producers of its inputs
    (the ONNX checker, and so the registry, requires it; ONNX Runtime does not). Stable: among
    nodes that are ready, the one that came first stays first, so the result is deterministic."""
    import heapq

    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps: list[set[int]] = [
        {producer[name] for name in node.input if name in producer and producer[name] != i}
        for i, node in enumerate(nodes)
    ]
    users: list[list[int]] = [[] for _ in nodes]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise RecipeError("the produced graph has a cycle; it cannot be put in topological order")
    if order != list(range(len(nodes))):
        sorted_nodes = [_copy(nodes[i]) for i in order]
        del model.graph.node[:]
        model.graph.node.extend(sorted_nodes)


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def check_output(recipe: str, data: bytes) -> None:
    """Raise :class:`RecipeError` unless the produced ONNX model passes the ONNX checker (as the
    registry requires) and loads in ONNX Runtime."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise RecipeError(
            f"recipe '{recipe}' produced a model the ONNX checker rejects: {first_line(exc)}", recipe=recipe
        ) from exc
    check_loads_in_ort(recipe, data)


def check_loads_in_ort(recipe: str, data: bytes) -> None:
    """Raise :class:`RecipeError` if ONNX Runtime cannot load the produced model."""
    from tinymlops.edge.backends import open_backend
    from tinymlops.errors import BackendError

    try:
        open_backend(data, "onnx")
    except BackendError as exc:
        raise RecipeError(f"recipe '{recipe}' produced an unusable model — {exc.message}", recipe=recipe) from exc


def default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence chatty libraries (their loggers, Python warnings and prints) for the duration."""
    saved = []
    for name in loggers:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.disabled))
        log.setLevel(logging.CRITICAL + 1)
    root = logging.getLogger()
    saved.append((root, root.level, root.disabled))
    root.setLevel(max(root.level, logging.ERROR))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level, disabled in saved:
            log.setLevel(level)
            log.disabled = disabled
