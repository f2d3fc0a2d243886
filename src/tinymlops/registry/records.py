"""Plain, typed views of registry rows handed to callers (no ORM objects escape the store)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import cached_property
from typing import Any

from tinymlops.registry.refs import format_ref
from tinymlops.spec.model_info import ModelInfo
from tinymlops.spec.recipe import RecipeSpec


@dataclass(frozen=True, eq=False)
class ArtifactRecord:
    id: int
    model: str
    version: int
    variant: str
    parent_id: int | None
    format: str
    sha256: str
    size_bytes: int
    info_json: str
    recipe_json: str | None
    target: str | None
    source: str
    tags: tuple[str, ...]
    created_at: datetime

    def __eq__(self, other: object) -> bool:
        """Field by field, whichever way the record was loaded (looked up or listed)."""
        if not isinstance(other, ArtifactRecord):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _ARTIFACT_FIELDS)

    def __hash__(self) -> int:
        return hash((self.id, self.sha256))

    @classmethod
    def from_values(cls, *values: Any) -> ArtifactRecord:
        """Positional field values, without the frozen ``__init__``'s per-field ``__setattr__``
        (listing 10,000 variants builds 10,000 records)."""
        record = object.__new__(cls)
        record.__dict__.update(zip(_ARTIFACT_FIELDS, values, strict=True))
        return record

    @cached_property
    def info_data(self) -> dict[str, Any]:
        """The model info as stored (decoded on first use: listing 10,000 variants never pays
        for parsing their operator tables)."""
        data: dict[str, Any] = json.loads(self.info_json)
        return data

    @cached_property
    def info(self) -> ModelInfo:
        return ModelInfo.from_dict(self.info_data)

    @cached_property
    def recipe_data(self) -> dict[str, Any] | None:
        """The recipe document as stored; None for a base version."""
        return None if self.recipe_json is None else json.loads(self.recipe_json)

    @cached_property
    def recipe(self) -> RecipeSpec | None:
        return None if self.recipe_data is None else RecipeSpec.from_dict(self.recipe_data)

    @property
    def ref(self) -> str:
        return format_ref(self.model, self.version, self.variant)

    @property
    def is_base(self) -> bool:
        return self.parent_id is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "model": self.model,
            "version": self.version,
            "variant": self.variant or None,
            "parent_id": self.parent_id,
            "id": self.id,
            "format": self.format,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "info": self.info_data,
            "recipe": self.recipe_data,
            "target": self.target,
            "source": self.source,
            "tags": list(self.tags),
            "created_at": self.created_at.isoformat(),
        }


_ARTIFACT_FIELDS = tuple(f.name for f in fields(ArtifactRecord))
_LISTED_FIELDS = tuple(f for f in _ARTIFACT_FIELDS if f not in ("info_json", "recipe_json"))


class JsonBatch:
    """The info/recipe JSON of one listing's artifacts, fetched in ONE query the first time any
    of them is read (a listing of 10,000 variants moves ~10 MB of JSON it may never need)."""

    def __init__(self, fetch: Callable[[], dict[int, tuple[str, str | None]]]) -> None:
        self._fetch = fetch
        self._data: dict[int, tuple[str, str | None]] | None = None

    def get(self, artifact_id: int) -> tuple[str, str | None]:
        if self._data is None:
            self._data = self._fetch()
        return self._data[artifact_id]


class ListedArtifactRecord(ArtifactRecord):
    """An :class:`ArtifactRecord` from a listing: ``info_json``/``recipe_json`` come from the
    listing's :class:`JsonBatch` on first use; everything else is the same."""

    @property  # type: ignore[override]
    def info_json(self) -> str:
        return self._batch.get(self.id)[0]  # type: ignore[attr-defined,no-any-return]

    @property  # type: ignore[override]
    def recipe_json(self) -> str | None:
        return self._batch.get(self.id)[1]  # type: ignore[attr-defined,no-any-return]

    @classmethod
    def listed(cls, batch: JsonBatch, *values: Any) -> ListedArtifactRecord:
        record = object.__new__(cls)
        record.__dict__.update(zip(_LISTED_FIELDS, values, strict=True))
        record.__dict__["_batch"] = batch
        return record


@dataclass(frozen=True)
class DerivationRecord:
    id: int
    model: str
    version: int
    variant: str
    parent_id: int | None
    recipe: dict[str, Any]
    status: str
    error: str
    details: dict[str, Any]
    artifact_id: int | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "ref": format_ref(self.model, self.version, self.variant),
            "recipe": self.recipe,
            "status": self.status,
            "error": self.error or None,
            "details": self.details,
            "artifact_id": self.artifact_id,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class EvaluationRecord:
    artifact_id: int
    dataset: str
    host: str
    metrics: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "host": self.host,
            "metrics": self.metrics,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class DatasetRecord:
    id: int
    model: str
    name: str
    role: str
    sha256: str
    size_bytes: int
    n_samples: int
    x_shape: tuple[int, ...]
    x_dtype: str
    has_labels: bool

    @property
    def label(self) -> str:
        return f"dataset:{self.name}@{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "name": self.name,
            "role": self.role,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "n_samples": self.n_samples,
            "x_shape": list(self.x_shape),
            "x_dtype": self.x_dtype,
            "has_labels": self.has_labels,
        }


@dataclass(frozen=True)
class ModelSummary:
    name: str
    description: str
    versions: int
    latest_version: int
    variants: int
    failed_derivations: int
    formats: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "versions": self.versions,
            "latest_version": self.latest_version,
            "variants": self.variants,
            "failed_derivations": self.failed_derivations,
            "formats": list(self.formats),
        }


@dataclass(slots=True)
class LineageNode:
    """One node of a lineage tree: a base version or variant (``status`` "ready") with its recipe
    and its newest evaluation, or a derivation that produced nothing (``status``
    "failed"/"skipped", ``error`` says why). Full records: ``Registry.resolve(ref)``.

    JSON columns arrive as text and are decoded on first use, so building the tree of a model
    with 10,000 variants decodes nothing."""

    ref: str
    status: str
    artifact_id: int | None
    parent_id: int | None
    format: str | None
    size_bytes: int | None
    target: str | None
    recipe_json: str | None
    metrics_json: str | None
    error: str = ""
    error_details: dict[str, Any] | None = None
    children: tuple[LineageNode, ...] = ()

    @property
    def recipe(self) -> dict[str, Any] | None:
        """The recipe document (name, recipe, params, tools, target), None for a base version."""
        return json.loads(self.recipe_json) if self.recipe_json else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The newest evaluation's metrics ({} when never evaluated)."""
        return json.loads(self.metrics_json) if self.metrics_json else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "status": self.status,
            "artifact_id": self.artifact_id,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "target": self.target,
            "recipe": self.recipe,
            "metrics": self.metrics,
            "error": self.error or None,
            "error_details": self.error_details or None,
            "children": [c.to_dict() for c in self.children],
        }
