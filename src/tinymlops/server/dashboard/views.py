"""What the dashboard pages show, assembled from the existing services (no HTML here)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tinymlops.devices.service import DeviceService
from tinymlops.errors import NotFoundError
from tinymlops.registry.records import LineageNode, ModelSummary
from tinymlops.release.service import ReleaseRecord, ReleaseService
from tinymlops.workspace import Workspace

NONE = "(none)"


@dataclass(frozen=True)
class DeviceRow:
    id: str
    profile: str
    tags: tuple[str, ...]
    status: str
    last_seen: datetime | None
    variant: str  # the ref the device's current release assigned it, or NONE
    bundle_id: str  # the bundle the device last reported running, or NONE
    install_status: str  # its last install report's status, or NONE


@dataclass(frozen=True)
class FleetOverview:
    devices: list[DeviceRow]
    by_profile: list[tuple[str, int]]
    by_variant: list[tuple[str, int]]
    by_status: list[tuple[str, int]]
    models: list[ModelSummary]


def fleet_overview(workspace: Workspace, devices: DeviceService, releases: ReleaseService) -> FleetOverview:
    """Every device with what it runs (from its deployment: the latest install report), and counts."""
    release_cache: dict[str, ReleaseRecord | None] = {}

    def release(release_id: str) -> ReleaseRecord | None:
        if release_id not in release_cache:
            try:
                release_cache[release_id] = releases.get_release(release_id)
            except NotFoundError:
                release_cache[release_id] = None
        return release_cache[release_id]

    rows = []
    for d in devices.list():
        deployment = releases.deployment(d.id)
        variant = NONE
        if deployment is not None and deployment.release_id:
            rel = release(deployment.release_id)
            published = {a.device_id: a.ref for a in rel.assignments} if rel is not None else {}
            variant = published.get(d.id) or NONE
        rows.append(
            DeviceRow(
                id=d.id,
                profile=d.profile_name,
                tags=d.tags,
                status="active" if d.active else "revoked",
                last_seen=d.last_seen,
                variant=variant,
                bundle_id=(deployment.bundle_id if deployment else None) or NONE,
                install_status=deployment.last_status if deployment else NONE,
            )
        )
    rows.sort(key=lambda r: (r.profile, r.id))

    def counts(values: list[str]) -> list[tuple[str, int]]:
        return sorted(Counter(values).items())

    return FleetOverview(
        devices=rows,
        by_profile=counts([r.profile for r in rows]),
        by_variant=counts([r.variant for r in rows]),
        by_status=counts([r.status for r in rows]),
        models=workspace.registry.list_models(),
    )


@dataclass(frozen=True)
class LineageRow:
    depth: int
    ref: str
    status: str
    format: str | None
    size_bytes: int | None
    target: str | None
    recipe: dict[str, Any] | None
    metrics: dict[str, Any]
    error: str


@dataclass(frozen=True)
class ModelLineage:
    summary: ModelSummary
    rows: list[LineageRow]  # the lineage forest, depth-first (a base version at depth 0)


def model_lineage(workspace: Workspace, name: str) -> ModelLineage:
    """The lineage of model ``name``; :class:`NotFoundError` for an unknown model."""
    registry = workspace.registry
    summary = next((m for m in registry.list_models() if m.name == name), None)
    if summary is None:
        raise NotFoundError(f"no model named {name!r}")
    rows: list[LineageRow] = []

    def walk(node: LineageNode, depth: int) -> None:
        rows.append(
            LineageRow(
                depth=depth,
                ref=node.ref,
                status=node.status,
                format=node.format,
                size_bytes=node.size_bytes,
                target=node.target,
                recipe=node.recipe,
                metrics=node.metrics,
                error=node.error,
            )
        )
        for child in node.children:
            walk(child, depth + 1)

    for root in registry.lineage(name):
        walk(root, 0)
    return ModelLineage(summary, rows)


__all__ = ["NONE", "DeviceRow", "FleetOverview", "LineageRow", "ModelLineage", "fleet_overview", "model_lineage"]
