"""Reference profiles from a model's eval data, compared with live profiles merged from devices.

Real data and a real model: scikit-learn's digits (64 pixel features), split into train (the
model: logistic regression), eval (the reference) and "the field" (what devices see); devices
profile their inputs and outputs with the same :class:`InputProfile` the runtime will use, and
their profiles are merged as the server will merge them.
"""

from __future__ import annotations

import base64
import io
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from tinymlops.errors import InvalidDatasetError, InvalidInputError, SpecError, UnsupportedVersionError, UsageError
from tinymlops.observe.drift import DriftPolicy, Verdict
from tinymlops.observe.reference import (
    ReferenceProfile,
    build_reference,
    compare_profiles,
    reference_from_npz,
    summary_features,
)
from tinymlops.observe.sketches import InputProfile


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    data = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(data.target))
    train, ref, field = idx[:700], idx[700:1250], idx[1250:]
    model = LogisticRegression(max_iter=2000).fit(data.data[train] / 16.0, data.target[train])
    x_ref, x_field = data.data[ref].astype(np.float32), data.data[field].astype(np.float32)
    return {
        "x_ref": x_ref,
        "p_ref": model.predict_proba(x_ref / 16.0).astype(np.float32),
        "x_field": x_field,
        "model": model,  # type: ignore[dict-item]
    }


def fleet_profile(x: np.ndarray, model: LogisticRegression, devices: int = 3) -> InputProfile:
    """Each device profiles its share (inputs and the model's probabilities); the server merges."""
    merged = InputProfile()
    for part in np.array_split(x, devices):
        device = InputProfile()
        for batch in np.array_split(part, 7):  # several calls, as a runtime would make them
            device.add(batch)
            device.observe(model.predict_proba(batch / 16.0).astype(np.float32))
        merged.merge(InputProfile.from_window_dict(device.to_window_dict()))  # through the wire format
    return merged


def test_reference_has_the_devices_features_and_histograms(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"], outputs=digits["p_ref"], source="digits:1 eval")
    device = InputProfile()
    device.add(digits["x_field"][:10])
    assert ref.feature_names == [f"element:{i}" for i in range(64)] + [f"projection:{j}" for j in range(8)]
    assert [(f.kind, f.index) for f in ref.inputs.features] == [(k, i) for k, i in device.feature_keys()]
    assert ref.inputs.projection == device.summary().projection
    assert ref.inputs.rows == len(digits["x_ref"])
    assert sum(ref.inputs.classes) == ref.inputs.predictions == len(digits["x_ref"])
    assert sum(ref.inputs.confidence) == len(digits["x_ref"])
    np.testing.assert_array_equal(
        np.asarray(ref.inputs.classes), np.bincount(digits["p_ref"].argmax(axis=1), minlength=10)
    )
    for f, column in zip(ref.inputs.features[:64], digits["x_ref"].T, strict=True):
        assert f.count == column.size
        assert f.mean == pytest.approx(float(column.mean()), abs=1e-4)
        assert f.variance == pytest.approx(float(column.var()), rel=1e-4, abs=1e-6)
    dists = summary_features(ref.inputs)
    assert dists["element:20"].std() == pytest.approx(float(digits["x_ref"][:, 20].std()), rel=1e-4)


def test_reference_round_trips_and_is_parsed_strictly(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"][:300], outputs=digits["p_ref"][:300], k=100)
    doc = ref.to_dict()
    assert ReferenceProfile.from_dict(doc) == ref
    with pytest.raises(SpecError, match="unknown field"):
        ReferenceProfile.from_dict({**doc, "raw": [1, 2]})
    with pytest.raises(UnsupportedVersionError):
        ReferenceProfile.from_dict({**doc, "spec_version": "2.0"})
    with pytest.raises(SpecError, match="'k'"):
        ReferenceProfile.from_dict({**doc, "k": 4})
    # a sketch tampered with in storage is refused before the library reads it
    features = [dict(f) for f in doc["inputs"]["features"]]
    raw = bytearray(base64.b64decode(features[5]["sketch"]))
    struct.pack_into("<I", raw, 24, 3)
    features[5]["sketch"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SpecError):
        ReferenceProfile.from_dict({**doc, "inputs": {**doc["inputs"], "features": features}})


def test_no_drift_between_eval_data_and_the_same_population_in_the_field(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"], outputs=digits["p_ref"])
    live = fleet_profile(digits["x_field"], digits["model"])
    report = compare_profiles(ref, live.summary())
    assert report.drifted_features == []
    assert report.predictions is not None and report.predictions.verdict is Verdict.NO_DRIFT
    assert report.confidence is not None and report.confidence.verdict is Verdict.NO_DRIFT
    assert not report.drifted
    # constant pixels (always 0 in these digits) are compared without error
    constant = [n for n, f in report.features.items() if f.result("ks").statistic == 0.0]
    assert "element:0" in constant


def test_a_shifted_pixel_is_flagged_and_no_other_pixel(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"], outputs=digits["p_ref"])
    for pixel in (19, 36, 43):
        shifted = digits["x_field"].copy()
        shifted[:, pixel] += 0.5 * digits["x_ref"][:, pixel].std()
        report = compare_profiles(ref, fleet_profile(shifted, digits["model"]).summary())
        flagged = [n for n in report.drifted_features if n.startswith("element:")]
        assert flagged == [f"element:{pixel}"], (pixel, report.drifted_features)
        assert report.features[f"element:{pixel}"].result("wasserstein").statistic > 0.3


def test_class_mix_change_is_prediction_drift(digits: dict[str, np.ndarray]) -> None:
    """The field sees mostly zeros and ones: the predicted-class histogram moves."""
    labels = digits["model"].predict(digits["x_field"] / 16.0)
    skewed = digits["x_field"][(labels <= 1) | (np.arange(labels.size) % 4 == 0)]
    ref = build_reference(digits["x_ref"], outputs=digits["p_ref"])
    report = compare_profiles(ref, fleet_profile(skewed, digits["model"]).summary())
    assert report.predictions is not None and report.predictions.verdict is Verdict.DRIFT
    assert report.predictions.result("chi_square").p_value < 1e-6


def test_profiles_of_another_input_are_refused(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"])
    other_seed = InputProfile(seed=7)
    other_seed.add(digits["x_field"])
    with pytest.raises(InvalidInputError, match="projection"):
        compare_profiles(ref, other_seed.summary())


def test_too_little_live_data_is_not_enough_data(digits: dict[str, np.ndarray]) -> None:
    ref = build_reference(digits["x_ref"], outputs=digits["p_ref"])
    live = fleet_profile(digits["x_field"][:60], digits["model"], devices=2)
    report = compare_profiles(ref, live.summary(), DriftPolicy(min_samples=100))
    assert {f.verdict for f in report.features.values()} == {Verdict.NOT_ENOUGH_DATA}
    assert report.predictions is not None and report.predictions.verdict is Verdict.NOT_ENOUGH_DATA


def test_reference_from_a_registered_dataset_file(digits: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=digits["x_ref"], y=np.zeros(len(digits["x_ref"]), np.int64))
    ref = reference_from_npz(buf.getvalue(), source="digits eval", k=200)
    assert ref.source == "digits eval" and ref.inputs.rows == len(digits["x_ref"])
    assert ref.inputs.classes is None  # labels are not predictions
    with pytest.raises(InvalidDatasetError, match="digits eval"):
        reference_from_npz(b"not a zip", source="digits eval")


def test_bad_arguments_are_usage_errors(digits: dict[str, np.ndarray]) -> None:
    with pytest.raises(UsageError, match="outputs for"):
        build_reference(digits["x_ref"], outputs=digits["p_ref"][:10])
    with pytest.raises(UsageError, match="at least one sample"):
        build_reference(np.empty((0, 64)))
    with pytest.raises(UsageError, match="numeric"):
        build_reference(np.array([["a"]]))
