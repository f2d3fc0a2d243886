"""The device runtime: open a signed, encrypted bundle in memory and run its pipeline.

``Runtime.open`` verifies the release signature, every member's hash and the manifest version,
unwraps the content key with the device's private key, decrypts the models **in memory** and
creates each backend session from bytes — plaintext never touches disk. ``predict`` sends the
input through the middleware chain the manifest enables, then the pipeline (pre-processing →
model → post-processing, a cascade may call a second model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.edge.backends import Backend, open_backend
from tinymlops.edge.middleware import (
    CallNext,
    LatencyRecorder,
    Middleware,
    Request,
    Response,
    build_chain,
    compose,
)
from tinymlops.errors import InputMismatchError


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
    ) -> Runtime:
        """Verify, decrypt in memory and load ``bundle`` with the device's key.

        ``device_key`` is the device's (or fleet's) X25519 private key or its key set;
        ``trusted_release_keys`` are the Ed25519 public keys whose signatures this device accepts.
        Each model's session is created once, from the decrypted bytes; no model runs here (the
        smoke test is the installer's: ``run_check(runtime.manifest, runtime.backends["main"])``,
        the manifest carrying the verified check vector).
        """
        from tinymlops.bundle.reader import open_bundle
        from tinymlops.pipeline import build_pipeline
        from tinymlops.spec.pipeline import PipelineSpec

        opened = open_bundle(bundle, key=device_key, trusted_release_keys=trusted_release_keys)
        manifest = opened.manifest
        chain = build_chain(manifest.policies or {}, extra_middleware)
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
    def latency(self) -> LatencyRecorder | None:
        """The latency recorder, when the manifest enables it."""
        return next((m for m in self.middleware if isinstance(m, LatencyRecorder)), None)


def _endpoint(pipeline: Any) -> CallNext:
    run = pipeline.run

    def endpoint(request: Request) -> Response:
        result = run(request.inputs)
        return Response(outputs=result.outputs, models_called=tuple(result.models_called))

    return endpoint
