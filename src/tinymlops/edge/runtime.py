"""The device runtime: open a signed, encrypted bundle in memory and run its pipeline.

``Runtime.open`` verifies the release signature, every member's hash and the manifest version,
unwraps the content key with the device's private key, decrypts the models **in memory** and
creates each backend session from bytes — plaintext never touches disk. ``predict`` sends the
input through the middleware chain the manifest enables, then the pipeline (pre-processing →
model → post-processing, a cascade may call a second model).

The chain's policies get the bundle's :class:`~tinymlops.edge.middleware.PolicyContext`: its id,
the model ref its manifest carries, and an energy meter. ``Runtime.open(meter=...)`` takes the
device's (the agent passes RAPL or its profile's power model, :func:`tinymlops.observe.energy.best_meter`);
without one (``meter="auto"``) the runtime uses :func:`default_meter`: RAPL where
``/sys/class/powercap`` is readable, else none — without a device profile there is no power to
multiply CPU time by, and a window then carries no energy rather than an invented number.
:attr:`Runtime.telemetry` is the bundle's :class:`~tinymlops.observe.recorder.TelemetryRecorder`
when its manifest enables the telemetry policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tinymlops.edge.backends import Backend, open_backend
from tinymlops.edge.middleware import (
    CallNext,
    Middleware,
    PolicyContext,
    Request,
    Response,
    build_chain,
    compose,
)
from tinymlops.errors import InputMismatchError, OperationError

if TYPE_CHECKING:
    from tinymlops.observe.energy import EnergyMeter
    from tinymlops.observe.recorder import TelemetryRecorder


def default_meter() -> EnergyMeter | None:
    """RAPL where it is readable here, else None (see the module doc)."""
    from tinymlops.observe.energy import RaplMeter

    try:
        return RaplMeter.open()
    except OperationError:
        return None


class Runtime:
    """A model release opened on this device, ready to predict."""

    def __init__(
        self,
        manifest: Any,
        backends: Mapping[str, Backend],
        pipeline: Any,
        chain: list[Middleware],
    ) -> None:
        self.manifest = manifest
        self.backends = dict(backends)
        self.pipeline = pipeline
        self.middleware = chain
        # the endpoint closes over the pipeline, not over self: no reference cycle, so a dropped
        # runtime frees its sessions and the plaintext models they hold at once, not at the next GC
        self._handler = compose(chain, _endpoint(pipeline))

    @classmethod
    def open(
        cls,
        bundle: bytes | str | Path,
        device_key: Any,
        trusted_release_keys: Iterable[Any],
        *,
        threads: int = 1,
        extra_middleware: list[Middleware] | None = None,
        meter: EnergyMeter | Literal["auto"] | None = "auto",
    ) -> Runtime:
        """Verify, decrypt in memory and load ``bundle`` with the device's key.

        ``device_key`` is the device's (or fleet's) X25519 private key or its key set;
        ``trusted_release_keys`` are the Ed25519 public keys whose signatures this device accepts.
        Each model's session is created once, from the decrypted bytes; no model runs here (the
        smoke test is the installer's: ``run_check(runtime.manifest, runtime.backends["main"])``,
        the manifest carrying the verified check vector). ``meter`` is the energy meter the
        telemetry policy uses (``"auto"``: :func:`default_meter`; None: no energy).
        """
        from tinymlops.bundle.reader import open_bundle
        from tinymlops.pipeline import build_pipeline
        from tinymlops.spec.pipeline import PipelineSpec

        opened = open_bundle(bundle, key=device_key, trusted_release_keys=trusted_release_keys)
        manifest = opened.manifest
        if meter == "auto":
            meter = default_meter() if _telemetry_enabled(manifest.policies) else None
        context = PolicyContext.from_manifest(manifest, meter=meter)
        chain = build_chain(manifest.policies or {}, extra_middleware, context=context)
        backends = {name: open_backend(data, threads=threads) for name, data in opened.models.items()}
        spec = manifest.pipeline if manifest.pipeline is not None else PipelineSpec()
        if isinstance(spec, Mapping):
            spec = PipelineSpec.from_dict(spec)
        pipeline = build_pipeline(spec, backends, opened.wasm_modules)
        del opened  # drop our reference to the plaintext bytes as early as we can
        return cls(manifest, backends, pipeline, chain)

    def predict(self, x: np.ndarray, **metadata: Any) -> Response:
        """Run one prediction through the middleware chain and the pipeline."""
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as exc:
                raise InputMismatchError(f"input must be an array, got {type(x).__name__}") from exc
        return self._handler(Request(x, metadata))

    @property
    def telemetry(self) -> TelemetryRecorder | None:
        """The bundle's telemetry recorder, when the manifest enables the telemetry policy."""
        from tinymlops.observe.recorder import TelemetryRecorder

        return next((m for m in self.middleware if isinstance(m, TelemetryRecorder)), None)

    @property
    def latency(self) -> LatencyView | None:
        """The latency of the calls in the telemetry recorder's open window (None without telemetry)."""
        recorder = self.telemetry
        return None if recorder is None else LatencyView(recorder)


class LatencyView:
    """Percentiles of the calls a :class:`~tinymlops.observe.recorder.TelemetryRecorder` has seen
    in its open window (read without closing it)."""

    def __init__(self, recorder: TelemetryRecorder) -> None:
        self.recorder = recorder

    def summary(self) -> dict[str, float | int]:
        """``count`` (successful calls), ``errors`` (calls that raised), and with a success ``p50_ms``,
        ``p95_ms``, ``p99_ms``, ``max_ms`` (within the histogram's 1% relative error)."""
        requests, errors, histogram = self.recorder.snapshot()
        out: dict[str, float | int] = {"count": requests - errors, "errors": errors}
        if histogram.count:
            p50, p95, p99 = histogram.quantiles([0.5, 0.95, 0.99])
            out.update(p50_ms=p50 * 1e3, p95_ms=p95 * 1e3, p99_ms=p99 * 1e3, max_ms=histogram.max * 1e3)
        return out


def _telemetry_enabled(policies: Mapping[str, Any] | None) -> bool:
    table = (policies or {}).get("telemetry")
    return isinstance(table, Mapping) and table.get("enabled") is True


def _endpoint(pipeline: Any) -> CallNext:
    run = pipeline.run

    def endpoint(request: Request) -> Response:
        result = run(request.inputs)
        return Response(outputs=result.outputs, models_called=tuple(result.models_called))

    return endpoint
