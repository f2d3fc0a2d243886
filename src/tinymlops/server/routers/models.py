"""Models, versions, variants and lineage (read-only; API keys with ``read`` scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from tinymlops.registry.records import ArtifactRecord, EvaluationRecord, LineageNode
from tinymlops.registry.refs import NAME
from tinymlops.server.deps import ReadKey, ServicesDep
from tinymlops.server.error_responses import error_responses

router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(400, 401, 403, 404, 422))

ModelName = Annotated[str, Path(pattern=NAME.pattern, description="A model name.")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]


class ModelSummaryOut(BaseModel):
    name: str
    description: str
    versions: int
    latest_version: int
    variants: int
    failed_derivations: int
    formats: list[str]


class EvaluationOut(BaseModel):
    dataset: str
    host: str
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, ev: EvaluationRecord) -> EvaluationOut:
        return cls(dataset=ev.dataset, host=ev.host, metrics=ev.metrics, created_at=ev.created_at)


class ArtifactOut(BaseModel):
    ref: str
    id: int
    model: str
    version: int
    variant: str | None
    parent_id: int | None
    format: str
    sha256: str
    size_bytes: int
    target: str | None
    source: str
    tags: list[str]
    created_at: datetime
    recipe: dict[str, Any] | None
    info: dict[str, Any]
    evaluation: EvaluationOut | None

    @classmethod
    def of(cls, a: ArtifactRecord, ev: EvaluationRecord | None) -> ArtifactOut:
        return cls(
            ref=a.ref,
            id=a.id,
            model=a.model,
            version=a.version,
            variant=a.variant or None,
            parent_id=a.parent_id,
            format=a.format,
            sha256=a.sha256,
            size_bytes=a.size_bytes,
            target=a.target,
            source=a.source,
            tags=list(a.tags),
            created_at=a.created_at,
            recipe=a.recipe_data,
            info=a.info_data,
            evaluation=None if ev is None else EvaluationOut.of(ev),
        )


class VersionBrief(BaseModel):
    version: int
    ref: str
    sha256: str
    size_bytes: int
    variants: int
    created_at: datetime


class ModelOut(ModelSummaryOut):
    version_list: list[VersionBrief]


class DerivationOut(BaseModel):
    ref: str
    variant: str
    status: str
    error: str | None
    recipe: dict[str, Any]
    details: dict[str, Any]


class VersionOut(BaseModel):
    model: str
    version: int
    base: ArtifactOut
    variants: list[ArtifactOut]
    failed_derivations: list[DerivationOut]


class LineageNodeOut(BaseModel):
    ref: str
    status: str
    artifact_id: int | None
    format: str | None
    size_bytes: int | None
    target: str | None
    recipe: dict[str, Any] | None
    metrics: dict[str, Any]
    error: str | None
    error_details: dict[str, Any] | None
    children: list[LineageNodeOut]

    @classmethod
    def of(cls, node: LineageNode) -> LineageNodeOut:
        return cls(
            ref=node.ref,
            status=node.status,
            artifact_id=node.artifact_id,
            format=node.format,
            size_bytes=node.size_bytes,
            target=node.target,
            recipe=node.recipe,
            metrics=node.metrics,
            error=node.error or None,
            error_details=node.error_details or None,
            children=[cls.of(c) for c in node.children],
        )


@router.get("", response_model=list[ModelSummaryOut])
def list_models(services: ServicesDep, _key: ReadKey) -> list[ModelSummaryOut]:
    return [ModelSummaryOut(**m.to_dict()) for m in services.workspace.registry.list_models()]


@router.get("/{name}", response_model=ModelOut)
def show_model(name: ModelName, services: ServicesDep, _key: ReadKey) -> ModelOut:
    registry = services.workspace.registry
    artifacts = registry.artifacts(name)
    summary = next(m for m in registry.list_models() if m.name == name)
    counts: dict[int, int] = {}
    for a in artifacts:
        if a.variant:
            counts[a.version] = counts.get(a.version, 0) + 1
    versions = [
        VersionBrief(
            version=a.version,
            ref=a.ref,
            sha256=a.sha256,
            size_bytes=a.size_bytes,
            variants=counts.get(a.version, 0),
            created_at=a.created_at,
        )
        for a in sorted(artifacts, key=lambda a: a.version)
        if not a.variant
    ]
    return ModelOut(**summary.to_dict(), version_list=versions)


@router.get("/{name}/versions/{version}", response_model=VersionOut)
def show_version(name: ModelName, version: Version, services: ServicesDep, _key: ReadKey) -> VersionOut:
    registry = services.workspace.registry
    base = registry.resolve(f"{name}:{version}")
    artifacts = registry.artifacts(name, version)
    evaluations = registry.evaluations(a.id for a in artifacts)

    def out(a: ArtifactRecord) -> ArtifactOut:
        evs = evaluations.get(a.id)
        return ArtifactOut.of(a, evs[-1] if evs else None)

    present = {a.variant for a in artifacts}
    failed = [d for d in registry.derivations(name, version) if d.status != "succeeded" and d.variant not in present]
    return VersionOut(
        model=name,
        version=version,
        base=out(base),
        variants=[out(a) for a in artifacts if a.variant],
        failed_derivations=[
            DerivationOut(
                ref=f"{name}:{version}/{d.variant}",
                variant=d.variant,
                status=d.status,
                error=d.error or None,
                recipe=d.recipe,
                details=d.details,
            )
            for d in failed
        ],
    )


@router.get("/{name}/lineage", response_model=list[LineageNodeOut])
def lineage(
    name: ModelName,
    services: ServicesDep,
    _key: ReadKey,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[LineageNodeOut]:
    return [LineageNodeOut.of(n) for n in services.workspace.registry.lineage(name, version)]
