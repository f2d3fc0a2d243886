"""Reference profiles: what a model's inputs and outputs looked like on its own eval/training data.

At registration the server profiles the model's dataset (an ``.npz`` with ``x`` and optionally
``y``, :mod:`tinymlops.registry.datasets`) exactly the way devices profile live traffic — the same
:class:`~tinymlops.observe.sketches.InputProfile` with the same settings (KLL ``k``, feature cap,
projection seed and dimensions), so reference and live features are the same features: per
element (or per channel), plus the fixed random projection. Predicted-class and confidence
histograms come from the model's outputs on that data, when given (the dataset's ``y`` are true
labels, not predictions, and are not used for them).

The profile is an :class:`~tinymlops.spec.telemetry.InputsSummary` (sketch bytes, counts, exact
moments, histograms) — the same contract type a device's window carries — so it is stored as JSON
and read back with the same strict parser. :func:`compare_profiles` runs the drift tests
(:mod:`tinymlops.observe.drift`) between a reference and a live summary (one merged from many
devices' windows); feature names are ``"<kind>:<index>"`` (``element:3``, ``channel:0``,
``projection:5``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinymlops.errors import InvalidInputError, SpecError, UsageError
from tinymlops.observe.drift import DriftPolicy, DriftReport, detect_drift, distribution_of
from tinymlops.observe.drift_inputs import FeatureDistribution, Histogram
from tinymlops.observe.sketches import DEFAULT_K, DEFAULT_MAX_FEATURES, DEFAULT_PROJECTION_DIMS, InputProfile
from tinymlops.spec._parse import check_version, get_int, get_str, reject_unknown
from tinymlops.spec.telemetry import InputsSummary

REFERENCE_MAJOR = 1
REFERENCE_VERSION = "1.0"
DOC = "reference profile"
_FIELDS = {"spec_version", "source", "k", "inputs"}


def feature_name(kind: str, index: int) -> str:
    return f"{kind}:{index}"


@dataclass(frozen=True)
class ReferenceProfile:
    """A reference profile: the summary of the reference data, where it came from, and its ``k``."""

    inputs: InputsSummary
    k: int = DEFAULT_K
    source: str = "dataset"

    @property
    def feature_names(self) -> list[str]:
        return [feature_name(f.kind, f.index) for f in self.inputs.features]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": REFERENCE_VERSION,
            "source": self.source,
            "k": self.k,
            "inputs": self.inputs.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ReferenceProfile:
        """Strict: unknown fields, another major version or a malformed summary are refused
        (:class:`~tinymlops.errors.SpecError`)."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{DOC}: expected an object, got {type(data).__name__}")
        reject_unknown(DOC, data, _FIELDS)
        check_version(DOC, data, REFERENCE_MAJOR)
        k = get_int(DOC, data, "k", minimum=8)
        if k > 65535:
            raise SpecError(f"{DOC}: field 'k' must be at most 65535, got {k}")
        source = get_str(DOC, data, "source")
        if len(source) > 256:
            raise SpecError(f"{DOC}: field 'source' must be at most 256 characters")
        return cls(inputs=InputsSummary.from_dict(data.get("inputs"), f"{DOC}.inputs"), k=k, source=source)


def build_reference(
    x: np.ndarray,
    *,
    outputs: np.ndarray | None = None,
    k: int = DEFAULT_K,
    max_features: int = DEFAULT_MAX_FEATURES,
    projection_dims: int = DEFAULT_PROJECTION_DIMS,
    seed: int = 0,
    source: str = "dataset",
) -> ReferenceProfile:
    """Profile ``x`` (samples first) and, when given, the model's ``outputs`` on it (class scores
    ``[n, classes]`` or predicted labels ``[n]``). The settings must be the ones the devices use."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise UsageError(f"reference profile: x must hold at least one sample (shape {x.shape})")
    if x.dtype.kind not in "biuf":
        raise UsageError(f"reference profile: x must be numeric, got dtype {x.dtype}")
    if outputs is not None and np.asarray(outputs).shape[0] != x.shape[0]:
        raise UsageError(
            f"reference profile: {np.asarray(outputs).shape[0]} outputs for {x.shape[0]} samples (one per sample)"
        )
    profile = InputProfile(max_features=max_features, projection_dims=projection_dims, seed=seed, k=k)
    profile.add(x)
    if outputs is not None:
        profile.observe(np.asarray(outputs))
    return ReferenceProfile(inputs=profile.summary(), k=k, source=source)


def reference_from_npz(data: bytes, *, source: str = "dataset", **settings: Any) -> ReferenceProfile:
    """:func:`build_reference` on a registered dataset's ``.npz`` bytes (``x``; ``y`` is ignored)."""
    from tinymlops.registry.datasets import parse_npz

    dataset = parse_npz(data, source)
    return build_reference(dataset.x, source=source, **settings)


# --- comparing -------------------------------------------------------------------------------
def summary_features(summary: InputsSummary, *, what: str = "profile") -> dict[str, FeatureDistribution]:
    """Each feature of a summary as a :class:`FeatureDistribution` (sketch checked before use; the
    exact standard deviation from the moments)."""
    out = {}
    for f in summary.features:
        name = feature_name(f.kind, f.index)
        std = None if f.variance is None else float(np.sqrt(max(f.variance, 0.0)))
        out[name] = distribution_of(f.sketch, f.count, std=std, what=f"{what} feature {name!r}")
    return out


def _counts(values: tuple[int, ...] | None, what: str) -> Histogram | None:
    # discrete-Laplace counts may be negative: a bin cannot hold fewer than none
    return None if values is None else Histogram.of(np.maximum(np.asarray(values, np.float64), 0.0), what=what)


def compare_profiles(
    reference: ReferenceProfile | InputsSummary, live: InputsSummary, policy: DriftPolicy | None = None
) -> DriftReport:
    """The drift report between a reference and a live profile. Both must describe the same input
    (the same projection); histograms are compared as given — de-bias privatized live counts first
    (:mod:`tinymlops.observe.privacy`), and note that chi-square assumes counts without noise."""
    ref = reference.inputs if isinstance(reference, ReferenceProfile) else reference
    if ref.projection != live.projection:
        raise InvalidInputError(
            f"live profile's projection {live.projection} is not the reference's {ref.projection}: "
            "they do not describe the same model input"
        )
    return detect_drift(
        summary_features(ref, what="reference"),
        summary_features(live, what="live"),
        reference_classes=_counts(ref.classes, "reference class histogram"),
        live_classes=_counts(live.classes, "live class histogram"),
        reference_confidence=_counts(ref.confidence, "reference confidence histogram"),
        live_confidence=_counts(live.confidence, "live confidence histogram"),
        policy=policy,
    )


__all__ = [
    "ReferenceProfile",
    "build_reference",
    "compare_profiles",
    "feature_name",
    "reference_from_npz",
    "summary_features",
]
