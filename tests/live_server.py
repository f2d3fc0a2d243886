"""A real control plane for tests: the FastAPI app under uvicorn on 127.0.0.1 (a free port), in a
thread, over a real workspace; plus helpers to talk to it as an admin and as devices, and to
snapshot the device/access tables (to show a refused request changed nothing).

Import the fixtures into a test module or conftest: ``from live_server import plane  # noqa: F401``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.request_auth import sign_request
from tinymlops.server import ServerSettings, create_app

#: the tables of tinymlops.devices and tinymlops.access
STATE_TABLES = ("devices", "enrolment_tokens", "device_nonces", "device_tokens", "api_keys")
USAGE_COLUMNS = (("api_keys", "last_used_at"), ("devices", "last_seen"), ("device_nonces", "*"))


class LiveServer:
    """uvicorn serving ``create_app(workspace, settings)`` on 127.0.0.1 in a background thread."""

    def __init__(
        self, workspace: Any, settings: ServerSettings | None = None, *, clock: Callable[[], float] = time.time
    ):
        self.app = create_app(workspace, settings, clock=clock)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()


@dataclass
class Plane:
    """A running control plane with a bootstrap admin key."""

    ws: Any
    server: LiveServer
    admin_key: str
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, key: str | None = None) -> httpx.Client:
        """An HTTP client; with ``key``, it sends ``Authorization: Bearer <key>``."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self._clients.append(client)
        return client

    @property
    def admin(self) -> httpx.Client:
        return self.http(self.admin_key)

    def api_key(self, scope: str, name: str = "test") -> tuple[str, str]:
        """(id, key) of a new API key with ``scope``, created through the API."""
        r = self.admin.post("/v1/admin/api-keys", json={"name": name, "scope": scope})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"]

    def enrolment_token(self, **body: Any) -> str:
        r = self.admin.post("/v1/admin/enrolment-tokens", json={"ttl_s": 3600, **body})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def device(self, profile: str = "rpi-4", **token_body: Any) -> DeviceClient:
        """A freshly enrolled device."""
        client = DeviceClient(self.url, DeviceKeys.generate())
        client.enrol(self.enrolment_token(**token_body), profile)
        return client

    def signed(
        self,
        keys: DeviceKeys,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        signed_as: tuple[str, str, bytes] | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request signed by ``keys``; ``signed_as`` = (method, target, body) signs something
        else than what is sent (a forgery)."""
        what = signed_as or (method, target, body)
        auth = sign_request(keys.signing, *what, timestamp=timestamp, nonce=nonce)
        send = {**auth.headers(), **(headers or {})}
        if body:
            send.setdefault("Content-Type", "application/json")
        return self.http().request(method, target, content=body, headers=send)

    def snapshot(self, *, usage: bool = True) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of the device and access tables, sorted (JSON columns as text).

        ``usage=False`` leaves out what an *authenticated* request records before its body is
        validated (``api_keys.last_used_at``, ``devices.last_seen``, the spent nonces)."""
        skip = set() if usage else set(USAGE_COLUMNS)
        out = {}
        with self.ws.engine.connect() as conn:
            for table in STATE_TABLES:
                if (table, "*") in skip:
                    continue
                result = conn.execute(text(f"SELECT * FROM {table}"))
                keep = [i for i, c in enumerate(result.keys()) if (table, c) not in skip]
                out[table] = sorted((tuple(str(r[i]) for i in keep) for r in result.all()), key=repr)
        return out

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.server.stop()


def start_plane(ws: Any, settings: ServerSettings | None = None, *, clock: Callable[[], float] = time.time) -> Plane:
    from tinymlops.access.service import ApiKeyService

    _, key = ApiKeyService(ws.engine).create("bootstrap", "admin", created_by="test")
    return Plane(ws, LiveServer(ws, settings, clock=clock).start(), key)


@pytest.fixture
def plane(sqlite_workspace: Any) -> Iterator[Plane]:
    """A live control plane over a fresh SQLite workspace."""
    p = start_plane(sqlite_workspace)
    yield p
    p.close()


@pytest.fixture
def plane_any_db(workspace: Any) -> Iterator[Plane]:
    """A live control plane over a fresh workspace on SQLite and (when configured) PostgreSQL."""
    p = start_plane(workspace)
    yield p
    p.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error response (asserting the documented shape)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert isinstance(err["type"], str) and isinstance(err["message"], str) and err["message"], body
    assert "Traceback" not in response.text
    return err
