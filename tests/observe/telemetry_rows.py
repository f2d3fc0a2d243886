"""Real telemetry in the server's tables, for drift tests (until tests go through the ingestion endpoint).

* :func:`digits_world` — scikit-learn's digits split into train (a logistic regression, exported as
  a real ONNX model: ``MatMul`` + ``Add`` + ``Softmax`` on the 64 raw pixels), ``eval`` (the
  dataset the reference is computed from) and ``field`` (what devices see).
* :func:`enrol` — devices enrolled the way the server does it (a signed enrolment request), with tags.
* :func:`device_windows` — what a device's :class:`TelemetryRecorder` produces while its runtime
  serves real ONNX Runtime predictions on the rows it is given (optionally privatized by the
  recorder's own local DP, with a seeded generator).
* :func:`insert_windows` — those windows sealed with the device's key (:func:`seal_batch`: digest,
  signature, sizes) and inserted into ``telemetry_batches`` / ``telemetry_windows`` exactly as
  :mod:`tinymlops.observe.schema` documents the columns.
* :func:`populate` — all of it: ten devices (tags site-a / site-b), site-b's inputs shifted.

Server and CLI tests import it as ``observe.telemetry_rows``.
"""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnxruntime as ort

from enrolled_devices import enrol_device
from tiny_models import logistic_onnx
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.middleware import Request, Response
from tinymlops.observe.ingest import BundleOrigin, window_row
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.recorder import TelemetryRecorder
from tinymlops.observe.schema import TelemetryBatchRow
from tinymlops.observe.sealing import seal_batch
from tinymlops.optimize.pipeline import register_model
from tinymlops.registry.db import session_factory
from tinymlops.spec.telemetry import TelemetryBatch, TelemetryWindow

SHIFTED_PIXELS = (19, 36, 43)
TAGS = [["site-a"]] * 5 + [["site-b"]] * 5


@dataclass(frozen=True)
class DigitsWorld:
    onnx: bytes
    x_eval: np.ndarray
    y_eval: np.ndarray
    x_field: np.ndarray
    y_field: np.ndarray

    def eval_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, x=self.x_eval, y=self.y_eval)
        return buf.getvalue()


def digits_world(seed: int = 0) -> DigitsWorld:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    train, ev, field = idx[:600], idx[600:1200], idx[1200:]
    model = LogisticRegression(max_iter=3000).fit(x[train] / 16.0, y[train])
    return DigitsWorld(
        onnx=logistic_onnx(model.coef_, model.intercept_, 1 / 16.0),
        x_eval=x[ev],
        y_eval=y[ev],
        x_field=x[field],
        y_field=y[field],
    )


def enrol(ws: Any, tags: Sequence[Sequence[str]], profile: str = "rpi-4") -> list[DeviceKeys]:
    """One device per entry of ``tags``, enrolled through the real enrolment service."""
    return [enrol_device(ws, profile=profile, tags=device_tags) for device_tags in tags]


class OnnxEndpoint:
    """The runtime's model call: ONNX Runtime on the request's inputs."""

    def __init__(self, model: bytes) -> None:
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def __call__(self, request: Request) -> Response:
        (probabilities,) = self.session.run(None, {"x": request.inputs.astype(np.float32)})
        return Response(outputs={"probabilities": probabilities})


def device_windows(
    model: bytes,
    x: np.ndarray,
    *,
    windows: int = 2,
    start: float,
    seconds: float = 300.0,
    batch: int = 8,
    classes_epsilon: float | None = None,
    confidence_epsilon: float | None = None,
    seed: int = 0,
    ref: str = "digits:1",
) -> list[TelemetryWindow]:
    """The windows a device's recorder closes while serving ``x`` (``batch`` rows per call),
    ``windows`` of them one after the other from ``start``."""
    clock = [start]
    policy = TelemetryPolicy(
        privacy=PrivacyPolicy(
            classes_epsilon=classes_epsilon, confidence_epsilon=confidence_epsilon, window_epsilon=10, day_epsilon=100
        )
    )
    recorder = TelemetryRecorder(
        secrets.token_hex(16), model=ref, policy=policy, clock=lambda: clock[0], rng=np.random.default_rng(seed)
    )
    endpoint = OnnxEndpoint(model)
    out = []
    for w, part in enumerate(np.array_split(x, windows)):
        for i in range(0, part.shape[0], batch):
            recorder(Request(inputs=part[i : i + batch]), endpoint)
        clock[0] = start + (w + 1) * seconds
        window = recorder.take_window()
        if window is not None:
            out.append(window)
    return out


def insert_windows(
    ws: Any,
    keys: DeviceKeys,
    windows: Sequence[TelemetryWindow],
    *,
    model: str,
    version: int | None,
    profile: str = "rpi-4",
    tags: Sequence[str] = (),
    ref: str | None = None,
) -> str:
    """Seal ``windows`` as one batch of the device and insert its rows; returns the batch digest."""
    batch = TelemetryBatch(
        device_id=keys.device_id, created_at=max(w.window_end for w in windows), windows=tuple(windows)
    )
    sealed = seal_batch(batch, keys.signing)
    sessions = session_factory(ws.engine)
    with sessions() as session:
        row = TelemetryBatchRow(
            device_id=keys.device_id,
            digest=sealed.digest,
            signature=sealed.signature,
            spec_version=batch.spec_version,
            created_at=batch.created_at,
            windows=len(windows),
            payload_bytes=sealed.payload_bytes,
            body_bytes=len(sealed.body),
        )
        session.add(row)
        session.flush()
        for w in windows:
            origin = BundleOrigin(w.bundle_id, None, ref or w.model, model, version)
            session.add(
                window_row(
                    row.id,
                    device_id=keys.device_id,
                    profile_name=profile,
                    tags=list(tags),
                    origin=origin,
                    window=w,
                    received_at=datetime.now(UTC),
                )
            )
        session.commit()
    return sealed.digest


def shifted(
    x: np.ndarray, reference: np.ndarray, pixels: Sequence[int] = SHIFTED_PIXELS, sd: float = 0.5
) -> np.ndarray:
    """``x`` with ``sd`` reference standard deviations added to each of ``pixels``."""
    out = x.copy()
    for p in pixels:
        out[:, p] += sd * reference[:, p].std()
    return out


def populate(
    ws: Any,
    world: DigitsWorld,
    *,
    shift: bool = True,
    seed: int = 0,
    start: float | None = None,
    tags: list[list[str]] = TAGS,
    **window_options: Any,
) -> list[Any]:
    """The standard drifting fleet: register the model with its eval set (the reference is computed
    then), enrol the devices, and store two windows per device of the field rows it served (site-b
    shifted when ``shift``)."""
    result = register_model(ws, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    assert result.reference is not None and result.reference["status"] == "built"
    keys = enrol(ws, tags)
    start = time.time() - 1800 if start is None else start
    order = np.random.default_rng(seed).permutation(world.x_field.shape[0])
    for i, (k, t, part) in enumerate(zip(keys, tags, np.array_split(order, len(keys)), strict=True)):
        x = world.x_field[part]
        if shift and t == ["site-b"]:
            x = shifted(x, world.x_eval)
        windows = device_windows(world.onnx, x, start=start, seed=1000 * seed + i, **window_options)
        insert_windows(ws, k, windows, model="digits", version=1, tags=t)
    return keys
