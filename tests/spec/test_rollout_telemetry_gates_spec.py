"""The rollout plan's telemetry gates (``max_p95_latency_ratio``, ``max_energy_ratio``,
``min_class_samples``): strict parsing that names the field, round trips, and plans without them
reading and writing exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import SpecError
from tinymlops.spec.rollout import DEFAULT_MIN_CLASS_SAMPLES, HealthCriteria, RolloutPlan

ratios = st.none() | st.floats(0.001, 1000, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(p95=ratios, energy=ratios, need=st.integers(1, 10**12), latency=st.floats(0.01, 100, allow_nan=False))
def test_round_trip(p95: float | None, energy: float | None, need: int, latency: float) -> None:
    c = HealthCriteria(
        max_latency_ratio=latency, max_p95_latency_ratio=p95, max_energy_ratio=energy, min_class_samples=need
    )
    doc = c.to_dict()
    assert HealthCriteria.from_dict(doc) == c and HealthCriteria.from_dict(doc).to_dict() == doc
    assert c.telemetry_gated == (p95 is not None or energy is not None)
    assert ("max_energy_ratio" in doc) == (energy is not None) and doc["max_latency_ratio"] == latency
    plan = RolloutPlan.from_dict({"spec_version": "1.0", "stages": [{"name": "all", "fraction": 1.0, "health": doc}]})
    assert RolloutPlan.from_dict(plan.to_dict()) == plan


def test_a_plan_without_telemetry_gates_is_unchanged() -> None:
    doc = {"min_reports": 3, "max_latency_ratio": 2.0}
    c = HealthCriteria.from_dict(doc)
    assert not c.telemetry_gated and c.min_class_samples == DEFAULT_MIN_CLASS_SAMPLES
    assert set(c.to_dict()) == {
        "min_install_success_rate",
        "max_smoke_failure_rate",
        "max_error_rate",
        "max_latency_ratio",
        "min_reports",
        "min_predictions",
        "min_soak_s",
    }
    # null is "off", as the API sends it
    assert HealthCriteria.from_dict({"max_energy_ratio": None, "max_p95_latency_ratio": None}) == HealthCriteria()


BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_energy_ratio": 0}, "'max_energy_ratio' must be > 0"),
    ({"max_energy_ratio": -1.0}, "'max_energy_ratio' must be >= 0.0"),
    ({"max_energy_ratio": float("inf")}, "'max_energy_ratio' must be <= 1000.0"),
    ({"max_energy_ratio": float("nan")}, "'max_energy_ratio' must not be NaN"),
    ({"max_energy_ratio": "1.2"}, "'max_energy_ratio' must be a number"),
    ({"max_p95_latency_ratio": True}, "'max_p95_latency_ratio' must be a number"),
    ({"max_p95_latency_ratio": 5000}, "'max_p95_latency_ratio' must be <= 1000.0"),
    ({"min_class_samples": 0}, "'min_class_samples' must be >= 1"),
    ({"min_class_samples": 1.5}, "'min_class_samples' must be an integer"),
    ({"min_class_samples": 10**13}, "'min_class_samples' must be <= "),
    ({"max_p99_latency_ratio": 2}, "unknown field(s) max_p99_latency_ratio"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_gates_name_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        HealthCriteria.from_dict(doc)
    assert message in str(info.value)
    if "max_p99_latency_ratio" not in doc:  # direct construction follows the same rules
        with pytest.raises(SpecError):
            HealthCriteria(**doc)
