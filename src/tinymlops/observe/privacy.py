"""Local differential privacy for the histograms a device uploads, and the budget it refuses to exceed.

**What is protected.** The unit of privacy is *one prediction*: two windows are neighbours when
they differ in one prediction's output (its class and its confidence; the number of predictions is
public — the performance section reports it). Only the histograms are privatized; the input
sketches are not differentially private (they are aggregates, never raw inputs — the bundle's
policy decides whether they are sent at all).

* **Class histogram — k-ary randomized response** (:func:`randomized_response`). Each
  prediction's class is reported truthfully with probability ``p = e^ε / (e^ε + k − 1)`` and as
  each other class with probability ``q = 1 / (e^ε + k − 1)``; the ratio ``p/q = e^ε`` makes every
  single report ε-locally-differentially private. The device counts the reports (it holds the
  exact counts and draws, per class, how many of its predictions keep their class — a binomial —
  and where the others go — a multinomial over the other classes: the same distribution as
  randomizing each prediction on its own). The server de-biases the reported counts ``y`` with
  :func:`rr_estimate`: ``ĉ_j = (y_j − n·q) / (p − q)``, which is unbiased (``E[y_j] = c_j·p +
  (n − c_j)·q``), with variance :func:`rr_variance`.
* **Bucket counts — the discrete Laplace mechanism** (:func:`laplace_counts`): every count gets
  independent two-sided geometric noise ``P(Z = z) ∝ α^|z|``, ``α = e^(−ε/Δ)``, which is ε-DP for
  integer histograms of L1 sensitivity Δ (Ghosh, Roughgarden & Sundararajan). Changing one
  prediction moves one count down and another up, so **Δ = 2** (``CONFIDENCE_SENSITIVITY``).
  Integer noise keeps the counts integers and avoids the floating-point leak of a continuous
  Laplace sampler (Mironov 2012). The noise has mean 0 (the estimator is the identity) and
  variance ``2α / (1 − α)²`` per count (:func:`laplace_variance`).

Randomness comes from a numpy ``Generator`` seeded with 128 fresh bits of ``secrets`` per release
unless the caller passes one (tests do, with fixed seeds).

**The budget.** :class:`EpsilonBudget` caps the epsilon spent per window and in any 24 hours. It
adds up every release (basic sequential composition: it over-counts for disjoint windows, on the
safe side). Its clock never runs backwards: a time earlier than one already seen counts as that
time, so setting the device clock back frees nothing (setting it far forward and back stalls
releases until real time catches up — the safe failure). :meth:`EpsilonBudget.spend` refuses
with :class:`~tinymlops.errors.PrivacyBudgetExceeded` before anything is spent; sums are exact
(fractions), so "never exceeds the cap" holds without rounding slack. ``to_dict``/``from_dict``
make it persistable (writing it with the agent's state is the caller's job).
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from tinymlops.errors import PrivacyBudgetExceeded, SpecError, UsageError
from tinymlops.spec.telemetry import (
    MAX_EPSILON,
    HistogramPrivacy,
    InputsSummary,
    Privacy,
    TelemetryWindow,
)

#: L1 sensitivity of a bucket histogram when one prediction changes (one count −1, another +1)
CONFIDENCE_SENSITIVITY = 2
DAY_S = 86_400.0
#: spends are kept per minute (stamped at the minute's end: they expire later, never earlier)
GRANULARITY_S = 60.0
BUDGET_STATE_VERSION = 1


def fresh_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from ``secrets`` (one per release)."""
    return np.random.default_rng(secrets.randbits(128))


def _epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0.0 < epsilon <= MAX_EPSILON:
        raise UsageError(f"epsilon must be a number within (0, {MAX_EPSILON}], got {epsilon!r}")
    return float(epsilon)


def _counts(counts: Any, what: str) -> np.ndarray:
    a = np.asarray(counts)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu" or (a < 0).any():
        raise UsageError(f"{what} must be a non-empty 1-d array of non-negative integer counts")
    return a.astype(np.int64)


# --- k-ary randomized response ------------------------------------------------------------------
def rr_probabilities(k: int, epsilon: float) -> tuple[float, float]:
    """(p, q): the probability of reporting the true class, and each particular other class."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UsageError(f"randomized response needs at least 2 classes, got {k!r}")
    epsilon = _epsilon(epsilon)
    denominator = math.exp(epsilon) + k - 1
    return math.exp(epsilon) / denominator, 1.0 / denominator


def randomized_response(counts: Any, epsilon: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """The counts of k-ary randomized-response reports of predictions whose true counts are ``counts``."""
    c = _counts(counts, "class counts")
    k = int(c.size)
    p, _ = rr_probabilities(k, epsilon)
    rng = rng or fresh_rng()
    kept = rng.binomial(c, p)
    out = kept.astype(np.int64)
    moved = c - kept
    others = np.full(k - 1, 1.0 / (k - 1))
    for j in np.flatnonzero(moved):
        spread = rng.multinomial(int(moved[j]), others)
        out[:j] += spread[:j]
        out[j + 1 :] += spread[j:]
    return out


def rr_estimate(reported: Any, epsilon: float) -> np.ndarray:
    """The unbiased estimate of the true counts from randomized-response counts (may be negative or
    fractional; clip to [0, n] only for display — clipping biases it)."""
    y = _counts(reported, "reported counts").astype(np.float64)
    p, q = rr_probabilities(int(y.size), epsilon)
    return (y - y.sum() * q) / (p - q)


def rr_variance(true_counts: Any, epsilon: float) -> np.ndarray:
    """Variance of :func:`rr_estimate` per class, given the true counts."""
    c = _counts(true_counts, "true counts").astype(np.float64)
    p, q = rr_probabilities(int(c.size), epsilon)
    n = c.sum()
    return (c * p * (1 - p) + (n - c) * q * (1 - q)) / (p - q) ** 2


# --- discrete Laplace ----------------------------------------------------------------------------
def laplace_alpha(epsilon: float, sensitivity: int = CONFIDENCE_SENSITIVITY) -> float:
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or sensitivity < 1:
        raise UsageError(f"sensitivity must be a positive integer, got {sensitivity!r}")
    return math.exp(-_epsilon(epsilon) / sensitivity)


def laplace_counts(
    counts: Any, epsilon: float, rng: np.random.Generator | None = None, *, sensitivity: int = CONFIDENCE_SENSITIVITY
) -> np.ndarray:
    """``counts`` plus independent discrete Laplace noise (ε-DP for L1 sensitivity ``sensitivity``)."""
    c = _counts(counts, "bucket counts")
    alpha = laplace_alpha(epsilon, sensitivity)
    rng = rng or fresh_rng()
    # the difference of two geometric variables on {0, 1, …} with P(G = g) = (1 − α)·α^g
    noise = (rng.geometric(1.0 - alpha, size=(2, c.size)) - 1).astype(np.int64)
    return c + noise[0] - noise[1]


def laplace_variance(epsilon: float, sensitivity: int = CONFIDENCE_SENSITIVITY) -> float:
    alpha = laplace_alpha(epsilon, sensitivity)
    return 2.0 * alpha / (1.0 - alpha) ** 2


# --- the budget -------------------------------------------------------------------------------------
def _fraction(value: Any, what: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number, got {value!r}")
    return Fraction(value)


class EpsilonBudget:
    """Epsilon caps per window and per any 24 hours (see the module doc)."""

    def __init__(self, per_window: float, per_day: float) -> None:
        self.per_window = _fraction(per_window, "per-window epsilon cap")
        self.per_day = _fraction(per_day, "per-day epsilon cap")
        if self.per_window <= 0 or self.per_day <= 0:
            raise UsageError("epsilon caps must be positive")
        self._window = Fraction(0)
        self._clock = 0.0
        self._spends: list[tuple[float, Fraction]] = []  # (minute end, epsilon), oldest first

    def _now(self, at: float) -> float:
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise UsageError(f"the budget's clock must be a finite number of seconds, got {at!r}")
        return max(self._clock, float(at))  # never backwards

    def _day(self, now: float) -> Fraction:
        return sum((eps for t, eps in self._spends if t > now - DAY_S), Fraction(0))

    def window_spent(self) -> float:
        return float(self._window)

    def day_spent(self, at: float) -> float:
        return float(self._day(self._now(at)))

    def remaining(self, at: float) -> float:
        """The most one spend could take now."""
        now = self._now(at)
        return float(max(Fraction(0), min(self.per_window - self._window, self.per_day - self._day(now))))

    def can_spend(self, epsilon: float, at: float) -> bool:
        try:
            self._check(_fraction(_epsilon(epsilon), "epsilon"), self._now(at))
        except PrivacyBudgetExceeded:
            return False
        return True

    def _check(self, eps: Fraction, now: float) -> None:
        if self._window + eps > self.per_window:
            raise PrivacyBudgetExceeded(
                f"spending epsilon {float(eps):g} would exceed the per-window cap {float(self.per_window):g} "
                f"({float(self._window):g} already spent in this window)",
                cap="window",
                requested=float(eps),
                remaining=float(self.per_window - self._window),
            )
        day = self._day(now)
        if day + eps > self.per_day:
            raise PrivacyBudgetExceeded(
                f"spending epsilon {float(eps):g} would exceed the 24-hour cap {float(self.per_day):g} "
                f"({float(day):g} already spent in the last 24 hours)",
                cap="day",
                requested=float(eps),
                remaining=float(self.per_day - day),
            )

    def spend(self, epsilon: float, at: float) -> None:
        """Record a release of ``epsilon`` at ``at`` (seconds), or raise PrivacyBudgetExceeded and spend nothing."""
        eps = _fraction(_epsilon(epsilon), "epsilon")
        now = self._now(at)
        self._check(eps, now)
        self._clock = now
        self._window += eps
        stamp = math.ceil(now / GRANULARITY_S) * GRANULARITY_S
        if self._spends and self._spends[-1][0] == stamp:
            self._spends[-1] = (stamp, self._spends[-1][1] + eps)
        else:
            self._spends.append((stamp, eps))
        cutoff = now - DAY_S
        while self._spends and self._spends[0][0] <= cutoff:  # the clock never goes back: safe to forget
            self._spends.pop(0)

    def next_window(self) -> None:
        """Start a new window (its cap starts from nothing; the 24-hour total carries on)."""
        self._window = Fraction(0)

    # --- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": BUDGET_STATE_VERSION,
            "per_window": str(self.per_window),
            "per_day": str(self.per_day),
            "window_spent": str(self._window),
            "clock": self._clock,
            "spends": [[t, str(eps)] for t, eps in self._spends],
        }

    @classmethod
    def from_dict(cls, data: Any) -> EpsilonBudget:
        """Read a persisted budget; a corrupt one raises SpecError (treat it as fully spent, not as empty)."""
        where = "epsilon budget state"
        if not isinstance(data, Mapping) or data.get("version") != BUDGET_STATE_VERSION:
            raise SpecError(f"{where}: must be an object with version {BUDGET_STATE_VERSION}")
        unknown = set(data) - {"version", "per_window", "per_day", "window_spent", "clock", "spends"}
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            budget = cls(float(_parse_fraction(data["per_window"])), float(_parse_fraction(data["per_day"])))
            budget.per_window = _parse_fraction(data["per_window"])
            budget.per_day = _parse_fraction(data["per_day"])
            budget._window = _parse_fraction(data["window_spent"])
            clock = data["clock"]
            if isinstance(clock, bool) or not isinstance(clock, int | float) or not math.isfinite(clock):
                raise ValueError("clock must be a finite number")
            budget._clock = float(clock)
            spends = []
            for item in data["spends"]:
                t, eps = item
                if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                    raise ValueError("spend times must be finite numbers")
                spends.append((float(t), _parse_fraction(eps)))
        except (KeyError, TypeError, ValueError, ZeroDivisionError, UsageError) as exc:
            raise SpecError(f"{where}: {exc}") from exc
        if any(a[0] > b[0] for a, b in itertools.pairwise(spends)) or budget._window < 0:
            raise SpecError(f"{where}: spends out of order or a negative window total")
        budget._spends = spends
        return budget


def _parse_fraction(text: Any) -> Fraction:
    if not isinstance(text, str) or len(text) > 4096:
        raise ValueError(f"expected a fraction as a string, got {text!r:.40}")
    value = Fraction(text)
    if value < 0:
        raise ValueError(f"negative epsilon {text!r:.40}")
    return value


# --- the policy a bundle sets -------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyPolicy:
    """Which mechanism each histogram is released with (``None``: exact) and the budget's caps."""

    classes_epsilon: float | None = None
    confidence_epsilon: float | None = None
    window_epsilon: float = 4.0
    day_epsilon: float = 24.0

    def __post_init__(self) -> None:
        for name in ("classes_epsilon", "confidence_epsilon"):
            value = getattr(self, name)
            if value is not None:
                _epsilon(value)
        for name in ("window_epsilon", "day_epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise UsageError(f"privacy policy: {name} must be a positive finite number, got {value!r}")

    @property
    def active(self) -> bool:
        return self.classes_epsilon is not None or self.confidence_epsilon is not None

    def budget(self) -> EpsilonBudget:
        return EpsilonBudget(self.window_epsilon, self.day_epsilon)


def privatize(
    window: TelemetryWindow,
    policy: PrivacyPolicy,
    budget: EpsilonBudget,
    *,
    at: float,
    rng: np.random.Generator | None = None,
) -> TelemetryWindow:
    """The window as released under ``policy``: its exact histograms replaced by privatized ones,
    epsilon spent from ``budget`` — or, when the budget refuses, those histograms withheld (left
    out and named in ``privacy.withheld``). A window already privatized is refused (UsageError)."""
    inputs = window.inputs
    if any(p is not None and p.mechanism != "none" for p in (window.privacy.classes, window.privacy.confidence)):
        raise UsageError("this window's histograms are already privatized")
    if inputs is None or not policy.active:
        return window
    rng = rng or fresh_rng()
    wanted: list[tuple[str, float]] = []
    unusable: list[str] = []  # a one-class histogram cannot be randomized: it is withheld, never sent exact
    if policy.classes_epsilon is not None and inputs.classes is not None:
        if len(inputs.classes) >= 2:
            wanted.append(("classes", policy.classes_epsilon))
        else:
            unusable.append("classes")
    if policy.confidence_epsilon is not None and inputs.confidence is not None:
        wanted.append(("confidence", policy.confidence_epsilon))
    total = math.fsum(eps for _, eps in wanted)
    withheld: tuple[str, ...] = tuple(unusable)
    if wanted and not budget.can_spend(total, at):
        withheld += tuple(name for name, _ in wanted)
        wanted = []
    elif wanted:
        budget.spend(total, at)
    classes, confidence = inputs.classes, inputs.confidence
    mechanisms: dict[str, HistogramPrivacy | None] = {
        "classes": window.privacy.classes,
        "confidence": window.privacy.confidence,
    }
    for name, eps in wanted:
        if name == "classes":
            classes = tuple(int(c) for c in randomized_response(classes, eps, rng))
            mechanisms[name] = HistogramPrivacy("randomized_response", eps)
        else:
            confidence = tuple(int(c) for c in laplace_counts(confidence, eps, rng))
            mechanisms[name] = HistogramPrivacy("laplace", eps, CONFIDENCE_SENSITIVITY)
    for name in withheld:
        mechanisms[name] = None
        if name == "classes":
            classes = None
        else:
            confidence = None
    new_inputs = InputsSummary(
        rows=inputs.rows,
        features=inputs.features,
        projection=inputs.projection,
        predictions=inputs.predictions,
        classes=classes,
        confidence=confidence,
    )
    spent = math.fsum(eps for _, eps in wanted)
    privacy = Privacy(mechanisms["classes"], mechanisms["confidence"], spent, withheld)
    return TelemetryWindow(
        bundle_id=window.bundle_id,
        model=window.model,
        window_start=window.window_start,
        window_end=window.window_end,
        performance=window.performance,
        inputs=new_inputs,
        privacy=privacy,
    )


__all__ = [
    "CONFIDENCE_SENSITIVITY",
    "EpsilonBudget",
    "PrivacyPolicy",
    "fresh_rng",
    "laplace_counts",
    "laplace_variance",
    "privatize",
    "randomized_response",
    "rr_estimate",
    "rr_probabilities",
    "rr_variance",
]
