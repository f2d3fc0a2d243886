"""Update delivery end to end, for tests: a real control plane (``live_server``) over a real workspace
with real models registered, real agents that enrol with it and follow its TUF repository, and the
variants run directly in ONNX Runtime to compare against.

A plain module (``from delivery_world import delivery  # noqa: F401`` registers the fixture).

``tiny:1``, ``tiny:2``, ``tiny:3``  a MatMul [batch, 4] x [4, 2] with weights scaled by 1, 2, 3:
                                    each version predicts something different
``World.connect(dir)``              a device: keys created in ``dir``, enrolled with a fresh token,
                                    trust bootstrapped (:func:`tinymlops.edge.agent.remote.connect`)
``World.release(model, devices)``   ``POST /v1/releases`` with a ``release``-scope key
``World.expected(ref, x)``          the registered variant's outputs, straight from ONNX Runtime
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from live_server import Plane, start_plane
from tiny_models import tiny_onnx
from tinymlops.edge.agent import Agent, AgentConfig
from tinymlops.edge.agent.remote import Connection, connect
from tinymlops.server import ServerSettings

#: fast polling and back-off for tests (the defaults are a minute and more)
FAST = AgentConfig(poll_interval=0.2, poll_jitter=0.1, backoff_base=0.05, backoff_cap=0.4)
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], dtype=np.float32)

#: a workspace profile for an integer-only accelerator: only the dynamic int8 variant's operators
INT8_NPU_PROFILE = """\
spec_version = "1.0"
name = "int8-npu-board"
device_class = "sbc"
description = "A test board whose NPU runs only integer matrix products (ONNX Runtime with a reduced op set)."
backends = ["onnxruntime"]
dtypes = ["fp32", "int8"]
onnx_operators = ["Cast", "DynamicQuantizeLinear", "MatMulInteger", "Mul"]
max_opset = 21
ram_mb = 512
storage_mb = 1024
relative_compute = 0.2
active_power_w = 3.0
idle_power_w = 1.0
"""


@dataclass
class World:
    ws: Any
    plane: Plane
    release_key: str
    read_key: str

    @property
    def url(self) -> str:
        return self.plane.url

    @property
    def tuf(self) -> Path:
        return Path(self.ws.root) / "tuf"

    def release(self, model: str, devices: list[str] | None = None, **body: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": model, **body}
        if devices is not None:
            payload["devices"] = devices
        r = self.plane.http(self.release_key).post("/v1/releases", json=payload)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def show(self, release_id: str) -> dict[str, Any]:
        r = self.plane.http(self.read_key).get(f"/v1/releases/{release_id}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def connect(self, data_dir: Path, profile: str = "rpi-4", **token_body: Any) -> Connection:
        return connect(self.url, data_dir, enrolment_token=self.plane.enrolment_token(**token_body), profile=profile)

    def agent(self, conn: Connection, **kwargs: Any) -> Agent:
        kwargs.setdefault("config", FAST)
        agent: Agent = conn.agent(**kwargs)
        agent.start()
        return agent

    def expected(self, ref: str, x: np.ndarray = X) -> np.ndarray:
        import onnxruntime as ort

        data = self.ws.registry.read_bytes(self.ws.registry.resolve(ref))
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        out: np.ndarray = session.run(None, {"x": x})[0]
        return out


def assert_serves(agent: Agent, world: World, ref: str, bundle_id: str) -> None:
    """The agent's active slot holds ``bundle_id`` and predicts exactly what ``ref`` predicts."""
    active = agent.state.active_bundle
    assert active is not None and active.bundle_id == bundle_id, (active, bundle_id)
    y = agent.predict(X).outputs["y"]
    np.testing.assert_array_equal(y, world.expected(ref))


@contextmanager
def open_world(ws: Any, settings: ServerSettings | None = None) -> Iterator[World]:
    plane = start_plane(ws, settings)
    try:
        _, release_key = plane.api_key("release", "releaser")
        _, read_key = plane.api_key("read", "reader")
        yield World(ws, plane, release_key, read_key)
    finally:
        plane.close()


def register_tiny(ws: Any, versions: int = 3) -> None:
    for scale in range(1, versions + 1):
        ws.registry.register("tiny", tiny_onnx(float(scale)))


@pytest.fixture
def delivery(sqlite_workspace: Any) -> Iterator[World]:
    """A live control plane over a workspace holding tiny:1..3 (no variants: explicit or trivial selection)."""
    register_tiny(sqlite_workspace)
    with open_world(sqlite_workspace) as world:
        yield world


@pytest.fixture
def delivery_any_db(workspace: Any) -> Iterator[World]:
    """:func:`delivery` on SQLite and (when configured) PostgreSQL."""
    register_tiny(workspace)
    with open_world(workspace) as world:
        yield world


# --- `tinymlops serve` as a real process ----------------------------------------------------------
class ServeProcess:
    """``tinymlops serve`` in a subprocess (log to a file, never a pipe that could fill up)."""

    def __init__(self, ws: Path, log: Path, port: int = 0) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "tinymlops", "serve", "--port", str(port), "--workspace", str(ws)]
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            env={**os.environ, "COLUMNS": "200"},
        )
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"control plane on (http://127\.0\.0\.1:(\d+))", log.read_text())
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                break
            assert self.proc.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
