"""Cascades on real digits models: a small model first, the CNN only for low-confidence inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.edge.backends import open_backend
from tinymlops.errors import PipelineError
from tinymlops.pipeline import build_pipeline, validate_pipeline
from tinymlops.pipeline.ops import softmax
from tinymlops.spec import PipelineSpec, TensorSpec

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def small_onnx(digits_model) -> bytes:
    """A logistic regression on the 64 pixels (torch: flatten → linear), same input as the CNN."""
    import torch
    from torch import nn

    from tinymlops.registry.converters import onnx_from_torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.from_numpy(digits_model.x_train)
    y = torch.from_numpy(digits_model.y_train)
    with torch.inference_mode(False):
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return onnx_from_torch(model, digits_model.x_test[:1])


@pytest.fixture(scope="module")
def models(digits_model, small_onnx):
    return {"main": open_backend(small_onnx), "big": open_backend(digits_model.onnx)}


def cascade_spec(threshold: float = THRESHOLD, confidence: str = "max_softmax", argmax: bool = True) -> PipelineSpec:
    post = [{"op": "cascade", "params": {"model": "big", "threshold": threshold, "confidence": confidence}}]
    if argmax:
        post.append({"op": "argmax", "name": "label"})
    return PipelineSpec.from_dict({"spec_version": "1.0", "post": post})


def test_second_model_is_called_only_for_low_confidence_inputs(models, digits_model) -> None:
    x, y = digits_model.x_test, digits_model.y_test
    small_logits = models["main"].run(x)[0]
    big_logits = models["big"].run(x)[0]
    small_conf = softmax(small_logits, -1).max(axis=1)
    expected_escalations = int((small_conf < THRESHOLD).sum())

    pipe = build_pipeline(cascade_spec(), models)
    calls, predictions = 0, []
    for i in range(len(x)):
        result = pipe.run(x[i : i + 1])
        escalated = result.models_called == ("main", "big")
        assert escalated or result.models_called == ("main",)
        assert bool(result.outputs["cascade.escalated"][0]) == escalated == (small_conf[i] < THRESHOLD)
        calls += escalated
        predictions.append(int(result.value[0]))
    predictions = np.array(predictions)

    assert calls == expected_escalations
    assert 0 < calls < len(x)  # the threshold splits the test set
    small_acc = float((small_logits.argmax(1) == y).mean())
    big_acc = float((big_logits.argmax(1) == y).mean())
    cascade_acc = float((predictions == y).mean())
    print(
        f"\ncascade on digits: escalated {calls}/{len(x)} = {calls / len(x):.1%} of inputs; "
        f"accuracy small {small_acc:.3f}, cascade {cascade_acc:.3f}, big alone {big_acc:.3f}"
    )
    assert cascade_acc >= small_acc
    # the cascade's answer is the small model's where confident, the CNN's elsewhere
    low = small_conf < THRESHOLD
    np.testing.assert_array_equal(predictions, np.where(low, big_logits.argmax(1), small_logits.argmax(1)))


def test_a_batch_escalates_only_its_low_confidence_rows(models, digits_model) -> None:
    x = digits_model.x_test
    small_logits = models["main"].run(x)[0]
    big_logits = models["big"].run(x)[0]
    low = softmax(small_logits, -1).max(axis=1) < THRESHOLD
    result = build_pipeline(cascade_spec(argmax=False), models).run(x)
    assert result.models_called == ("main", "big")
    np.testing.assert_array_equal(result.outputs["cascade.escalated"], low)
    np.testing.assert_allclose(result.value[low], big_logits[low], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.value[~low], small_logits[~low])


def test_thresholds_at_the_extremes(models, digits_model) -> None:
    x = digits_model.x_test[:20]
    never = build_pipeline(cascade_spec(threshold=0.0), models).run(x)
    assert never.models_called == ("main",) and not never.outputs["cascade.escalated"].any()
    always = build_pipeline(cascade_spec(threshold=1.0), models).run(x)
    assert always.models_called == ("main", "big") and always.outputs["cascade.escalated"].all()
    np.testing.assert_array_equal(always.value, models["big"].run(x)[0].argmax(1))


def test_max_confidence_uses_scores_as_they_are(models, digits_model) -> None:
    x = digits_model.x_test
    scores = models["main"].run(x)[0]  # logits: "max" compares the largest logit itself
    threshold = 1.0
    result = build_pipeline(cascade_spec(threshold=threshold, confidence="max"), models).run(x)
    np.testing.assert_array_equal(result.outputs["cascade.escalated"], scores.max(axis=1) < threshold)


def test_a_chain_of_cascades(models, digits_model, small_onnx) -> None:
    chained = {**models, "mid": open_backend(small_onnx)}
    spec = PipelineSpec.from_dict(
        {
            "spec_version": "1.0",
            "post": [
                {"op": "cascade", "name": "first", "params": {"model": "mid", "threshold": 0.5}},
                {"op": "cascade", "name": "second", "params": {"model": "big", "threshold": 1.0}},
            ],
        }
    )
    result = build_pipeline(spec, chained).run(digits_model.x_test[:50])
    assert result.models_called[0] == "main" and result.models_called[-1] == "big"
    assert set(result.outputs) >= {"output", "first", "first.escalated", "second", "second.escalated"}


# --- build-time refusals --------------------------------------------------------------------------
def test_cascade_validation(models, digits_model) -> None:
    from sklearn.linear_model import LogisticRegression

    from tinymlops.registry.converters import onnx_from_sklearn

    flat = digits_model.x_train.reshape(len(digits_model.x_train), 64)
    sk = LogisticRegression(max_iter=200).fit(flat, digits_model.y_train)
    flat_model = open_backend(onnx_from_sklearn(sk, 64))
    with pytest.raises(PipelineError, match=r"model 'flat' takes float32\[batch, 64\] but the main model takes"):
        validate_pipeline(
            PipelineSpec.from_dict(
                {"spec_version": "1.0", "post": [{"op": "cascade", "params": {"model": "flat", "threshold": 0.5}}]}
            ),
            {**models, "flat": flat_model},
        )

    five = ((TensorSpec("input", ("batch", 1, 8, 8), "float32"),), (TensorSpec("output", ("batch", 5), "float32"),))
    cases = [
        ({"model": "huge", "threshold": 0.5}, "names model 'huge', which the bundle does not carry"),
        ({"model": "main", "threshold": 0.5}, "names the main model"),
        ({"model": "big", "threshold": 1.5}, "param 'threshold' must be between 0 and 1"),
        ({"model": "big"}, "param 'threshold' is required"),
        ({"model": "big", "threshold": 0.5, "confidence": "entropy"}, "param 'confidence' must be one of"),
        ({"model": "five", "threshold": 0.5}, "their scores must have the same shape"),
    ]
    signatures = {name: (b.inputs, b.outputs) for name, b in models.items()} | {"five": five}
    for params, match in cases:
        doc = {"spec_version": "1.0", "post": [{"op": "cascade", "params": params}]}
        with pytest.raises(PipelineError, match=match):
            validate_pipeline(PipelineSpec.from_dict(doc), signatures)
    after_softmax = {
        "spec_version": "1.0",
        "post": [{"op": "softmax"}, {"op": "cascade", "params": {"model": "big", "threshold": 0.5}}],
    }
    with pytest.raises(PipelineError, match="must come first in post-processing"):
        validate_pipeline(PipelineSpec.from_dict(after_softmax), signatures)
    in_pre = {"spec_version": "1.0", "pre": [{"op": "cascade", "params": {"model": "big", "threshold": 0.5}}]}
    with pytest.raises(PipelineError, match="can only run in post-processing"):
        validate_pipeline(PipelineSpec.from_dict(in_pre), signatures)
