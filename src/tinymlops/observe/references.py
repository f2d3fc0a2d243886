"""Reference profiles on the server: computed from a model's registered dataset, stored per base version.

A drift report compares what devices saw with what the model was evaluated on. This module makes
that reference and keeps it in ``reference_profiles`` (:mod:`tinymlops.observe.schema`):

1. **Which data.** The dataset named by the caller, else the model's newest ``eval`` dataset, else
   its newest ``calibration`` dataset (:mod:`tinymlops.registry.datasets`: ``x`` samples first).
   A model without any (e.g. a TFLite model registered bare) has no reference;
   :meth:`ReferenceService.require` says so and how to add one.
2. **How many rows.** At most :data:`MAX_REFERENCE_ROWS` (10,000): the reference is a sketch
   anyway (KLL rank error ~1.65% at k = 200 whatever the rows), and running the model on a large
   dataset row group by row group is what costs. Larger datasets are subsampled — a fixed-seed
   random subset kept in dataset order, so a dataset sorted by class still gives every class.
3. **Outputs.** The base version is run with its runtime backend (ONNX Runtime for ONNX;
   :func:`tinymlops.edge.backends.open_backend`) on those rows, in batches when the model's batch
   dimension is free, else row by row. The output read is the one evaluation reads
   (:func:`~tinymlops.optimize.evaluation.score_output_index`: the first float ``[batch, classes>1]``
   output): class scores go to the profile as they are — :class:`~tinymlops.observe.sketches.InputProfile`
   with ``outputs="auto"`` decides probabilities vs logits exactly as devices do — integer labels
   ``[batch]`` as labels; any other output (a regression) gives a reference without class and
   confidence histograms. A model that cannot run here keeps an inputs-only reference and the
   record says why (``outputs_error``).
4. **Settings.** The devices' defaults (:class:`~tinymlops.observe.policy.TelemetryPolicy`): KLL
   ``k``, ``max_features``, projection seed and dimensions — the same settings give the same
   features on both sides. A bundle whose telemetry policy changes them produces windows the
   drift report sets aside as a projection mismatch, rather than comparing different things.

Idempotent: building again from the same dataset bytes and settings returns the stored record
untouched; another dataset (or other settings) replaces it (one reference per base version).

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DatabaseIntegrityError

from tinymlops.errors import NotFoundError, TinyMLOpsError
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.reference import ReferenceProfile, build_reference
from tinymlops.observe.schema import ReferenceProfileRow
from tinymlops.registry.datasets import Dataset
from tinymlops.registry.db import session_factory
from tinymlops.registry.records import ArtifactRecord, DatasetRecord
from tinymlops.registry.store import Registry

#: rows of a dataset profiled at most (a fixed-seed random subset beyond; see the module doc)
MAX_REFERENCE_ROWS = 10_000
#: rows per model call when the batch dimension is free
OUTPUT_BATCH_ROWS = 256
SUBSAMPLE_SEED = 0


@dataclass(frozen=True)
class ReferenceSettings:
    """What the devices profile with; a reference is only comparable under the same settings."""

    k: int
    max_features: int
    projection_dims: int
    projection_seed: int

    @classmethod
    def from_policy(cls, policy: TelemetryPolicy | None = None) -> ReferenceSettings:
        p = policy or TelemetryPolicy()
        return cls(p.sketch_k, p.max_features, p.projection_dims, p.projection_seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "max_features": self.max_features,
            "projection_dims": self.projection_dims,
            "projection_seed": self.projection_seed,
        }


@dataclass(frozen=True)
class ReferenceRecord:
    """One stored reference: for which base version, from which dataset, with which settings."""

    model: str
    version: int
    dataset: str
    dataset_sha256: str
    settings: dict[str, Any]
    profile: ReferenceProfile
    created_at: datetime

    @property
    def rows(self) -> int:
        return self.profile.inputs.rows

    def to_dict(self, *, profile: bool = False) -> dict[str, Any]:
        """A summary (features with their moments, histograms); ``profile=True`` adds the whole
        stored profile, sketches included."""
        inputs = self.profile.inputs
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "settings": dict(self.settings),
            "created_at": self.created_at.isoformat(),
            "rows": inputs.rows,
            "predictions": inputs.predictions,
            "projection": None if inputs.projection is None else inputs.projection.to_dict(),
            "features": [
                {
                    "name": f"{f.kind}:{f.index}",
                    "kind": f.kind,
                    "derived": f.kind == "projection",
                    "count": f.count,
                    "mean": f.mean,
                    "variance": f.variance,
                    "min": f.min,
                    "max": f.max,
                }
                for f in inputs.features
            ],
            "classes": None if inputs.classes is None else list(inputs.classes),
            "confidence": None if inputs.confidence is None else list(inputs.confidence),
        }
        if profile:
            out["profile"] = self.profile.to_dict()
        return out


@dataclass(frozen=True)
class ReferenceAttempt:
    """What :meth:`ReferenceService.try_build` did for ``model``'s base ``version``: the reference
    built (or kept), or why it failed."""

    model: str
    version: int
    record: ReferenceRecord | None = None
    error: str | None = None  # the failure's message (record is None)


def subsample(x: np.ndarray, limit: int = MAX_REFERENCE_ROWS, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """At most ``limit`` rows of ``x``: all of them, or a fixed-seed random subset in dataset order."""
    if x.shape[0] <= limit:
        return x
    keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=limit, replace=False))
    return x[keep]


def model_outputs(model: bytes, fmt: str, x: np.ndarray) -> np.ndarray | None:
    """The model's class scores ``[n, classes]`` or labels ``[n]`` on ``x`` — None when its output is
    neither (see the module doc). Backend errors propagate (:class:`~tinymlops.errors.BackendError`)."""
    from tinymlops.edge.backends import open_backend
    from tinymlops.optimize.evaluation import score_output_index

    backend = open_backend(model, fmt)
    index = score_output_index(backend.outputs)
    batch_dim = backend.inputs[0].shape[0] if backend.inputs and backend.inputs[0].shape else 1
    step = OUTPUT_BATCH_ROWS if not isinstance(batch_dim, int) or batch_dim <= 0 else 1
    x = x.astype(np.float32, copy=False)
    parts = [backend.run(x[i : i + step])[index] for i in range(0, x.shape[0], step)]
    out = np.concatenate(parts, axis=0)
    spec = backend.outputs[index]
    if out.ndim == 2 and out.shape[1] > 1 and out.dtype.kind == "f":
        return out
    if spec.dtype.startswith("int") and out.ndim == 1:
        return out.astype(np.int64)
    if out.ndim == 2 and out.shape[1] == 1 and spec.dtype.startswith("int"):
        return out[:, 0].astype(np.int64)
    return None


def _record(row: ReferenceProfileRow) -> ReferenceRecord:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return ReferenceRecord(
        model=row.model,
        version=row.version,
        dataset=row.dataset,
        dataset_sha256=row.dataset_sha256,
        settings=dict(row.settings),
        profile=ReferenceProfile.from_dict(row.profile),
        created_at=created,
    )


def how_to_build(model: str, datasets: list[DatasetRecord]) -> str:
    """What to run to give ``model`` a reference profile."""
    if datasets:
        names = ", ".join(d.name for d in datasets)
        return (
            f"build one from a registered dataset ({names}): "
            f"`tinymlops drift reference build {model} --dataset {datasets[-1].name}` "
            f"or POST /v1/models/{model}/reference"
        )
    return (
        f"the model has no dataset: add its eval data with `tinymlops dataset add {model} EVAL.npz` "
        f"(x samples first), then `tinymlops drift reference build {model}`"
    )


class ReferenceService:
    """Build, store and read reference profiles (one per model base version)."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        settings: ReferenceSettings | None = None,
        max_rows: int = MAX_REFERENCE_ROWS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings or ReferenceSettings.from_policy()
        self.max_rows = max_rows
        self._sessions = session_factory(engine)
        self._clock = clock

    # --- reading -------------------------------------------------------------------------------
    def _base(self, model: str, version: int | None) -> ArtifactRecord:
        return self.registry.resolve(model if version is None else f"{model}:{version}")

    def get(self, model: str, version: int | None = None) -> ReferenceRecord | None:
        """The reference of ``model``'s base ``version`` (default: the latest version); None when it has none."""
        base = self._base(model, version)
        with self._sessions() as session:
            row = session.scalar(
                select(ReferenceProfileRow).where(
                    ReferenceProfileRow.model == base.model, ReferenceProfileRow.version == base.version
                )
            )
            return None if row is None else _record(row)

    def require(self, model: str, version: int | None = None) -> ReferenceRecord:
        """:meth:`get`, or a :class:`NotFoundError` saying that there is none and how to make one."""
        record = self.get(model, version)
        if record is None:
            base = self._base(model, version)
            raise NotFoundError(
                f"model '{base.model}' version {base.version} has no reference profile; "
                + how_to_build(base.model, self.registry.datasets(base.model)),
                model=base.model,
                version=base.version,
            )
        return record

    # --- building ------------------------------------------------------------------------------
    def pick_dataset(self, model: str, name: str | None = None) -> DatasetRecord:
        """The named dataset, else the newest eval set, else the newest calibration set."""
        datasets = self.registry.datasets(model)
        if name is not None:
            for d in datasets:
                if d.name == name:
                    return d
            known = ", ".join(d.name for d in datasets) or "none"
            raise NotFoundError(
                f"model '{model}' has no dataset named '{name}' (datasets: {known})", model=model, dataset=name
            )
        for role in ("eval", "calibration"):
            matching = [d for d in datasets if d.role == role]
            if matching:
                return matching[-1]
        raise NotFoundError(
            f"model '{model}' has no dataset to compute a reference profile from; " + how_to_build(model, []),
            model=model,
        )

    def build(
        self, model: str, version: int | None = None, *, dataset: str | None = None, force: bool = False
    ) -> ReferenceRecord:
        """Compute (or keep) the reference of ``model``'s base ``version`` from ``dataset`` (see the
        module doc for the choice of dataset). Unknown model/version/dataset: NotFoundError."""
        base = self._base(model, version)
        record = self.pick_dataset(base.model, dataset)
        settings = {**self.settings.to_dict(), "max_rows": self.max_rows}
        existing = self.get(base.model, base.version)
        if (
            not force
            and existing is not None
            and existing.dataset_sha256 == record.sha256
            and {k: existing.settings.get(k) for k in settings} == settings
        ):
            return existing
        data = self.registry.load_dataset(record)
        profile, extra = self.compute(base, data, source=f"{base.ref} {record.label}")
        return self._store(base, record, {**settings, **extra}, profile)

    def try_build(
        self, model: str, version: int | None = None, *, dataset: str | None = None, given: Iterable[str] = ()
    ) -> ReferenceAttempt | None:
        """:meth:`build` for a flow that must never fail on it (registering a version, adding a
        dataset): None when the model has no dataset at all (nothing to build from), else a
        :class:`ReferenceAttempt` — built, or the :class:`~tinymlops.errors.TinyMLOpsError`'s message.
        The dataset: ``dataset`` by name, else the first registered one whose SHA-256 is in ``given``
        (the data that came with a registration), else :meth:`pick_dataset`'s choice. An unknown
        model or version is still raised (the caller's mistake, not the reference's)."""
        base = self._base(model, version)
        datasets = self.registry.datasets(base.model)
        if not datasets:
            return None
        if dataset is None:
            by_digest = {d.sha256: d.name for d in datasets}
            dataset = next((by_digest[h] for h in given if h in by_digest), None)
        try:
            record = self.build(base.model, base.version, dataset=dataset)
        except TinyMLOpsError as exc:
            return ReferenceAttempt(base.model, base.version, error=exc.message)
        return ReferenceAttempt(base.model, base.version, record=record)

    def compute(self, base: ArtifactRecord, data: Dataset, *, source: str) -> tuple[ReferenceProfile, dict[str, Any]]:
        """The profile of ``data`` under ``base`` (no storage); the second item says how it was made."""
        x = subsample(data.x, self.max_rows)
        extra: dict[str, Any] = {"rows_profiled": int(x.shape[0]), "dataset_rows": int(data.n)}
        outputs = None
        try:
            outputs = model_outputs(self.registry.read_bytes(base), base.format, x)
            extra["outputs"] = "none" if outputs is None else ("labels" if outputs.ndim == 1 else "scores")
        except TinyMLOpsError as exc:
            extra["outputs"] = "none"
            extra["outputs_error"] = exc.message[:300]
        s = self.settings
        profile = build_reference(
            x,
            outputs=outputs,
            k=s.k,
            max_features=s.max_features,
            projection_dims=s.projection_dims,
            seed=s.projection_seed,
            source=source[:256],
        )
        if profile.inputs.classes is not None:
            extra["classes"] = len(profile.inputs.classes)
        return profile, extra

    def _store(
        self, base: ArtifactRecord, dataset: DatasetRecord, settings: dict[str, Any], profile: ReferenceProfile
    ) -> ReferenceRecord:
        """Insert or replace the version's one row (a concurrent first insert loses the unique
        constraint race and retries as an update)."""
        now = self._clock()
        for attempt in (1, 2):
            try:
                with self._sessions() as session:
                    row = session.scalar(
                        select(ReferenceProfileRow)
                        .where(ReferenceProfileRow.model == base.model, ReferenceProfileRow.version == base.version)
                        .with_for_update()
                    )
                    if row is None:
                        row = ReferenceProfileRow(model=base.model, version=base.version)
                        session.add(row)
                    row.dataset = dataset.name
                    row.dataset_sha256 = dataset.sha256
                    row.settings = settings
                    row.profile = profile.to_dict()
                    row.created_at = now
                    session.commit()
                    return _record(row)
            except DatabaseIntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


__all__ = [
    "MAX_REFERENCE_ROWS",
    "ReferenceAttempt",
    "ReferenceRecord",
    "ReferenceService",
    "ReferenceSettings",
    "how_to_build",
    "model_outputs",
    "subsample",
]
