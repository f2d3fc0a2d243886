"""The pipeline spec: the stages that run before (``pre``) and after (``post``) a bundle's model.

A pipeline travels inside the bundle manifest as JSON (it may be written as TOML by hand)::

    {
      "spec_version": "1.0",
      "pre":  [{"op": "reshape", "params": {"shape": [1, 8, 8]}},
               {"op": "wasm", "name": "norm", "params": {"module": "normalize", "params": [0.5, 0.25]}}],
      "post": [{"op": "cascade", "params": {"model": "big", "threshold": 0.9}},
               {"op": "softmax"},
               {"op": "top_k", "name": "best", "params": {"k": 3}}]
    }

This module checks the *structure* only: known fields, an ``op`` string, a JSON-able ``params``
table, unique stage names and the major ``spec_version``. Whether an op exists and its parameters
make sense for the bundled models is checked by :func:`tinymlops.pipeline.validate_pipeline` when
a bundle is built (this module is standard library only and cannot know the op plug-ins).

Errors are :class:`~tinymlops.errors.PipelineError` (a :class:`~tinymlops.errors.SpecError`),
or :class:`~tinymlops.errors.UnsupportedVersionError` for a newer major version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import PipelineError, SpecError, UnsupportedVersionError
from tinymlops.spec._parse import check_version, reject_unknown

PIPELINE_SPEC_MAJOR = 1
PIPELINE_SPEC_VERSION = "1.0"
#: stage names label side outputs (``PipelineResult.outputs[name]``) and error messages
STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
OP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: nesting limit for parameter values (a hostile document must not exhaust the stack)
MAX_PARAM_DEPTH = 16
MAX_STAGES = 256

_STAGE_FIELDS = {"op", "params", "name"}
_PIPELINE_FIELDS = {"spec_version", "pre", "post"}


def _strict(check: Any, *args: Any) -> Any:
    """Run a shared reader; its plain SpecError becomes a PipelineError (a newer major version
    stays an UnsupportedVersionError)."""
    try:
        return check(*args)
    except UnsupportedVersionError:
        raise
    except SpecError as exc:
        raise PipelineError(exc.message) from None


def _json_value(doc: str, value: Any, depth: int = 0) -> Any:
    """A deep copy of ``value`` as plain JSON data (tuples become lists), or a PipelineError."""
    if depth > MAX_PARAM_DEPTH:
        raise PipelineError(f"{doc}: parameters nest deeper than {MAX_PARAM_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PipelineError(f"{doc}: parameter values must be finite numbers, got {value!r}")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise PipelineError(f"{doc}: parameter names must be strings, got {k!r}")
            out[k] = _json_value(doc, v, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_json_value(doc, v, depth + 1) for v in value]
    raise PipelineError(f"{doc}: parameter value {value!r} is not JSON data ({type(value).__name__})")


@dataclass(frozen=True)
class StageSpec:
    """One stage: the plug-in ``op`` to run, its ``params`` and an optional ``name``.

    ``name`` labels the stage in error messages and records its result in the pipeline's
    outputs under that name. ``params`` is normalised to plain JSON data on construction.
    """

    op: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    name: str | None = None

    def __post_init__(self) -> None:
        doc = f"pipeline stage {self.name or self.op!r}"
        if not isinstance(self.op, str) or not OP_NAME.match(self.op):
            raise PipelineError(f"{doc}: 'op' must be a lowercase op name such as 'softmax', got {self.op!r}")
        if self.name is not None and (not isinstance(self.name, str) or not STAGE_NAME.match(self.name)):
            raise PipelineError(
                f"pipeline stage ({self.op}): 'name' must be 1-64 characters of letters, digits, '_.-', "
                f"got {self.name!r}"
            )
        if not isinstance(self.params, Mapping):
            raise PipelineError(f"{doc}: 'params' must be a table, got {type(self.params).__name__}")
        object.__setattr__(self, "params", _json_value(doc, self.params))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, doc: str = "pipeline stage") -> StageSpec:
        if not isinstance(data, Mapping):
            raise PipelineError(f"{doc}: a stage must be a table, got {type(data).__name__}")
        _strict(reject_unknown, doc, data, _STAGE_FIELDS)
        if "op" not in data:
            raise PipelineError(f"{doc}: missing required field 'op'")
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise PipelineError(f"{doc}: 'params' must be a table, got {type(params).__name__}")
        name = data.get("name")
        try:
            return cls(op=data["op"], params=params, name=name)
        except PipelineError as exc:
            raise PipelineError(f"{doc}: {exc.message}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "params": _json_value("stage", self.params)}
        if self.name is not None:
            out["name"] = self.name
        return out

    @property
    def label(self) -> str:
        """How messages and side outputs name this stage: its ``name``, else its ``op``."""
        return self.name or self.op


@dataclass(frozen=True)
class PipelineSpec:
    """The stages before (``pre``) and after (``post``) the model; both may be empty."""

    pre: tuple[StageSpec, ...] = ()
    post: tuple[StageSpec, ...] = ()
    spec_version: str = PIPELINE_SPEC_VERSION

    def __post_init__(self) -> None:
        for where in ("pre", "post"):
            stages = getattr(self, where)
            if isinstance(stages, str | bytes | Mapping) or not isinstance(stages, Sequence):
                raise PipelineError(f"pipeline: '{where}' must be a list of stages, got {type(stages).__name__}")
            if not all(isinstance(s, StageSpec) for s in stages):
                raise PipelineError(f"pipeline: '{where}' must hold StageSpec objects")
            object.__setattr__(self, where, tuple(stages))
        if len(self.pre) + len(self.post) > MAX_STAGES:
            raise PipelineError(f"pipeline: more than {MAX_STAGES} stages")
        seen: dict[str, str] = {}
        for where, i, stage in self.stages():
            if stage.name is None:
                continue
            here = f"{where} stage {i}"
            if stage.name in seen:
                raise PipelineError(f"pipeline: stage name {stage.name!r} is used twice ({seen[stage.name]}, {here})")
            seen[stage.name] = here
        _strict(check_version, "pipeline", {"spec_version": self.spec_version}, PIPELINE_SPEC_MAJOR)

    def stages(self) -> list[tuple[str, int, StageSpec]]:
        """Every stage as ``(where, index, stage)``, ``pre`` first."""
        return [("pre", i, s) for i, s in enumerate(self.pre)] + [("post", i, s) for i, s in enumerate(self.post)]

    @property
    def empty(self) -> bool:
        return not self.pre and not self.post

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineSpec:
        doc = "pipeline"
        if not isinstance(data, Mapping):
            raise PipelineError(f"{doc}: a pipeline spec must be a table, got {type(data).__name__}")
        _strict(reject_unknown, doc, data, _PIPELINE_FIELDS)
        version = _strict(check_version, doc, data, PIPELINE_SPEC_MAJOR)
        lists: dict[str, tuple[StageSpec, ...]] = {}
        for where in ("pre", "post"):
            raw = data.get(where, [])
            if not isinstance(raw, list):
                raise PipelineError(f"{doc}: '{where}' must be a list of stages, got {type(raw).__name__}")
            if len(raw) > MAX_STAGES:
                raise PipelineError(f"{doc}: '{where}' has more than {MAX_STAGES} stages")
            lists[where] = tuple(StageSpec.from_dict(s, doc=f"{doc} {where} stage {i}") for i, s in enumerate(raw))
        return cls(pre=lists["pre"], post=lists["post"], spec_version=version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "pre": [s.to_dict() for s in self.pre],
            "post": [s.to_dict() for s in self.post],
        }


__all__ = ["PIPELINE_SPEC_MAJOR", "PIPELINE_SPEC_VERSION", "PipelineSpec", "StageSpec"]
