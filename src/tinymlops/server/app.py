"""``create_app(workspace, settings)``: the FastAPI application over one workspace.

Adding a resource is one ``app.include_router(...)`` line below, and (when it needs one) one
field in :class:`~tinymlops.server.deps.Services`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import Depends, FastAPI

from tinymlops import __version__
from tinymlops.access.service import ApiKeyService
from tinymlops.bundle.workspace_keys import release_key
from tinymlops.devices.enrolment import EnrolmentService
from tinymlops.devices.service import DeviceService
from tinymlops.metering.licensing import LicenseService
from tinymlops.release.service import ReleaseService
from tinymlops.server.body_limit import BodyLimitMiddleware
from tinymlops.server.deps import Services, reject_unknown_query
from tinymlops.server.error_responses import install_error_handlers
from tinymlops.server.routers import admin, dashboard, devices, fleet, health, models, releases, updates
from tinymlops.server.routers.drift import router as drift_router
from tinymlops.server.routers.licenses import router as licenses_router
from tinymlops.server.routers.telemetry import router as telemetry_router
from tinymlops.server.settings import ServerSettings
from tinymlops.workspace import Workspace

API_PREFIX = "/v1"


def create_app(
    workspace: Workspace, settings: ServerSettings | None = None, *, clock: Callable[[], float] = time.time
) -> FastAPI:
    """The control-plane app. The caller owns ``workspace`` (and closes it after the server stops)."""
    settings = settings or ServerSettings()
    app = FastAPI(
        title="tinymlops control plane",
        version=__version__,
        description="Models, devices, releases, the update repository, licenses and admin access of one tinymlops "
        "workspace.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.services = Services(
        workspace=workspace,
        settings=settings,
        devices=DeviceService(
            workspace.engine, window_s=settings.clock_window_s, token_ttl_s=settings.device_token_ttl_s, clock=clock
        ),
        enrolment=EnrolmentService(
            workspace.engine, workspace.targets.get, window_s=settings.clock_window_s, clock=clock
        ),
        api_keys=ApiKeyService(workspace.engine, clock=clock),
        releases=ReleaseService(workspace, clock=lambda: datetime.fromtimestamp(clock(), UTC)),
        # licenses are signed with the release key: devices already trust it (TUF bootstrap), and
        # license signatures are domain-separated from manifest signatures
        licenses=LicenseService(workspace.engine, release_key(workspace), clock=clock),
        clock=clock,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    app.include_router(models.router, prefix=API_PREFIX)
    app.include_router(devices.router, prefix=API_PREFIX)
    app.include_router(admin.router, prefix=API_PREFIX)
    app.include_router(releases.router, prefix=API_PREFIX)
    app.include_router(updates.router, prefix=API_PREFIX)
    app.include_router(fleet.router, prefix=API_PREFIX)
    app.include_router(telemetry_router, prefix=API_PREFIX)
    app.include_router(drift_router, prefix=API_PREFIX)
    app.include_router(licenses_router, prefix=API_PREFIX)
    app.include_router(dashboard.router)
    return app


__all__ = ["API_PREFIX", "create_app"]
