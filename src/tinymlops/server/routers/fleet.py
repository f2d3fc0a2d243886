"""The fleet as a whole: ``GET /fleet/latency?window=1h|24h|7d|all`` (scope ``read``) — p50/p95
latency, predictions and errors per device class (profile) and variant ref, from the health reports
the agents sent (:meth:`tinymlops.release.health.HealthReports.latency_by_class`). The dashboard's
latency page shows the same numbers."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tinymlops.server.dashboard.views import DEFAULT_WINDOW, WINDOWS
from tinymlops.server.deps import ReadKey, ServicesDep
from tinymlops.server.error_responses import error_responses

router = APIRouter(prefix="/fleet", tags=["fleet"], responses=error_responses(400, 401, 403, 422))

Window = Literal["1h", "24h", "7d", "all"]
assert set(WINDOWS) == set(Window.__args__) and DEFAULT_WINDOW == "24h"  # type: ignore[attr-defined]


class ClassLatencyOut(BaseModel):
    profile: str = Field(description="The device profile (device class).")
    ref: str | None = Field(description="The variant the devices ran (None: a bundle no release published).")
    reports: int
    devices: int
    predictions: int
    errors: int
    error_rate: float | None = Field(description="errors / predictions (None without predictions).")
    p50_ms: float | None = Field(description="Prediction-weighted median of the reports' p50 latency.")
    p95_ms: float | None = Field(description="Prediction-weighted 95th percentile of the reports' p95 latency.")


class FleetLatencyOut(BaseModel):
    window: Window
    classes: list[ClassLatencyOut] = Field(description="Sorted by profile, then ref.")


@router.get("/latency", response_model=FleetLatencyOut)
def fleet_latency(
    services: ServicesDep,
    _key: ReadKey,
    window: Annotated[Window, Query(description="Health reports received in the last 1h, 24h, 7d, or all.")] = "24h",
) -> FleetLatencyOut:
    """Latency and errors per device class and variant over a window of health reports."""
    classes = services.releases.health.latency_by_class(since=WINDOWS[window])
    return FleetLatencyOut(window=window, classes=[ClassLatencyOut(**c.to_dict()) for c in classes])


__all__ = ["router"]
