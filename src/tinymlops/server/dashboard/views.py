"""What the dashboard pages show, assembled from the existing services (no HTML here): the fleet
overview, a model's lineage, and latency per device class over a window of health reports
(:data:`WINDOWS`, shared with ``GET /v1/fleet/latency``). The release pages' views are in
:mod:`~tinymlops.server.dashboard.views_release`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tinymlops.devices.service import DeviceService
from tinymlops.errors import InvalidInputError, NotFoundError
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
    release_id: str | None  # the release that published the bundle it runs (None: unknown / not a release's)


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
                release_id=deployment.release_id if deployment else None,
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


# --- latency by device class ----------------------------------------------------------------------
#: the windows the latency page and ``GET /v1/fleet/latency`` offer: reports received in the last …
WINDOWS: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "all": None,
}
DEFAULT_WINDOW = "24h"


@dataclass(frozen=True)
class LatencyRow:
    """One device profile on one variant ref: what its devices reported in the window."""

    profile: str
    ref: str  # or NONE: bundles no release published
    reports: int
    devices: int
    predictions: int
    errors: int
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class LatencyView:
    window: str
    rows: list[LatencyRow]  # sorted by profile, then ref

    @property
    def by_profile(self) -> list[tuple[str, list[LatencyRow]]]:
        groups: dict[str, list[LatencyRow]] = {}
        for r in self.rows:
            groups.setdefault(r.profile, []).append(r)
        return list(groups.items())


def check_window(window: str | None) -> str:
    """``window`` if it is one of :data:`WINDOWS` (:data:`DEFAULT_WINDOW` when None), else
    :class:`InvalidInputError` naming the allowed ones."""
    if window is None:
        return DEFAULT_WINDOW
    if window not in WINDOWS:
        raise InvalidInputError(f"unknown window {window[:40]!r}; choose one of {', '.join(WINDOWS)}")
    return window


def latency_by_class(releases: ReleaseService, window: str | None) -> LatencyView:
    """p50/p95 latency, predictions and errors per (profile, variant ref) over the health reports
    received in ``window`` (``services.releases.health.latency_by_class``)."""
    window = check_window(window)
    rows = [
        LatencyRow(
            profile=c.profile,
            ref=c.ref or NONE,
            reports=c.stats.reports,
            devices=c.stats.devices,
            predictions=c.stats.predictions,
            errors=c.stats.errors,
            error_rate=c.stats.error_rate,
            p50_ms=c.stats.p50_ms,
            p95_ms=c.stats.p95_ms,
        )
        for c in releases.health.latency_by_class(since=WINDOWS[window])
    ]
    return LatencyView(window, rows)


__all__ = [
    "DEFAULT_WINDOW",
    "NONE",
    "WINDOWS",
    "DeviceRow",
    "FleetOverview",
    "LatencyRow",
    "LatencyView",
    "LineageRow",
    "ModelLineage",
    "check_window",
    "fleet_overview",
    "latency_by_class",
    "model_lineage",
]
