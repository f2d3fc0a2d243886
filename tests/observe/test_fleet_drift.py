"""Fleet drift reports on real telemetry: digits served by a real ONNX model through the devices' own
telemetry recorder, windows sealed and stored as ingestion stores them, merged per cohort on the server.

The shifted cohort gets a 0.5-SD shift on three pixels; the report must flag exactly those element
features in exactly that cohort — and nothing anywhere in no-shift controls over several seeds.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2_contingency
from sqlalchemy import func, select, update
from telemetry_rows import (
    SHIFTED_PIXELS,
    DigitsWorld,
    device_windows,
    digits_world,
    enrol,
    insert_windows,
    populate,
    shifted,
)

from tinymlops.errors import NotFoundError, SpecError, UsageError
from tinymlops.observe.drift import DriftPolicy, Histogram, Verdict, compare_histogram
from tinymlops.observe.fleet_drift import (
    MAX_WINDOW_S,
    WINDOW_UNITS,
    DriftService,
    HistogramEstimate,
    TimeRange,
    parse_window,
)
from tinymlops.observe.privacy import randomized_response, rr_estimate
from tinymlops.observe.schema import DriftPolicyRow, TelemetryWindowRow
from tinymlops.optimize.pipeline import register_model
from tinymlops.spec.telemetry import HistogramPrivacy, InputsSummary
from tinymlops.workspace import Workspace

SHIFTED = {f"element:{p}" for p in SHIFTED_PIXELS}


@pytest.fixture(scope="module")
def world() -> DigitsWorld:
    return digits_world(0)


def cohort(report: Any, label: str) -> Any:
    return next(c for c in report.cohorts if c.label == label)


def test_a_shift_in_one_cohort_is_flagged_there_and_only_there(sqlite_workspace: Any, world: DigitsWorld) -> None:
    populate(sqlite_workspace, world)
    report = DriftService(sqlite_workspace.engine, sqlite_workspace.registry).report("digits", window="1h")
    assert [c.label for c in report.cohorts] == ["*", "tag=site-a", "tag=site-b"]
    b, a, fleet = cohort(report, "tag=site-b"), cohort(report, "tag=site-a"), cohort(report, "*")
    assert set(b.drifted_features) == SHIFTED and b.verdict is Verdict.DRIFT
    assert a.drifted_features == [] and a.drifted_derived == [] and a.verdict is Verdict.NO_DRIFT
    assert set(fleet.drifted_features) <= SHIFTED  # the fleet holds the shifted devices too
    # strongest first: Wasserstein in reference SDs, ~0.5 for a 0.5-SD shift
    strengths = [b.report.features[n].result("wasserstein").statistic for n in b.drifted_features]
    assert strengths == sorted(strengths, reverse=True) and min(strengths) > 0.3
    assert (b.devices, b.windows, b.rows) == (5, 10, sum(len(p) for p in np.array_split(np.arange(597), 10)[5:]))
    assert (fleet.devices, fleet.windows, fleet.rows) == (10, 20, 597)
    assert all(f.derived == f.name.startswith("projection:") for f in b.features)
    summary = report.summary()
    assert "tag=site-b" in summary and "site-a" not in summary and all(n in summary for n in SHIFTED)
    doc = report.to_dict()
    json.dumps(doc, allow_nan=False)  # strict JSON
    assert doc["drifted_cohorts"] == ["*", "tag=site-b"] or doc["drifted_cohorts"] == ["tag=site-b"]
    feature = next(f for f in doc["cohorts"][2]["features"] if f["name"] == "element:19")
    assert feature["verdict"] == "drift" and feature["deciding_tests"] == ["ks", "wasserstein"]
    assert set(feature["tests"]) == {"ks", "psi", "js", "wasserstein"}
    ks = feature["tests"]["ks"]
    assert ks["p_value"] < ks["threshold"] < 0.01  # Bonferroni over 72 features


@pytest.mark.slow
def test_no_false_alarms_without_a_shift_over_several_seeds(tmp_path: Path, world: DigitsWorld) -> None:
    """Six fleets (other device splits, other privacy seeds), three cohorts each: no feature and no
    prediction histogram flagged anywhere — the false-alarm rate is not one lucky seed."""
    flagged: list[tuple[int, str, list[str]]] = []
    cohorts = 0
    for seed in range(6):
        with Workspace.init(tmp_path / f"ws{seed}") as ws:
            populate(ws, world, shift=False, seed=seed)
            report = DriftService(ws.engine, ws.registry).report("digits", window="1h")
            for c in report.cohorts:
                cohorts += 1
                assert c.verdict is not Verdict.NOT_ENOUGH_DATA
                if c.verdict is Verdict.DRIFT:
                    flagged.append((seed, c.label, c.drifted_features + c.drifted_derived + c.prediction_drift))
    assert cohorts == 18
    assert flagged == []


def test_cohorts_by_device_and_profile_and_one_cohort_only(sqlite_workspace: Any, world: DigitsWorld) -> None:
    keys = populate(sqlite_workspace, world)
    service = DriftService(sqlite_workspace.engine, sqlite_workspace.registry)
    by_device = service.report("digits", window="1h", by="device")
    assert [c.name for c in by_device.cohorts[1:]] == sorted(k.device_id for k in keys)
    assert all(c.devices == 1 and c.windows == 2 for c in by_device.cohorts[1:])
    by_profile = service.report("digits", window="1h", by="profile")
    assert [c.label for c in by_profile.cohorts] == ["*", "profile=rpi-4"]
    only = service.report("digits", window="1h", cohort="site-b")
    assert [c.label for c in only.cohorts] == ["tag=site-b"] and set(only.cohorts[0].drifted_features) == SHIFTED
    with pytest.raises(NotFoundError, match="site-a, site-b"):
        service.report("digits", window="1h", cohort="site-c")
    with pytest.raises(UsageError, match="by must be one of"):
        service.report("digits", by="owner")


def test_time_range_version_and_missing_things(sqlite_workspace: Any, world: DigitsWorld) -> None:
    now = time.time()
    populate(sqlite_workspace, world, start=now - 3 * 86_400)  # windows three days ago
    service = DriftService(sqlite_workspace.engine, sqlite_workspace.registry)
    with pytest.raises(NotFoundError, match="no telemetry from model 'digits'"):
        service.report("digits", window="1h")
    assert service.report("digits", window="4d").cohorts[0].windows == 20
    report = service.report("digits", since=now - 4 * 86_400, until=now - 3 * 86_400 + 301)
    assert report.cohorts[0].windows == 10  # the first window of each device only
    with pytest.raises(UsageError, match="either a window"):
        service.report("digits", window="1h", since=now)
    with pytest.raises(UsageError, match="is after until"):
        service.report("digits", since=now, until=now - 1)
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        service.report("nope")
    with pytest.raises(NotFoundError, match="has no version 3"):
        service.report("digits", version=3)
    # a version 2 without telemetry: the default stays on the newest version *with* telemetry
    with sqlite_workspace.engine.begin() as conn:
        conn.execute(update(TelemetryWindowRow).values(version=2).where(TelemetryWindowRow.id % 2 == 0))
    result = register_model(sqlite_workspace, "digits", digits_world(1).onnx, derive=False, run_evaluation=False)
    assert result.base.version == 2 and result.reference is not None  # the model's eval set: v2 gets one too
    assert service.report("digits", window="4d").version == 2
    assert service.report("digits", window="4d", version=1).version == 1


def test_a_version_without_reference_says_how_to_make_one(sqlite_workspace: Any, world: DigitsWorld) -> None:
    register_model(sqlite_workspace, "bare", world.onnx, derive=False, run_evaluation=False)
    (keys,) = enrol(sqlite_workspace, [["site-a"]])
    windows = device_windows(world.onnx, world.x_field[:100], start=time.time() - 600)
    insert_windows(sqlite_workspace, keys, windows, model="bare", version=1)
    service = DriftService(sqlite_workspace.engine, sqlite_workspace.registry)
    with pytest.raises(NotFoundError, match=r"no reference profile.*tinymlops dataset add bare"):
        service.report("bare", window="1h")


def test_windows_of_another_input_are_set_aside_not_mixed(sqlite_workspace: Any, world: DigitsWorld) -> None:
    from tinymlops.observe.policy import TelemetryPolicy
    from tinymlops.observe.recorder import TelemetryRecorder

    populate(sqlite_workspace, world, shift=False)
    service = DriftService(sqlite_workspace.engine, sqlite_workspace.registry)
    before = service.report("digits", window="1h")
    (keys,) = enrol(sqlite_workspace, [["site-a"]])
    recorder = TelemetryRecorder("ab" * 16, policy=TelemetryPolicy(projection_seed=7), clock=lambda: time.time() - 60)
    from telemetry_rows import OnnxEndpoint

    from tinymlops.edge.middleware import Request

    endpoint = OnnxEndpoint(world.onnx)
    for i in range(0, 200, 8):
        recorder(Request(inputs=shifted(world.x_field[i : i + 8], world.x_eval, sd=5.0)), endpoint)
    window = recorder.take_window(at=time.time() - 30)
    assert window is not None
    insert_windows(sqlite_workspace, keys, [window], model="digits", version=1, tags=["site-a"])
    after = service.report("digits", window="1h")
    a_before, a_after = cohort(before, "tag=site-a"), cohort(after, "tag=site-a")
    assert (a_after.windows, a_after.rows) == (a_before.windows, a_before.rows)  # nothing mixed in
    assert a_after.drifted_features == []
    ((reason, n),) = a_after.excluded.items()
    assert n == 1 and "projection" in reason and "seed 7" in reason
    assert after.to_dict()["excluded"] == {reason: 1}


def test_privatized_class_histograms_are_debiased_and_a_label_shift_is_caught(
    sqlite_workspace: Any, world: DigitsWorld
) -> None:
    """Devices release class counts by randomized response (epsilon 3) and confidence by discrete
    Laplace: a cohort seeing mostly zeros and ones is caught after de-biasing; the control is not;
    and the numbers tested are the estimator's, never the reported counts."""
    rng = np.random.default_rng(5)
    labels = world.y_field
    control = world.x_field[rng.permutation(labels.size)[:300]]
    skew_pool = world.x_field[labels <= 1]
    tags = [["control"]] * 4 + [["skewed"]] * 4
    register_model(sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    keys = enrol(sqlite_workspace, tags)
    start = time.time() - 1800
    stored: dict[str, list[tuple[int, ...]]] = {"control": [], "skewed": []}
    for i, t in enumerate(tags):
        if t == ["control"]:
            x = np.array_split(control, 4)[i]
        else:  # mostly zeros and ones, some of everything
            x = np.concatenate(
                [skew_pool[rng.integers(0, len(skew_pool), 120)], world.x_field[rng.integers(0, 597, 40)]]
            )
        windows = device_windows(world.onnx, x, start=start, seed=i, classes_epsilon=3.0, confidence_epsilon=2.0)
        assert all(w.privacy.classes.mechanism == "randomized_response" for w in windows)
        stored[t[0]] += [w.inputs.classes for w in windows]
        insert_windows(sqlite_workspace, keys[i], windows, model="digits", version=1, tags=t)
    report = DriftService(sqlite_workspace.engine, sqlite_workspace.registry).report("digits", window="1h")
    skewed, ctl = cohort(report, "tag=skewed"), cohort(report, "tag=control")
    assert skewed.report.predictions.verdict is Verdict.DRIFT
    assert "predictions" in skewed.prediction_drift
    assert ctl.report.predictions.verdict is Verdict.NO_DRIFT
    for name, c in (("skewed", skewed), ("control", ctl)):
        # a window's histogram is as long as its largest predicted class (+1): pad to the model's 10
        expected = sum(np.pad(rr_estimate(np.asarray(c), 3.0), (0, 10 - len(c))) for c in stored[name])
        np.testing.assert_allclose(c.classes.estimate, expected)  # de-biased, window by window
        raw = np.sum([np.pad(c, (0, 10 - len(c))) for c in stored[name]], axis=0)
        assert not np.allclose(c.classes.estimate, raw)
        live = c.classes.to_dict()
        assert live["debiased"] and live["design_effect"] > 1.0
        assert live["windows_by_mechanism"] == {"randomized_response(epsilon=3)": len(stored[name])}
        assert c.confidence.to_dict()["windows_by_mechanism"] == {"laplace(epsilon=2)": len(stored[name])}
    # the raw reported counts understate the shift (randomized response pulls every count toward uniform)
    ref = np.asarray(report.reference.profile.inputs.classes)
    raw_js = compare_histogram(
        "raw", Histogram.of(ref), Histogram.of(np.sum([np.pad(c, (0, 10 - len(c))) for c in stored["skewed"]], axis=0))
    )
    assert raw_js.result("js").statistic < skewed.report.predictions.result("js").statistic


def test_the_design_effect_keeps_chi_square_honest_under_randomized_response() -> None:
    """Under no drift, chi-square on de-biased randomized-response counts false-alarms far above its
    level unless their noise is accounted for; with the design effect it stays near the level."""
    rng = np.random.default_rng(11)
    pi = np.array([0.11, 0.1, 0.09, 0.1, 0.1, 0.1, 0.12, 0.08, 0.1, 0.1])
    trials, naive, corrected = 300, 0, 0
    for _ in range(trials):
        reference = rng.multinomial(600, pi)
        estimate = HistogramEstimate()
        for _ in range(5):
            true = rng.multinomial(200, pi)
            estimate.add(
                tuple(int(v) for v in randomized_response(true, 2.0, rng)),
                HistogramPrivacy("randomized_response", 2.0),
                200,
            )
        debiased = np.maximum(estimate.estimate, 0)
        naive += chi2_contingency(np.vstack([reference, debiased]), correction=False).pvalue < 0.01
        fair = estimate.histogram("live")
        corrected += (
            compare_histogram("p", Histogram.of(reference), fair, DriftPolicy(min_samples=1))
            .result("chi_square")
            .p_value
            < 0.01
        )
    assert naive / trials > 0.3
    assert corrected / trials < 0.04


def test_exact_histograms_are_used_as_sent() -> None:
    estimate = HistogramEstimate()
    estimate.add((5, 3, 2), HistogramPrivacy("none"), 10)
    estimate.add((1, 1, 0, 4), HistogramPrivacy("none"), 6)
    assert estimate.design_effect() == 1.0
    np.testing.assert_array_equal(estimate.histogram("h").counts, [6, 4, 2, 4])


def test_stored_policy_decides_and_a_corrupt_one_is_refused(sqlite_workspace: Any, world: DigitsWorld) -> None:
    populate(sqlite_workspace, world)
    service = DriftService(sqlite_workspace.engine, sqlite_workspace.registry)
    assert service.policy("digits").stored is False
    lenient = DriftPolicy(thresholds={"wasserstein": 2.0})
    stored = service.set_policy("digits", lenient.to_dict(), updated_by="test")
    assert (
        stored.policy == DriftPolicy.from_dict(lenient.to_dict()) and service.policy("digits").policy == stored.policy
    )
    report = service.report("digits", window="1h")
    assert report.policy_source == "stored" and cohort(report, "tag=site-b").drifted_features == []
    with pytest.raises(UsageError, match="unknown test 'kolmogorov'"):
        service.set_policy("digits", {"thresholds": {"kolmogorov": 0.1}})
    with pytest.raises(UsageError, match="unknown setting"):
        service.set_policy("digits", {"treshold": {}})
    assert service.policy("digits").policy == stored.policy  # a refused change stores nothing
    with sqlite_workspace.engine.begin() as conn:
        conn.execute(update(DriftPolicyRow).values(policy={"bins": 1}))
    with pytest.raises(SpecError, match="no longer validates"):
        service.report("digits", window="1h")
    assert service.reset_policy("digits").stored is False and service.policy("digits").stored is False
    with sqlite_workspace.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(DriftPolicyRow)) == 0


# --- the window string --------------------------------------------------------------------------
@given(st.integers(1, 10**9), st.sampled_from(sorted(WINDOW_UNITS)))
def test_window_strings_parse_to_their_seconds(n: int, unit: str) -> None:
    seconds = n * WINDOW_UNITS[unit]
    if seconds <= MAX_WINDOW_S:
        assert parse_window(f"{n}{unit}") == seconds
    else:
        with pytest.raises(UsageError, match="longer than"):
            parse_window(f"{n}{unit}")


@given(st.text(max_size=12))
def test_any_other_window_string_is_a_clear_usage_error(text: str) -> None:
    try:
        seconds = parse_window(text)
    except UsageError as exc:
        assert "window" in exc.message
    else:
        assert 1 <= seconds <= MAX_WINDOW_S and text.strip()[-1] in WINDOW_UNITS


@pytest.mark.parametrize("text", ["0h", "-1h", "1.5h", "h", "1", "1 h", "1H", "01h", "1hh", ""])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="bad window"):
        parse_window(text)


def test_time_range_describes_itself() -> None:
    r = TimeRange.of(window="2h", now=7200.0)
    assert (r.since, r.until) == (0.0, 7200.0)
    assert TimeRange.of(now=1.0).describe() == "all time"
    assert math.isclose(TimeRange.of(since=10, now=0).since or 0, 10)


def test_summaries_without_histograms_stay_valid(world: DigitsWorld) -> None:
    from dataclasses import replace

    from tinymlops.observe.sketches import InputProfile

    p = InputProfile()
    p.add(world.x_field[:50])
    p.observe(np.eye(10, dtype=np.float32)[np.arange(50) % 10])
    summary = p.summary()
    stripped = replace(summary, classes=None, confidence=None, predictions=0)
    assert InputsSummary.from_dict(stripped.to_dict()) == stripped
