"""Drift between a reference profile and a live profile, computed from sketches and histograms only.

The server holds, per model version, a *reference* profile (from the eval/training data at
registration: :mod:`tinymlops.observe.reference`) and *live* profiles merged from what devices
upload: per input feature a KLL quantile sketch and its count, plus histograms of the predicted
classes and of the confidence. No raw input ever reaches the server, so every test here reads
only those (:mod:`tinymlops.observe.drift_tests` has the tests, one plug-in class each; how close
each comes to the same test on raw data is measured in ``tests/observe/test_drift.py`` and
``benchmarks/bench_drift.py``).

One call does the wiring::

    report = drift_report(
        reference={"f0": (sketch, count), ...},          # kll_floats_sketch objects or their bytes
        live={"f0": (merged_sketch, merged_count), ...},
        reference_classes=[...], live_classes=[...],     # predicted-class counts (optional)
        policy=DriftPolicy(),                            # thresholds, min samples, deciding tests
    )
    report.drifted_features  # ['f7']

Verdicts. Per feature every configured test gives ``drift`` / ``no_drift`` / ``not_enough_data``
against its threshold; the feature's own verdict comes from the *deciding* tests
(``DriftPolicy.deciding_feature_tests``): with ``require="all"`` (default) a feature drifts when
every deciding test that is defined for it says drift — by default KS (is the change real?) and
Wasserstein (is it at least 0.1 standard deviations, i.e. does it matter?); with ``require="any"``
when one does. Fewer than ``min_samples`` values on either side is ``not_enough_data``; so is a
feature whose deciding tests are all undefined for it. p-value thresholds are corrected for the
number of features compared (Bonferroni, unless ``correction="none"``), so the chance of one false
alarm anywhere in a report stays at the level set, however many features a model has.
Predictions (and confidence) are their own family: the class histogram by chi-square and
Jensen–Shannon (and PSI), same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from tinymlops.errors import InvalidInputError, UsageError
from tinymlops.observe.drift_inputs import FeatureDistribution, Histogram, QuantileSketch, load_kll_floats
from tinymlops.observe.drift_tests import DRIFT_TESTS, RANK_ERROR_MODES, DriftTest, Measurement, RankErrorMode


class Verdict(StrEnum):
    DRIFT = "drift"
    NO_DRIFT = "no_drift"
    NOT_ENOUGH_DATA = "not_enough_data"


@dataclass(frozen=True)
class DriftPolicy:
    """What runs, what decides, and where the lines are. ``thresholds`` overrides a test's default
    (``ks``/``chi_square``: the p-value level; ``psi``/``js``/``wasserstein``: the statistic)."""

    thresholds: Mapping[str, float] = field(default_factory=dict)
    feature_tests: tuple[str, ...] = ("ks", "psi", "js", "wasserstein")
    deciding_feature_tests: tuple[str, ...] = ("ks", "wasserstein")
    prediction_tests: tuple[str, ...] = ("chi_square", "js", "psi")
    deciding_prediction_tests: tuple[str, ...] = ("chi_square", "js")
    require: Literal["all", "any"] = "all"
    min_samples: int = 100
    correction: Literal["bonferroni", "none"] = "bonferroni"
    ks_rank_error: RankErrorMode = "conservative"
    bins: int = 10
    psi_epsilon: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", dict(self.thresholds))
        for key in ("feature_tests", "deciding_feature_tests", "prediction_tests", "deciding_prediction_tests"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        self._check()

    def _check(self) -> None:
        def fail(msg: str) -> None:
            raise UsageError(f"drift policy: {msg}")

        for name in self.thresholds:
            if name not in DRIFT_TESTS:
                fail(f"threshold for unknown test {name!r} (known: {', '.join(sorted(DRIFT_TESTS))})")
        for name, raw in self.thresholds.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                fail(f"{name} threshold must be a number, got {raw!r}")
            if DRIFT_TESTS[name].decides_on == "p_value" and not 0 < value < 1:
                fail(f"{name} threshold is a p-value level and must be in (0, 1), got {value}")
            if DRIFT_TESTS[name].decides_on == "statistic" and not (value >= 0 and np.isfinite(value)):
                fail(f"{name} threshold must be a finite number >= 0, got {value}")
        for run, deciding, kind, flag in (
            (self.feature_tests, self.deciding_feature_tests, "feature", "on_features"),
            (self.prediction_tests, self.deciding_prediction_tests, "prediction", "on_histograms"),
        ):
            for name in run:
                if name not in DRIFT_TESTS:
                    fail(f"unknown {kind} test {name!r} (known: {', '.join(sorted(DRIFT_TESTS))})")
                if not getattr(DRIFT_TESTS[name], flag):
                    fail(f"test {name!r} cannot be used on {kind}s")
            if not deciding:
                fail(f"at least one deciding {kind} test is needed")
            missing = [name for name in deciding if name not in run]
            if missing:
                fail(f"deciding {kind} test(s) {missing} are not among the {kind} tests that run {list(run)}")
        if self.require not in ("all", "any"):
            fail(f"require must be 'all' or 'any', got {self.require!r}")
        if self.correction not in ("bonferroni", "none"):
            fail(f"correction must be 'bonferroni' or 'none', got {self.correction!r}")
        if self.ks_rank_error not in RANK_ERROR_MODES:
            fail(f"ks_rank_error must be one of {', '.join(RANK_ERROR_MODES)}, got {self.ks_rank_error!r}")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            fail(f"min_samples must be an integer >= 1, got {self.min_samples!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or not 2 <= self.bins <= 1000:
            fail(f"bins must be an integer in [2, 1000], got {self.bins!r}")
        if not 0 < self.psi_epsilon < 1:
            fail(f"psi_epsilon must be in (0, 1), got {self.psi_epsilon}")

    def threshold(self, test: str) -> float:
        return float(self.thresholds.get(test, DRIFT_TESTS[test].default_threshold))

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {name: self.threshold(name) for name in sorted(DRIFT_TESTS)},
            "feature_tests": list(self.feature_tests),
            "deciding_feature_tests": list(self.deciding_feature_tests),
            "prediction_tests": list(self.prediction_tests),
            "deciding_prediction_tests": list(self.deciding_prediction_tests),
            "require": self.require,
            "min_samples": self.min_samples,
            "correction": self.correction,
            "ks_rank_error": self.ks_rank_error,
            "bins": self.bins,
            "psi_epsilon": self.psi_epsilon,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftPolicy:
        """A policy from user settings (JSON/TOML); unknown keys are refused (:class:`UsageError`)."""
        if not isinstance(data, Mapping):
            raise UsageError(f"drift policy: expected a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"drift policy: unknown setting(s) {unknown} (known: {sorted(known)})")
        kwargs: dict[str, Any] = dict(data)
        try:
            if "thresholds" in kwargs:
                kwargs["thresholds"] = {str(k): float(v) for k, v in dict(kwargs["thresholds"]).items()}
            for key in ("feature_tests", "deciding_feature_tests", "prediction_tests", "deciding_prediction_tests"):
                if key in kwargs:
                    if isinstance(kwargs[key], str):
                        raise TypeError(f"{key} must be a list of test names")
                    kwargs[key] = tuple(str(v) for v in kwargs[key])
            if "psi_epsilon" in kwargs:
                kwargs["psi_epsilon"] = float(kwargs["psi_epsilon"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"drift policy: {exc}") from exc
        return cls(**kwargs)


@dataclass(frozen=True)
class DriftTestResult:
    """One test's outcome on one feature (or histogram)."""

    test: str
    statistic: float | None
    p_value: float | None
    threshold: float
    threshold_on: str
    verdict: Verdict
    decides: bool
    details: Mapping[str, float | int | str] = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "threshold_on": self.threshold_on,
            "verdict": self.verdict.value,
            "decides": self.decides,
            "details": dict(self.details),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DriftFinding:
    """The verdict on one feature (or on the predictions / confidence) and each test's result."""

    name: str
    verdict: Verdict
    n_reference: float
    n_live: float
    results: tuple[DriftTestResult, ...]
    reason: str | None = None

    def result(self, test: str) -> DriftTestResult:
        for r in self.results:
            if r.test == test:
                return r
        raise UsageError(f"{self.name}: no result for test {test!r} (ran: {[r.test for r in self.results]})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "n_reference": self.n_reference,
            "n_live": self.n_live,
            "reason": self.reason,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class DriftReport:
    features: Mapping[str, DriftFinding]
    predictions: DriftFinding | None
    confidence: DriftFinding | None
    policy: DriftPolicy

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.verdict is Verdict.DRIFT]

    @property
    def drifted(self) -> bool:
        parts = [*self.features.values(), self.predictions, self.confidence]
        return any(p is not None and p.verdict is Verdict.DRIFT for p in parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "features": {name: f.to_dict() for name, f in self.features.items()},
            "predictions": None if self.predictions is None else self.predictions.to_dict(),
            "confidence": None if self.confidence is None else self.confidence.to_dict(),
            "policy": self.policy.to_dict(),
        }


# --- running the tests -----------------------------------------------------------------------
def _result(
    test: DriftTest, measurement: Measurement, threshold: float, enough: bool, decides: bool
) -> DriftTestResult:
    drifted = test.drifted(measurement, threshold) if enough else None
    if not enough:
        verdict, reason = Verdict.NOT_ENOUGH_DATA, "fewer values than min_samples on one side"
    elif drifted is None:
        verdict, reason = Verdict.NOT_ENOUGH_DATA, measurement.undefined or "undefined for these inputs"
    else:
        verdict, reason = (Verdict.DRIFT if drifted else Verdict.NO_DRIFT), None
    return DriftTestResult(
        test=test.name,
        statistic=measurement.statistic,
        p_value=measurement.p_value,
        threshold=threshold,
        threshold_on=test.decides_on,
        verdict=verdict,
        decides=decides,
        details=measurement.details,
        reason=reason,
    )


def _decide(
    name: str, n_ref: float, n_live: float, results: list[DriftTestResult], policy: DriftPolicy
) -> DriftFinding:
    if min(n_ref, n_live) < policy.min_samples:
        return DriftFinding(
            name,
            Verdict.NOT_ENOUGH_DATA,
            n_ref,
            n_live,
            tuple(results),
            reason=f"{min(n_ref, n_live):g} values on one side, fewer than min_samples = {policy.min_samples}",
        )
    votes = [r.verdict for r in results if r.decides and r.verdict is not Verdict.NOT_ENOUGH_DATA]
    if not votes:
        return DriftFinding(
            name, Verdict.NOT_ENOUGH_DATA, n_ref, n_live, tuple(results), "no deciding test is defined for it"
        )
    combine = all if policy.require == "all" else any
    verdict = Verdict.DRIFT if combine(v is Verdict.DRIFT for v in votes) else Verdict.NO_DRIFT
    return DriftFinding(name, verdict, n_ref, n_live, tuple(results))


def _empty_measurement() -> Measurement:
    return Measurement(None, undefined="no values on one side")


def compare_feature(
    name: str,
    reference: FeatureDistribution,
    live: FeatureDistribution,
    policy: DriftPolicy | None = None,
    *,
    family_size: int = 1,
) -> DriftFinding:
    """Every feature test of ``policy`` on one feature. p-value thresholds are divided by
    ``family_size`` under Bonferroni correction (the number of features in the report)."""
    policy = policy or DriftPolicy()
    divisor = max(1, family_size) if policy.correction == "bonferroni" else 1
    enough = min(reference.n, live.n) >= policy.min_samples
    results = []
    for test_name in policy.feature_tests:
        test = DRIFT_TESTS[test_name].from_policy(policy)
        threshold = policy.threshold(test_name) / (divisor if test.decides_on == "p_value" else 1)
        m = _empty_measurement() if reference.empty or live.empty else test.features(reference, live)
        results.append(_result(test, m, threshold, enough, test_name in policy.deciding_feature_tests))
    return _decide(name, reference.n, live.n, results, policy)


def compare_histogram(
    name: str, reference: Histogram, live: Histogram, policy: DriftPolicy | None = None
) -> DriftFinding:
    """Every prediction test of ``policy`` on one histogram (predicted classes, confidence bins)."""
    policy = policy or DriftPolicy()
    enough = min(reference.n, live.n) >= policy.min_samples
    results = []
    for test_name in policy.prediction_tests:
        test = DRIFT_TESTS[test_name].from_policy(policy)
        empty = reference.n <= 0 or live.n <= 0
        m = _empty_measurement() if empty else test.histograms(reference, live)
        results.append(
            _result(test, m, policy.threshold(test_name), enough, test_name in policy.deciding_prediction_tests)
        )
    return _decide(name, reference.n, live.n, results, policy)


def detect_drift(
    reference: Mapping[str, FeatureDistribution],
    live: Mapping[str, FeatureDistribution],
    *,
    reference_classes: Histogram | None = None,
    live_classes: Histogram | None = None,
    reference_confidence: Histogram | None = None,
    live_confidence: Histogram | None = None,
    policy: DriftPolicy | None = None,
) -> DriftReport:
    """Compare every reference feature with the live one of the same name (a feature the live
    profile lacks is ``not_enough_data``; one the reference lacks is refused: the two profiles do
    not describe the same model input)."""
    policy = policy or DriftPolicy()
    extra = sorted(set(live) - set(reference))
    if extra:
        raise InvalidInputError(
            f"live profile has feature(s) the reference does not: {_names(extra)} "
            f"(reference has {len(reference)} features)"
        )
    empty = FeatureDistribution.from_values(np.empty(0))
    family = sum(
        1 for name, ref in reference.items() if min(ref.n, live[name].n if name in live else 0) >= policy.min_samples
    )
    features = {
        name: compare_feature(name, ref, live.get(name, empty), policy, family_size=family)
        for name, ref in reference.items()
    }

    def pair(kind: str, ref: Histogram | None, cur: Histogram | None) -> DriftFinding | None:
        if ref is None and cur is None:
            return None
        return compare_histogram(kind, ref or Histogram.of([]), cur or Histogram.of([]), policy)

    return DriftReport(
        features=features,
        predictions=pair("predictions", reference_classes, live_classes),
        confidence=pair("confidence", reference_confidence, live_confidence),
        policy=policy,
    )


# --- the adapter: dict-like per-feature inputs -----------------------------------------------
SketchLike = QuantileSketch | bytes | bytearray | memoryview
FeatureInputs = Mapping[str, tuple[SketchLike, int | None]]


def distribution_of(
    sketch: SketchLike, count: int | None = None, *, std: float | None = None, what: str = "sketch"
) -> FeatureDistribution:
    """A :class:`FeatureDistribution` from a KLL sketch object or its serialized bytes (checked
    first); ``std`` is the exact standard deviation when the moments are known."""
    if isinstance(sketch, bytes | bytearray | memoryview):
        sketch = load_kll_floats(bytes(sketch), what=what)
    return FeatureDistribution.from_sketch(sketch, count=count, std=std, what=what)


def _distributions(inputs: FeatureInputs, side: str) -> dict[str, FeatureDistribution]:
    if not isinstance(inputs, Mapping):
        raise UsageError(f"{side}: expected a mapping of feature name -> (sketch, count)")
    out = {}
    for name, value in inputs.items():
        if not isinstance(value, tuple | list) or len(value) != 2:
            raise UsageError(f"{side} feature {name!r}: expected a (sketch, count) pair")
        sketch, count = value
        out[str(name)] = distribution_of(sketch, count, what=f"{side} feature {name!r}")
    return out


def _histogram(counts: Sequence[float] | np.ndarray | None, what: str) -> Histogram | None:
    return None if counts is None else Histogram.of(counts, what=what)


def drift_report(
    reference: FeatureInputs,
    live: FeatureInputs,
    *,
    reference_classes: Sequence[float] | np.ndarray | None = None,
    live_classes: Sequence[float] | np.ndarray | None = None,
    reference_confidence: Sequence[float] | np.ndarray | None = None,
    live_confidence: Sequence[float] | np.ndarray | None = None,
    policy: DriftPolicy | None = None,
) -> DriftReport:
    """:func:`detect_drift` on ``{name: (sketch or sketch bytes, count)}`` inputs and plain count
    arrays — the one call the server makes with a stored reference and a merged live profile."""
    return detect_drift(
        _distributions(reference, "reference"),
        _distributions(live, "live"),
        reference_classes=_histogram(reference_classes, "reference class histogram"),
        live_classes=_histogram(live_classes, "live class histogram"),
        reference_confidence=_histogram(reference_confidence, "reference confidence histogram"),
        live_confidence=_histogram(live_confidence, "live confidence histogram"),
        policy=policy,
    )


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def with_thresholds(policy: DriftPolicy, **thresholds: float) -> DriftPolicy:
    """A copy of ``policy`` with some thresholds changed (``with_thresholds(p, ks=0.001)``)."""
    return replace(policy, thresholds={**policy.thresholds, **thresholds})


__all__ = [
    "DRIFT_TESTS",
    "DriftFinding",
    "DriftPolicy",
    "DriftReport",
    "DriftTest",
    "DriftTestResult",
    "FeatureDistribution",
    "Histogram",
    "Measurement",
    "Verdict",
    "compare_feature",
    "compare_histogram",
    "detect_drift",
    "distribution_of",
    "drift_report",
    "with_thresholds",
]
