"""How often a device request crosses from the event loop into the thread pool, against a live server.

Each crossing is a hand-off between threads (and of the GIL) that every device request pays; the
fleet-load benchmark (``benchmarks/bench_fleet_load.py``) found them among the server's top costs
under load. Only dependencies that do I/O (the device lookup and its nonce write) and the endpoint
itself may cross; the dependencies that only read the app state or the query string run on the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

import live_server
from live_server import Plane
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.request_auth import sign_request

plane = live_server.plane  # the live control plane (fixture)


@pytest.fixture
def crossings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function FastAPI hands to the thread pool while the test runs."""
    import fastapi.dependencies.utils as dependency_utils
    import fastapi.routing as routing

    seen: list[str] = []
    real = routing.run_in_threadpool

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        target = kwargs.get("function", func)  # the endpoint is passed as function= to a runner
        seen.append(getattr(target, "__name__", type(target).__name__))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(routing, "run_in_threadpool", counting)
    monkeypatch.setattr(dependency_utils, "run_in_threadpool", counting)
    return seen


def _signed_get(plane: Plane, keys: DeviceKeys, target: str) -> httpx.Response:
    auth = sign_request(keys.signing, "GET", target)
    return plane.http().get(target, headers=auth.headers())


def test_a_tuf_poll_crosses_into_the_thread_pool_only_for_the_device_and_the_endpoint(
    plane: Plane, crossings: list[str]
) -> None:
    keys = plane.device().keys
    for target, status in (("/v1/tuf/metadata/timestamp.json", 200), ("/v1/tuf/metadata/2.root.json", 404)):
        crossings.clear()
        response = _signed_get(plane, keys, target)
        assert response.status_code == status, response.text
        assert crossings == ["current_device", "tuf_metadata"]


def test_no_request_sends_the_io_free_dependencies_to_the_thread_pool(plane: Plane, crossings: list[str]) -> None:
    assert _signed_get(plane, plane.device().keys, "/v1/devices/me").status_code == 200
    assert plane.admin.get("/v1/devices").status_code == 200
    refused = plane.admin.get("/v1/devices", params={"stauts": "active"})  # a typo in a filter: still a 422
    assert refused.status_code == 422 and "stauts" in refused.text
    assert crossings and not {"get_services", "reject_unknown_query"} & set(crossings), crossings
