"""Real telemetry uploads for the server's tests: what a device's :class:`TelemetryRecorder` records
while real ONNX Runtime predictions run on scikit-learn's digits, sealed with the device's key and
sent to ``POST /v1/devices/me/telemetry`` as a signed request.

* :func:`digits_inputs` / :func:`digits_backend` — the 64-pixel digits rows and a real ONNX model
  (least-squares weights, ``MatMul`` + ``Softmax``) run by the edge backend.
* :class:`SimulatedDevice` — the device's clocks: each prediction takes a latency the test chooses
  (drawn from a seeded log-normal around ``latency_ms``) and ``cpu_ms`` of CPU time, which the real
  :class:`PowerModelMeter` turns into joules at ``power_w``; every latency used is kept, so a test
  can compute the numbers independently of the server.
* :func:`seal_windows` / :func:`upload` — :func:`seal_batch` and the signed HTTP request.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from live_server import Plane
from tiny_models import logistic_onnx
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.observe.energy import PowerModelMeter
from tinymlops.observe.recorder import TelemetryRecorder
from tinymlops.observe.sealing import SealedBatch, seal_batch
from tinymlops.spec.telemetry import StoreStatus, TelemetryBatch, TelemetryWindow

UPLOAD = "/v1/devices/me/telemetry"


@functools.cache
def digits_inputs() -> np.ndarray:
    from sklearn.datasets import load_digits

    x: np.ndarray = (load_digits().data / 16.0).astype(np.float32)
    return x


@functools.cache
def _digits_onnx() -> bytes:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.hstack([data.data / 16.0, np.ones((len(data.data), 1))])
    w, *_ = np.linalg.lstsq(x, np.eye(10)[data.target], rcond=None)
    return logistic_onnx((5.0 * w[:64]).T, 5.0 * w[64], 1.0)  # least squares, sharpened by 5


@functools.cache
def digits_backend() -> Any:
    from tinymlops.edge.backends import open_backend

    return open_backend(_digits_onnx())


@dataclass
class SimulatedDevice:
    """One device's clocks and meter around real predictions (see the module doc)."""

    keys: DeviceKeys
    power_w: float = 5.0
    seed: int = 0
    now: float = 1_700_000_000.0
    elapsed: float = 0.0  # the monotonic timer, seconds
    cpu: float = 0.0  # CPU seconds
    latencies: list[float] = field(default_factory=list)  # every successful call's latency, seconds
    joules: list[float] = field(default_factory=list)  # every measured call's energy
    #: window_start -> the latencies (seconds) of that window's calls
    by_window: dict[float, list[float]] = field(default_factory=dict)

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    def window(
        self,
        bundle_id: str,
        calls: int,
        *,
        latency_ms: float = 2.0,
        cpu_ms: float = 1.0,
        duration_s: float = 60.0,
        start: float | None = None,
        rows: np.ndarray | None = None,
        errors: int = 0,
    ) -> TelemetryWindow:
        """A window of ``calls`` single-row predictions on digits (``rows``: the inputs to use); the
        first ``errors`` of them fail in the model (counted as errors, no latency recorded)."""
        if start is not None:
            self.now = start
        rng = np.random.default_rng(self.seed)
        self.seed += 1
        x = digits_inputs() if rows is None else rows
        backend = digits_backend()
        draws = rng.lognormal(np.log(latency_ms / 1e3), 0.25, calls)
        index = iter(range(calls))

        def endpoint(request: Request) -> Response:
            (probs,) = backend.run(request.inputs)
            i = next(index)
            if i < errors:
                raise RuntimeError("the model failed")
            self.elapsed += float(draws[i])
            self.cpu += cpu_ms / 1e3
            return Response(outputs={"probs": probs})

        recorder = TelemetryRecorder(
            bundle_id,
            meter=PowerModelMeter(self.power_w, cpu_clock=lambda: self.cpu),
            clock=lambda: self.now,
            timer=lambda: self.elapsed,
        )
        predict = compose([recorder], endpoint)
        for i in range(calls):
            try:
                predict(Request(x[(self.seed * 97 + i) % len(x)][None, :]))
            except RuntimeError:
                assert i < errors
        draws = draws[errors:]
        self.latencies.extend(float(d) for d in draws)
        self.joules.extend([self.power_w * cpu_ms / 1e3] * (calls - errors))
        self.now += duration_s
        window = recorder.take_window()
        assert window is not None
        self.by_window[window.window_start] = [float(d) for d in draws]
        return window

    def batch(self, *windows: TelemetryWindow, store: StoreStatus | None = None) -> TelemetryBatch:
        self.now += 0.5
        return TelemetryBatch(self.device_id, self.now, tuple(windows), store=store)

    def seal(self, *windows: TelemetryWindow, store: StoreStatus | None = None) -> SealedBatch:
        return seal_batch(self.batch(*windows, store=store), self.keys.signing)


def upload(
    plane: Plane,
    keys: DeviceKeys,
    body: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    """``POST /v1/devices/me/telemetry`` signed by ``keys`` with ``body`` and ``headers`` as given."""
    return plane.signed(keys, "POST", UPLOAD, body, headers=headers)


def send(plane: Plane, device: SimulatedDevice, sealed: SealedBatch) -> httpx.Response:
    return upload(plane, device.keys, sealed.body, sealed.headers())


__all__ = ["UPLOAD", "SimulatedDevice", "digits_backend", "digits_inputs", "send", "upload"]
