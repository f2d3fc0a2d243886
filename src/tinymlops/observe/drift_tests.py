"""Drift tests as plug-ins: one class per test behind :class:`DriftTest` (as Flower's strategies).

Each test compares a *reference* with a *live* distribution and returns a :class:`Measurement`:
a statistic, a p-value where the test defines one, and the details that explain it. Whether that
is drift is decided by :meth:`DriftTest.drifted` against a threshold the user sets
(:class:`tinymlops.observe.drift.DriftPolicy`); ``decides_on`` says what the threshold is on —
``"p_value"`` (drift when ``p < threshold``) or ``"statistic"`` (drift when ``statistic > threshold``).

Features are :class:`FeatureDistribution` objects (from KLL sketches, or raw values); histograms are
:class:`Histogram` counts (predicted classes, confidence bins). Every test here works only from
those: no raw inputs are needed. The tests:

* ``psi`` — Population Stability Index ``Σ (q_i - p_i) ln(q_i / p_i)`` over bins. For features the
  bins are the reference's deciles (``bins`` = 10 equal-mass bins by default): edges at the
  reference quantiles of ranks ``1/B … (B-1)/B`` (inverted CDF; repeated edges of a tied or constant
  feature collapse, leaving fewer bins), intervals ``(-inf, e1], (e1, e2], …, (e_{B-1}, inf)``; bin
  proportions come from each side's CDF at the edges. Proportions are floored at ``epsilon``
  (1e-4) so an empty bin costs a finite amount. Each term is ≥ 0, so PSI ≥ 0 with or without the
  floor. For histograms the bins are the histogram's own. Threshold on the statistic (0.2: the
  usual "significant shift" line; 0.1–0.2 is "moderate").
* ``ks`` — two-sample Kolmogorov–Smirnov from two quantile sketches: ``D`` = the largest distance
  between the two CDFs, evaluated at every retained item of both sketches (where the step functions
  jump, so the supremum is exact for what the sketches hold). p-value from the Kolmogorov
  distribution of ``D`` at the effective sample size ``n·m/(n+m)`` (rounded, as ``scipy.stats.ks_2samp``
  does with ``method="asymp"``: ``scipy.stats.kstwo``). The sketches' rank errors ``ε = ε_ref + ε_live``
  bound how far ``D`` may be from the raw data's ``D`` (each CDF is off by at most its ``ε`` with
  99% confidence), so the details carry the interval ``[D - ε, D + ε]`` and the p-values of both
  ends. ``rank_error`` chooses what decides: ``"conservative"`` (default: drift only if even
  ``D - ε`` is significant — the way DataSketches' own ``ks_test`` adds ``ε`` to its threshold),
  ``"point"`` (``D`` itself) or ``"worst_case"`` (``D + ε``: no drift is missed that the raw data
  would show, at the price of false alarms). Threshold on the p-value (0.01).
* ``js`` — Jensen–Shannon distance ``sqrt(JSD)`` with base-2 logarithms (in [0, 1]), as
  ``scipy.spatial.distance.jensenshannon(p, q, base=2)``; on features over the same reference bins
  as PSI, on histograms over their bins. Threshold on the statistic (0.1).
* ``wasserstein`` — Wasserstein-1 distance ``∫|F⁻¹(u) - G⁻¹(u)| du`` between the two quantile
  functions, computed exactly for the sketches' weighted items (through the equal ``∫|F(x) - G(x)| dx``
  over the union of their items, which is exact where a u-grid would only approximate), divided by
  the reference's standard deviation so the threshold is in units of the feature's spread (0.1 SD).
  Undefined when the reference is constant and the live data is not.
* ``chi_square`` — Pearson's chi-square test of homogeneity on the 2×K table of counts (bins empty
  on both sides dropped; no Yates correction), as ``scipy.stats.chi2_contingency(..., correction=False)``.
  Histograms only; the p-value assumes raw counts (not counts with privacy noise added).
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from tinymlops.errors import UsageError
from tinymlops.observe.drift_inputs import FeatureDistribution, Histogram

if TYPE_CHECKING:
    from tinymlops.observe.drift import DriftPolicy

DecidesOn = Literal["p_value", "statistic"]
RankErrorMode = Literal["conservative", "point", "worst_case"]
RANK_ERROR_MODES: tuple[str, ...] = ("conservative", "point", "worst_case")


@dataclass(frozen=True)
class Measurement:
    """What a test computed. ``statistic`` is None only when it is undefined (``undefined`` says why)."""

    statistic: float | None
    p_value: float | None = None
    details: Mapping[str, float | int | str] = field(default_factory=dict)
    undefined: str | None = None


class DriftTest(ABC):
    """One drift test. Subclasses set the class attributes and implement ``features`` and/or
    ``histograms``; :meth:`from_policy` builds one with the policy's options."""

    name: ClassVar[str]
    decides_on: ClassVar[DecidesOn]
    default_threshold: ClassVar[float]
    on_features: ClassVar[bool] = False
    on_histograms: ClassVar[bool] = False

    @classmethod
    def from_policy(cls, policy: DriftPolicy) -> DriftTest:
        return cls()

    def features(self, reference: FeatureDistribution, live: FeatureDistribution) -> Measurement:
        raise UsageError(f"drift test {self.name!r} does not compare feature distributions")

    def histograms(self, reference: Histogram, live: Histogram) -> Measurement:
        raise UsageError(f"drift test {self.name!r} does not compare histograms")

    def drifted(self, measurement: Measurement, threshold: float) -> bool | None:
        """True/False, or None when the measurement is undefined."""
        if self.decides_on == "p_value":
            return None if measurement.p_value is None else measurement.p_value < threshold
        return None if measurement.statistic is None else measurement.statistic > threshold


#: name -> test class; :func:`register_drift_test` adds one
DRIFT_TESTS: dict[str, type[DriftTest]] = {}


def register_drift_test(cls: type[DriftTest]) -> type[DriftTest]:
    """Class decorator: make a test available to :class:`DriftPolicy` by its ``name``."""
    if not getattr(cls, "name", None) or cls.decides_on not in ("p_value", "statistic"):
        raise UsageError(f"{cls.__name__}: a drift test needs a name and decides_on 'p_value' or 'statistic'")
    if not (cls.on_features or cls.on_histograms):
        raise UsageError(f"{cls.__name__}: a drift test must compare features, histograms or both")
    if DRIFT_TESTS.get(cls.name, cls) is not cls:
        raise UsageError(f"{cls.__name__}: a drift test named {cls.name!r} is already registered")
    DRIFT_TESTS[cls.name] = cls
    return cls


# --- shared binning ------------------------------------------------------------------------
def reference_edges(reference: FeatureDistribution, bins: int) -> np.ndarray:
    """Equal-mass bin edges from the reference's quantiles at ranks ``1/bins … (bins-1)/bins``
    (distinct values only: ties and constant features give fewer bins)."""
    ranks = np.arange(1, bins) / bins
    return np.unique(reference.quantiles(ranks))


def bin_proportions(dist: FeatureDistribution, edges: np.ndarray) -> np.ndarray:
    """Mass of ``(-inf, e1], (e1, e2], …, (e_last, inf)`` under ``dist``."""
    cdf = dist.cdf(edges) if edges.size else np.empty(0)
    return np.diff(np.concatenate(([0.0], cdf, [1.0])))


def _psi(p: np.ndarray, q: np.ndarray, epsilon: float) -> float:
    p = np.maximum(p, epsilon)
    q = np.maximum(q, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    jsd = (kl(p) + kl(q)) / 2
    return math.sqrt(min(max(jsd, 0.0), 1.0))


def _aligned(reference: Histogram, live: Histogram) -> tuple[np.ndarray, np.ndarray]:
    bins = max(reference.counts.size, live.counts.size)
    return reference.proportions(bins), live.proportions(bins)


# --- the tests -------------------------------------------------------------------------------
@register_drift_test
class PopulationStabilityIndex(DriftTest):
    name = "psi"
    decides_on = "statistic"
    default_threshold = 0.2
    on_features = True
    on_histograms = True

    def __init__(self, bins: int = 10, epsilon: float = 1e-4) -> None:
        if bins < 2 or not 0 < epsilon < 1:
            raise UsageError(f"psi: bins must be >= 2 and 0 < epsilon < 1 (got bins={bins}, epsilon={epsilon})")
        self.bins = bins
        self.epsilon = epsilon

    @classmethod
    def from_policy(cls, policy: DriftPolicy) -> DriftTest:
        return cls(bins=policy.bins, epsilon=policy.psi_epsilon)

    def features(self, reference: FeatureDistribution, live: FeatureDistribution) -> Measurement:
        edges = reference_edges(reference, self.bins)
        p, q = bin_proportions(reference, edges), bin_proportions(live, edges)
        return Measurement(_psi(p, q, self.epsilon), details={"bins": int(p.size), "epsilon": self.epsilon})

    def histograms(self, reference: Histogram, live: Histogram) -> Measurement:
        p, q = _aligned(reference, live)
        return Measurement(_psi(p, q, self.epsilon), details={"bins": int(p.size), "epsilon": self.epsilon})


@register_drift_test
class KolmogorovSmirnov(DriftTest):
    name = "ks"
    decides_on = "p_value"
    default_threshold = 0.01
    on_features = True

    def __init__(self, rank_error: RankErrorMode = "conservative") -> None:
        if rank_error not in RANK_ERROR_MODES:
            raise UsageError(f"ks: rank_error must be one of {', '.join(RANK_ERROR_MODES)}, got {rank_error!r}")
        self.rank_error = rank_error

    @classmethod
    def from_policy(cls, policy: DriftPolicy) -> DriftTest:
        return cls(rank_error=policy.ks_rank_error)

    @staticmethod
    def p_values(statistics: list[float], n_effective: int) -> list[float]:
        """``P(D >= d)`` under the null for each ``d`` (one vectorized ``scipy.stats.kstwo`` call)."""
        from scipy.stats import kstwo

        p = np.clip(kstwo.sf(np.asarray(statistics, dtype=np.float64), max(1, n_effective)), 0.0, 1.0)
        return [float(v) for v in p]

    def features(self, reference: FeatureDistribution, live: FeatureDistribution) -> Measurement:
        points = np.union1d(reference.items, live.items)
        d = float(np.max(np.abs(reference.cdf(points) - live.cdf(points)))) if points.size else 0.0
        n, m = reference.n, live.n
        n_eff = round(n * m / (n + m)) if n + m else 0
        eps = reference.rank_error + live.rank_error
        low, high = max(0.0, d - eps), min(1.0, d + eps)
        p, p_high, p_low = self.p_values([d, low, high], n_eff)
        return Measurement(
            d,
            p,
            details={
                "n_effective": n_eff,
                "rank_error": eps,
                "statistic_low": low,
                "statistic_high": high,
                # the p-values of the two ends of the interval the raw data's D lies in
                "p_value_high": p_high,
                "p_value_low": p_low,
                "rank_error_mode": self.rank_error,
            },
        )

    def drifted(self, measurement: Measurement, threshold: float) -> bool | None:
        if measurement.p_value is None:
            return None
        key = {"conservative": "p_value_high", "worst_case": "p_value_low"}.get(self.rank_error)
        p = measurement.p_value if key is None else float(measurement.details[key])
        return p < threshold


@register_drift_test
class JensenShannon(DriftTest):
    name = "js"
    decides_on = "statistic"
    default_threshold = 0.1
    on_features = True
    on_histograms = True

    def __init__(self, bins: int = 10) -> None:
        if bins < 2:
            raise UsageError(f"js: bins must be >= 2 (got {bins})")
        self.bins = bins

    @classmethod
    def from_policy(cls, policy: DriftPolicy) -> DriftTest:
        return cls(bins=policy.bins)

    def features(self, reference: FeatureDistribution, live: FeatureDistribution) -> Measurement:
        edges = reference_edges(reference, self.bins)
        p, q = bin_proportions(reference, edges), bin_proportions(live, edges)
        return Measurement(_js_distance(p, q), details={"bins": int(p.size), "base": 2})

    def histograms(self, reference: Histogram, live: Histogram) -> Measurement:
        p, q = _aligned(reference, live)
        return Measurement(_js_distance(p, q), details={"bins": int(p.size), "base": 2})


@register_drift_test
class Wasserstein(DriftTest):
    name = "wasserstein"
    decides_on = "statistic"
    default_threshold = 0.1
    on_features = True

    @staticmethod
    def distance(a: FeatureDistribution, b: FeatureDistribution) -> float:
        """Exact W1 between two weighted empirical distributions."""
        points = np.union1d(a.items, b.items)
        if points.size < 2:
            return 0.0
        gaps = np.diff(points)
        return float(np.sum(np.abs(a.cdf(points[:-1]) - b.cdf(points[:-1])) * gaps))

    def features(self, reference: FeatureDistribution, live: FeatureDistribution) -> Measurement:
        w1 = self.distance(reference, live)
        scale = reference.std()
        if scale > 0:
            return Measurement(w1 / scale, details={"w1": w1, "scale": scale})
        if w1 == 0:
            return Measurement(0.0, details={"w1": 0.0, "scale": 0.0})
        return Measurement(
            None,
            details={"w1": w1, "scale": 0.0},
            undefined="the reference is constant: no spread to measure the distance in",
        )


@register_drift_test
class ChiSquare(DriftTest):
    name = "chi_square"
    decides_on = "p_value"
    default_threshold = 0.01
    on_histograms = True

    def histograms(self, reference: Histogram, live: Histogram) -> Measurement:
        from scipy.stats import chi2

        bins = max(reference.counts.size, live.counts.size)
        table = np.zeros((2, bins))
        table[0, : reference.counts.size] = reference.counts
        table[1, : live.counts.size] = live.counts
        table = table[:, table.sum(axis=0) > 0]
        dof = table.shape[1] - 1
        if dof < 1 or np.any(table.sum(axis=1) == 0):
            return Measurement(0.0, 1.0, details={"dof": max(dof, 0)})
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
        stat = float(np.sum((table - expected) ** 2 / expected))
        return Measurement(stat, float(chi2.sf(stat, dof)), details={"dof": dof})
