"""Local differential privacy: the estimators the server uses are unbiased (statistical tests with
fixed seeds, tolerances from the stated variances), the mechanisms' distributions are the stated
ones, and a window is privatized — or its histograms withheld — by the budget's say."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinymlops.errors import UsageError
from tinymlops.observe.privacy import (
    CONFIDENCE_SENSITIVITY,
    EpsilonBudget,
    PrivacyPolicy,
    laplace_alpha,
    laplace_counts,
    laplace_variance,
    privatize,
    randomized_response,
    rr_estimate,
    rr_probabilities,
    rr_variance,
)
from tinymlops.observe.sketches import InputProfile
from tinymlops.spec.telemetry import HistogramPrivacy, Performance, Privacy, TelemetryBatch, TelemetryWindow

TRUE = np.array([600, 250, 100, 40, 10, 0, 0, 0, 0, 0])  # a skewed class histogram, n = 1000


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_randomized_response_de_biased_counts_are_unbiased(epsilon: float) -> None:
    rng = np.random.default_rng(1234)
    trials = 3000
    estimates = np.array([rr_estimate(randomized_response(TRUE, epsilon, rng), epsilon) for _ in range(trials)])
    mean = estimates.mean(axis=0)
    stderr = np.sqrt(rr_variance(TRUE, epsilon) / trials)
    # every class within 4.5 standard errors (a false failure ~1e-4 over the 10 classes, fixed seed anyway)
    assert np.all(np.abs(mean - TRUE) <= 4.5 * stderr), (mean, TRUE, stderr)
    # the stated variance is the observed one (within 10%: 3000 trials)
    np.testing.assert_allclose(estimates.var(axis=0), rr_variance(TRUE, epsilon), rtol=0.1)
    assert all(randomized_response(TRUE, epsilon, rng).sum() == TRUE.sum() for _ in range(10))


def test_each_report_keeps_its_class_with_probability_p() -> None:
    """One prediction of class 0 among k = 10: it is reported as itself with p = e^ε/(e^ε+9), as
    each other class with q — and p/q = e^ε, which is what makes a report ε-LDP."""
    epsilon, k, trials = 1.0, 10, 200_000
    p, q = rr_probabilities(k, epsilon)
    assert p / q == pytest.approx(math.exp(epsilon))
    rng = np.random.default_rng(7)
    reports = np.zeros(k)
    one = np.zeros(k, np.int64)
    one[0] = trials  # the same as `trials` independent single reports
    reports = randomized_response(one, epsilon, rng)
    observed = reports / trials
    se_p, se_q = math.sqrt(p * (1 - p) / trials), math.sqrt(q * (1 - q) / trials)
    assert abs(observed[0] - p) < 4.5 * se_p
    assert np.all(np.abs(observed[1:] - q) < 4.5 * se_q)


def test_discrete_laplace_noise_has_the_stated_distribution() -> None:
    epsilon = 1.0
    alpha = laplace_alpha(epsilon, CONFIDENCE_SENSITIVITY)
    rng = np.random.default_rng(99)
    zeros = np.zeros(200_000, np.int64)
    noise = laplace_counts(zeros, epsilon, rng)
    assert noise.dtype.kind == "i"
    assert abs(noise.mean()) < 4.5 * math.sqrt(laplace_variance(epsilon) / noise.size)
    assert noise.var() == pytest.approx(laplace_variance(epsilon), rel=0.03)
    # P(Z = z) = (1 - α) / (1 + α) · α^|z|
    for z in (-3, -1, 0, 1, 2, 5):
        expected = (1 - alpha) / (1 + alpha) * alpha ** abs(z)
        observed = float(np.mean(noise == z))
        assert abs(observed - expected) < 4.5 * math.sqrt(expected * (1 - expected) / noise.size), z
    # neighbouring histograms (one prediction moved between buckets: L1 distance 2) — the likelihood
    # ratio of any output is at most e^ε: α^(|z|) / α^(|z-1|) per changed bucket, two buckets
    assert alpha**-CONFIDENCE_SENSITIVITY == pytest.approx(math.exp(epsilon))


def test_laplace_counts_are_unbiased_estimates() -> None:
    rng = np.random.default_rng(5)
    counts = np.array([0, 3, 50, 400, 1200, 7, 0, 0, 1, 2])
    noisy = np.array([laplace_counts(counts, 0.5, rng) for _ in range(4000)])
    stderr = math.sqrt(laplace_variance(0.5) / 4000)
    assert np.all(np.abs(noisy.mean(axis=0) - counts) < 4.5 * stderr)


def test_mechanisms_refuse_bad_parameters() -> None:
    for bad in (0, -1, math.inf, math.nan, True, 1e9):
        with pytest.raises(UsageError, match="epsilon"):
            randomized_response(TRUE, bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="2 classes"):
        randomized_response([5], 1.0)
    with pytest.raises(UsageError, match="non-negative integer"):
        laplace_counts([1.5, 2.0], 1.0)
    with pytest.raises(UsageError, match="non-negative integer"):
        rr_estimate([-1, 3], 1.0)


def _window(profile: InputProfile) -> TelemetryWindow:
    inputs = profile.summary()
    exact = HistogramPrivacy("none")
    return TelemetryWindow(
        bundle_id="c" * 32,
        window_start=0.0,
        window_end=60.0,
        performance=Performance(requests=0),
        inputs=inputs,
        privacy=Privacy(
            classes=None if inputs.classes is None else exact,
            confidence=None if inputs.confidence is None else exact,
        ),
    )


def test_a_window_is_privatized_then_withheld_when_the_budget_runs_out() -> None:
    profile = InputProfile()
    scores = np.random.default_rng(0).random((400, 10)).astype(np.float32)
    profile.observe(scores / scores.sum(axis=1, keepdims=True))
    window = _window(profile)
    policy = PrivacyPolicy(classes_epsilon=1.0, confidence_epsilon=0.5, window_epsilon=2.0, day_epsilon=3.0)
    budget = policy.budget()
    rng = np.random.default_rng(3)

    first = privatize(window, policy, budget, at=1000.0, rng=rng)
    assert first.privacy.classes == HistogramPrivacy("randomized_response", 1.0)
    assert first.privacy.confidence == HistogramPrivacy("laplace", 0.5, 2)
    assert first.privacy.epsilon_spent == 1.5 and budget.day_spent(1000.0) == 1.5
    assert first.inputs is not None and sum(first.inputs.classes or ()) == 400
    assert first.inputs.features == window.inputs.features  # sketches are not touched
    with pytest.raises(UsageError, match="already privatized"):
        privatize(first, policy, budget, at=1000.0)

    budget.next_window()
    second = privatize(window, policy, budget, at=2000.0, rng=rng)  # 1.5 + 1.5 = 3.0 <= 3.0: allowed
    assert second.privacy.epsilon_spent == 1.5
    budget.next_window()
    third = privatize(window, policy, budget, at=3000.0, rng=rng)  # the 24 h cap refuses: withheld
    assert third.inputs is not None and third.inputs.classes is None and third.inputs.confidence is None
    assert third.privacy.withheld == ("classes", "confidence") and third.privacy.epsilon_spent == 0.0
    assert budget.day_spent(3000.0) == 3.0
    for w in (first, second, third):  # every released window is a valid document
        TelemetryBatch.from_bytes(TelemetryBatch("0" * 16, 1.0, (w,)).to_bytes())
    later = privatize(window, policy, budget, at=1000.0 + 86_400.0 + 60.0, rng=rng)  # a day later
    assert later.privacy.epsilon_spent == 1.5


def test_a_one_class_histogram_is_withheld_not_sent_exact() -> None:
    profile = InputProfile()
    profile.observe(np.zeros(30, np.int64))  # labels, all class 0: the histogram would say so exactly
    window = _window(profile)
    out = privatize(window, PrivacyPolicy(classes_epsilon=1.0), EpsilonBudget(10, 10), at=0.0)
    assert out.inputs is not None and out.inputs.classes is None and out.privacy.withheld == ("classes",)
