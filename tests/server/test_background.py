"""The control plane in a background thread: starts on a free port, serves, stops and frees it."""

from __future__ import annotations

import socket

import httpx
import pytest

from tinymlops.errors import OperationError
from tinymlops.server.background import BackgroundServer


def test_background_server_serves_and_stops(sqlite_workspace) -> None:
    with BackgroundServer(sqlite_workspace) as server:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        # the port is taken while it runs
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", server.port))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_a_taken_port_is_a_clear_error(sqlite_workspace) -> None:
    with BackgroundServer(sqlite_workspace) as server, pytest.raises(OperationError, match="cannot listen"):
        BackgroundServer(sqlite_workspace, port=server.port)
