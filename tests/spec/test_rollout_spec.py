"""The rollout plan contract: round trips, defaults, and bad documents refused with errors that
name the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.rollout import ON_FAILURE, HealthCriteria, RolloutPlan, RolloutStage

rates = st.floats(0, 1, allow_nan=False)
criteria = st.builds(
    HealthCriteria,
    min_install_success_rate=rates,
    max_smoke_failure_rate=rates,
    max_error_rate=rates,
    max_latency_ratio=st.floats(0.01, 100, allow_nan=False),
    min_reports=st.integers(1, 10_000),
    min_soak_s=st.floats(0, 86_400, allow_nan=False),
)


@st.composite
def plans(draw: st.DrawFn) -> RolloutPlan:
    inner = draw(st.lists(st.floats(0.001, 0.999, allow_nan=False), max_size=6, unique=True))
    fractions = [*sorted(inner), 1.0]
    names = draw(
        st.lists(
            st.from_regex(r"\A[a-z][a-z0-9_-]{0,10}\Z"), min_size=len(fractions), max_size=len(fractions), unique=True
        )
    )
    stages = tuple(RolloutStage(n, f, draw(criteria)) for n, f in zip(names, fractions, strict=True))
    return RolloutPlan(stages=stages, on_failure=draw(st.sampled_from(ON_FAILURE)))


def good() -> dict[str, Any]:
    return {
        "spec_version": "1.0",
        "on_failure": "rollback",
        "stages": [
            {"name": "canary", "fraction": 0.05, "health": {"min_reports": 5, "min_soak_s": 600}},
            {"name": "wide", "fraction": 0.25},
            {"name": "all", "fraction": 1.0},
        ],
    }


@settings(max_examples=150, deadline=None)
@given(plans())
def test_round_trip(plan: RolloutPlan) -> None:
    assert RolloutPlan.from_dict(plan.to_dict()) == plan
    assert RolloutPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()


def test_defaults_and_normalisation() -> None:
    plan = RolloutPlan.from_dict(good())
    assert [s.fraction for s in plan.stages] == [0.05, 0.25, 1.0]
    assert plan.stages[0].health.min_reports == 5 and plan.stages[0].health.min_soak_s == 600.0
    assert plan.stages[1].health == HealthCriteria()
    doc = good()
    del doc["on_failure"]
    doc["stages"][2]["fraction"] = 1  # an integer 1 is fine
    assert RolloutPlan.from_dict(doc).on_failure == "rollback"
    # direct construction goes through the same rules and normalises a list to a tuple
    direct = RolloutPlan(stages=[RolloutStage("a", 0.5), RolloutStage("b", 1)])  # type: ignore[arg-type]
    assert isinstance(direct.stages, tuple) and direct.stages[1].fraction == 1.0


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()

BAD = [
    (("extra",), 1, "unknown field(s) extra"),
    (("spec_version",), _DELETE, "missing required field 'spec_version'"),
    (("spec_version",), "one", "spec_version must look like"),
    (("on_failure",), "explode", "field 'on_failure' must be one of rollback, halt"),
    (("stages",), [], "field 'stages' must be a non-empty list"),
    (("stages",), _DELETE, "missing required field 'stages'"),
    (("stages",), "canary", "field 'stages' must be a non-empty list"),
    (("stages", 0, "fraction"), 0.5, "strictly increasing; stage 1 'wide' has 0.25 after 'canary' with 0.5"),
    (("stages", 1, "fraction"), 0.05, "strictly increasing"),
    (("stages", 2, "fraction"), 0.9, "the last stage must cover the whole fleet"),
    (("stages", 0, "fraction"), 0, "stage 0: field 'fraction' must be > 0"),
    (("stages", 0, "fraction"), -0.1, "stage 0: field 'fraction' must be >= 0.0"),
    (("stages", 2, "fraction"), 1.5, "stage 2: field 'fraction' must be <= 1.0"),
    (("stages", 0, "fraction"), float("nan"), "must not be NaN"),
    (("stages", 0, "fraction"), "5%", "field 'fraction' must be a number"),
    (("stages", 0, "fraction"), True, "field 'fraction' must be a number"),
    (("stages", 0, "fraction"), _DELETE, "stage 0: missing required field 'fraction'"),
    (("stages", 0, "name"), "Canary!", "field 'name' must be 1-32 lower-case"),
    (("stages", 1, "name"), "canary", "stage name 'canary' is used twice"),
    (("stages", 0, "colour"), "red", "stage 0: unknown field(s) colour"),
    (("stages", 0), "canary", "stage 0: must be an object"),
    (("stages", 0, "health", "min_reports"), 0, "'canary' health: field 'min_reports' must be >= 1"),
    (("stages", 0, "health", "min_reports"), 2.5, "field 'min_reports' must be an integer"),
    (("stages", 0, "health", "min_install_success_rate"), 1.2, "'min_install_success_rate' must be <= 1.0"),
    (("stages", 0, "health", "max_smoke_failure_rate"), -0.1, "'max_smoke_failure_rate' must be >= 0.0"),
    (("stages", 0, "health", "max_error_rate"), float("inf"), "'max_error_rate' must be <= 1.0"),
    (("stages", 0, "health", "max_latency_ratio"), 0, "'max_latency_ratio' must be > 0"),
    (("stages", 0, "health", "min_soak_s"), float("inf"), "'min_soak_s' must be <="),
    (("stages", 0, "health", "min_soak_s"), -1, "'min_soak_s' must be >= 0.0"),
    (("stages", 0, "health", "p99"), 3, "'canary' health: unknown field(s) p99"),
    (("stages", 0, "health"), [], "'canary' health: must be an object"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_documents_name_the_problem(path: tuple[Any, ...], value: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        RolloutPlan.from_dict(_set(good(), path, value))
    assert message in str(info.value)


def test_not_an_object_and_too_many_stages_and_future_version() -> None:
    with pytest.raises(SpecError, match="must be an object, got list"):
        RolloutPlan.from_dict([])
    many = [{"name": f"s{i}", "fraction": (i + 1) / 20} for i in range(20)]
    with pytest.raises(SpecError, match="at most 16 stages, got 20"):
        RolloutPlan.from_dict({"spec_version": "1.0", "stages": many})
    with pytest.raises(UnsupportedVersionError, match=r"unsupported spec_version 2\.0"):
        RolloutPlan.from_dict({**good(), "spec_version": "2.0"})
    assert RolloutPlan.from_dict({**good(), "spec_version": "1.7"}).spec_version == "1.7"
    with pytest.raises(SpecError, match="last stage must cover"):
        RolloutPlan(stages=(RolloutStage("a", 0.5),))


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_is_refused_or_parsed_never_crashes(doc: Any) -> None:
    for candidate in (doc, {"spec_version": "1.0", "stages": doc}, {"spec_version": "1.0", "stages": [doc]}):
        try:
            plan = RolloutPlan.from_dict(candidate)
        except SpecError:
            continue
        assert RolloutPlan.from_dict(plan.to_dict()) == plan
