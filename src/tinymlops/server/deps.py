"""Injected dependencies: the services (built once per app), and who is calling.

Admin callers send ``Authorization: Bearer tmk_…`` (an API key; :func:`require_scope`). Devices
sign each request (the ``X-Tinymlops-*`` headers, :mod:`tinymlops.devices.request_auth`) or send
``Authorization: Bearer tmd_…`` (a short-lived device token). Sync dependencies run in
FastAPI's thread pool, so database work never blocks the event loop; the dependencies that do no
I/O (:func:`get_services`, :func:`reject_unknown_query`) are ``async`` so that they run on the
event loop instead: every thread-pool hop costs a device request a hand-off between threads (and
the GIL), which the fleet-load benchmark (``benchmarks/bench_fleet_load.py``) showed among the
server's top costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tinymlops.access.credentials import API_KEY_PREFIX, DEVICE_TOKEN_PREFIX, kind_of
from tinymlops.access.scopes import Scope
from tinymlops.access.service import ApiKeyRecord, ApiKeyService
from tinymlops.devices.enrolment import EnrolmentService
from tinymlops.devices.records import DeviceRecord
from tinymlops.devices.request_auth import HEADER_SIGNATURE, ReceivedRequest
from tinymlops.devices.service import DeviceService
from tinymlops.errors import AccessDeniedError, AuthenticationError
from tinymlops.metering.licensing import LicenseService
from tinymlops.release.service import ReleaseService
from tinymlops.server.settings import ServerSettings
from tinymlops.workspace import Workspace

DEVICE_ID_PATTERN = r"^[0-9a-f]{16}$"


@dataclass
class Services:
    """Everything the routers use, built once in :func:`tinymlops.server.app.create_app`."""

    workspace: Workspace
    settings: ServerSettings
    devices: DeviceService
    enrolment: EnrolmentService
    api_keys: ApiKeyService
    releases: ReleaseService
    licenses: LicenseService
    #: the app's clock (seconds since the epoch): what "now" means to the routes
    clock: Callable[[], float] = field(default=time.time)


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _declared_query(route: APIRoute) -> frozenset[str]:
    """The query parameters a route (and its dependencies) declares; cached on the route."""
    names: frozenset[str] | None = getattr(route, "_tinymlops_query_names", None)
    if names is None:
        names = frozenset(_query_names(route.dependant))
        route._tinymlops_query_names = names  # type: ignore[attr-defined]
    return names


async def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are refused (422), as unknown body fields are: a typo in a filter
    must not silently return everything."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _declared_query(route))
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Unknown query parameter", "input": None}
                for name in unknown
            ]
        )


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="Bearer",
    description="An admin API key (tmk_…) or a device bearer token (tmd_…).",
)
signature_scheme = APIKeyHeader(
    name=HEADER_SIGNATURE,
    auto_error=False,
    scheme_name="DeviceSignature",
    description="A signed device request: X-Tinymlops-Device, -Timestamp, -Nonce and -Signature "
    "(see tinymlops.devices.request_auth).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
SignatureDep = Annotated[str | None, Security(signature_scheme)]


async def received_request(request: Request) -> ReceivedRequest:
    """The request as its signature covers it: method, raw target, body bytes, raw headers."""
    body = await request.body()
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    target = f"{path}?{query}" if query else path
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope.get("headers", ()))
    return ReceivedRequest(request.method, target, body, headers)


ReceivedDep = Annotated[ReceivedRequest, Depends(received_request)]


def _api_key(services: Services, credentials: HTTPAuthorizationCredentials | None, scope: Scope) -> ApiKeyRecord:
    if credentials is None:
        raise AuthenticationError(f"this needs an API key with scope '{scope}': send 'Authorization: Bearer tmk_…'")
    if kind_of(credentials.credentials) == DEVICE_TOKEN_PREFIX:
        raise AccessDeniedError(f"devices may not call this; it needs an API key with scope '{scope}'")
    return services.api_keys.authenticate(credentials.credentials, scope)


def require_scope(scope: Scope) -> Callable[..., ApiKeyRecord]:
    """A dependency admitting API keys whose scope includes ``scope``."""

    def dependency(services: ServicesDep, credentials: BearerDep) -> ApiKeyRecord:
        return _api_key(services, credentials, scope)

    dependency.__name__ = f"require_{scope}_scope"
    return dependency


ReadKey = Annotated[ApiKeyRecord, Depends(require_scope(Scope.READ))]
ReleaseKey = Annotated[ApiKeyRecord, Depends(require_scope(Scope.RELEASE))]
AdminKey = Annotated[ApiKeyRecord, Depends(require_scope(Scope.ADMIN))]


def _device(
    services: Services,
    received: ReceivedRequest,
    credentials: HTTPAuthorizationCredentials | None,
    *,
    must_be: str | None = None,
    allow_bearer: bool = True,
) -> DeviceRecord:
    if credentials is not None and kind_of(credentials.credentials) == DEVICE_TOKEN_PREFIX:
        if not allow_bearer:
            raise AuthenticationError("this needs a signed device request; a bearer token is not enough")
        return services.devices.authenticate_token(credentials.credentials, must_be=must_be)
    if credentials is not None and kind_of(credentials.credentials) == API_KEY_PREFIX:
        raise AccessDeniedError("this is a device endpoint; an API key cannot call it")
    return services.devices.authenticate(received, must_be=must_be)


def current_device(
    services: ServicesDep, received: ReceivedDep, credentials: BearerDep, _signature: SignatureDep
) -> DeviceRecord:
    """The calling device (signed request or device bearer token)."""
    return _device(services, received, credentials)


def signed_device(services: ServicesDep, received: ReceivedDep, _signature: SignatureDep) -> DeviceRecord:
    """The calling device, by a signed request only."""
    return _device(services, received, None, allow_bearer=False)


CurrentDevice = Annotated[DeviceRecord, Depends(current_device)]
SignedDevice = Annotated[DeviceRecord, Depends(signed_device)]
DeviceIdPath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="16 lower-case hex digits")]


def device_or_reader(
    device_id: DeviceIdPath,
    services: ServicesDep,
    received: ReceivedDep,
    credentials: BearerDep,
    _signature: SignatureDep,
) -> ApiKeyRecord | DeviceRecord:
    """An API key with ``read`` scope, or the device ``device_id`` itself (any other device: 403)."""
    if credentials is not None and kind_of(credentials.credentials) == API_KEY_PREFIX:
        return services.api_keys.authenticate(credentials.credentials, Scope.READ)
    return _device(services, received, credentials, must_be=device_id)


__all__ = [
    "AdminKey",
    "CurrentDevice",
    "DeviceIdPath",
    "ReadKey",
    "ReceivedDep",
    "ReleaseKey",
    "Services",
    "ServicesDep",
    "SignatureDep",
    "SignedDevice",
    "device_or_reader",
    "get_services",
    "reject_unknown_query",
    "require_scope",
]
