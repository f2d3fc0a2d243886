"""Reference profiles on the server: computed at registration from the model's dataset with the real
model under ONNX Runtime, stored once per base version, read back strictly."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from telemetry_rows import DigitsWorld, digits_world

from tinymlops.errors import InvalidInputError, NotFoundError, SpecError
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.references import ReferenceService, ReferenceSettings, model_outputs, subsample
from tinymlops.observe.schema import ReferenceProfileRow
from tinymlops.observe.sketches import InputProfile
from tinymlops.optimize.pipeline import register_model


@pytest.fixture(scope="module")
def world() -> DigitsWorld:
    return digits_world(0)


def npz(x: np.ndarray, y: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x) if y is None else np.savez(buf, x=x, y=y)
    return buf.getvalue()


def rows(ws: Any) -> int:
    with ws.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(ReferenceProfileRow)))


def test_registration_computes_the_reference_with_the_model_and_the_devices_settings(
    sqlite_workspace: Any, world: DigitsWorld
) -> None:
    result = register_model(
        sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False
    )
    assert result.reference == {"status": "built", "dataset": "eval-v1", "rows": 600, "outputs": "scores"}
    assert result.to_dict()["reference"] == result.reference
    record = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry).require("digits")
    assert (record.model, record.version, record.dataset) == ("digits", 1, "eval-v1")
    policy = TelemetryPolicy()
    assert record.settings["k"] == policy.sketch_k and record.settings["projection_seed"] == policy.projection_seed
    assert record.settings["projection_dims"] == policy.projection_dims
    assert record.settings["max_features"] == policy.max_features
    inputs = record.profile.inputs
    assert record.profile.feature_names == [f"element:{i}" for i in range(64)] + [f"projection:{j}" for j in range(8)]
    # the classes are the real model's predictions on the eval set (not its labels)
    session = ort.InferenceSession(world.onnx, providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"x": world.x_eval})[0].argmax(axis=1)
    assert list(inputs.classes) == list(np.bincount(predicted, minlength=10))
    assert list(inputs.classes) != list(np.bincount(world.y_eval, minlength=10))
    assert sum(inputs.confidence) == 600
    # the same features a device's profile has
    device = InputProfile(max_features=policy.max_features, projection_dims=policy.projection_dims)
    device.add(world.x_eval[:5])
    assert inputs.projection == device.summary().projection
    doc = record.to_dict()
    assert doc["features"][0] == {
        "name": "element:0",
        "kind": "element",
        "derived": False,
        "count": 600,
        "mean": pytest.approx(float(world.x_eval[:, 0].mean()), abs=1e-6),
        "variance": pytest.approx(float(world.x_eval[:, 0].var()), abs=1e-6),
        "min": float(world.x_eval[:, 0].min()),
        "max": float(world.x_eval[:, 0].max()),
    }
    assert "profile" not in doc and "profile" in record.to_dict(profile=True)


def test_building_again_is_idempotent_and_another_dataset_replaces_it(
    sqlite_workspace: Any, world: DigitsWorld
) -> None:
    register_model(sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    service = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry)
    first = service.require("digits")
    again = service.build("digits")
    assert again.created_at == first.created_at and rows(sqlite_workspace) == 1
    forced = service.build("digits", force=True)
    assert forced.created_at > first.created_at and rows(sqlite_workspace) == 1
    sqlite_workspace.registry.add_dataset("digits", "field", npz(world.x_field), role="eval")
    other = service.build("digits", dataset="field")
    assert (other.dataset, other.rows) == ("field", 597) and rows(sqlite_workspace) == 1
    assert service.require("digits").dataset == "field"
    with pytest.raises(NotFoundError, match=r"no dataset named 'nope' \(datasets: eval-v1, field\)"):
        service.build("digits", dataset="nope")
    with pytest.raises(NotFoundError, match="has no version 4"):
        service.build("digits", 4)


def test_a_model_without_dataset_has_no_reference_and_is_told_how_to_get_one(
    sqlite_workspace: Any, world: DigitsWorld
) -> None:
    result = register_model(sqlite_workspace, "bare", world.onnx, derive=False, run_evaluation=False)
    assert result.reference is None and rows(sqlite_workspace) == 0
    service = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry)
    assert service.get("bare") is None
    with pytest.raises(NotFoundError, match=r"tinymlops dataset add bare EVAL\.npz"):
        service.require("bare")
    with pytest.raises(NotFoundError, match="no dataset to compute a reference profile from"):
        service.build("bare")
    sqlite_workspace.registry.add_dataset("bare", "calib", npz(world.x_eval[:200]), role="calibration")
    with pytest.raises(NotFoundError, match=r"drift reference build bare --dataset calib"):
        service.require("bare")
    assert service.build("bare").dataset == "calib"  # failing an eval set, the calibration set
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        service.get("ghost")


def test_a_new_version_gets_a_reference_from_the_models_dataset(sqlite_workspace: Any, world: DigitsWorld) -> None:
    register_model(sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    v2 = register_model(sqlite_workspace, "digits", digits_world(1).onnx, derive=False, run_evaluation=False)
    assert v2.reference is not None and v2.reference["dataset"] == "eval-v1"
    service = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry)
    assert rows(sqlite_workspace) == 2  # one reference per base version
    assert service.require("digits", 1).profile.inputs.classes != service.require("digits", 2).profile.inputs.classes


def test_large_datasets_are_capped_to_a_fixed_subset(sqlite_workspace: Any, world: DigitsWorld) -> None:
    register_model(sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    service = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry, max_rows=100)
    record = service.build("digits", force=True)
    assert record.rows == 100 and record.settings["rows_profiled"] == 100 and record.settings["dataset_rows"] == 600
    assert record.settings["max_rows"] == 100
    # other settings than the stored ones: recomputed, not kept
    assert ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry).build("digits").rows == 600


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 3))
def test_subsample_is_a_fixed_ordered_subset(n: int, limit: int, seed: int) -> None:
    x = np.arange(n)
    out = subsample(x, limit, seed)
    assert len(out) == min(n, limit) and np.all(np.diff(out) > 0) and set(out) <= set(x)
    np.testing.assert_array_equal(out, subsample(x, limit, seed))


def test_logits_and_labels_outputs_are_read_like_the_devices_read_them(world: DigitsWorld) -> None:
    """A model ending in logits gives the same class and confidence histograms as its softmax twin
    (``outputs="auto"`` softmaxes them); a model ending in ArgMax gives classes and no confidence."""
    from onnx import helper, load_model_from_string

    probabilities = load_model_from_string(world.onnx)
    logits = load_model_from_string(world.onnx)
    del logits.graph.node[-1]
    logits.graph.output[0].name = "logits"
    labels = load_model_from_string(world.onnx)
    labels.graph.node.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    del labels.graph.output[0]
    labels.graph.output.append(helper.make_tensor_value_info("label", 7, ["batch"]))
    x = world.x_eval
    p = model_outputs(probabilities.SerializeToString(), "onnx", x)
    z = model_outputs(logits.SerializeToString(), "onnx", x)
    y = model_outputs(labels.SerializeToString(), "onnx", x)
    assert p is not None and z is not None and y is not None
    assert p.shape == z.shape == (600, 10) and y.shape == (600,) and y.dtype == np.int64
    from tinymlops.observe.reference import build_reference

    ref_p, ref_z, ref_y = (build_reference(x, outputs=o) for o in (p, z, y))
    assert ref_p.inputs.classes == ref_z.inputs.classes == ref_y.inputs.classes
    assert ref_p.inputs.confidence == ref_z.inputs.confidence
    assert ref_y.inputs.confidence is None


def test_a_regression_output_gives_a_reference_without_histograms(sqlite_workspace: Any, world: DigitsWorld) -> None:
    from tiny_models import tiny_onnx

    register_model(
        sqlite_workspace, "tiny", tiny_onnx(), dataset=npz(world.x_eval[:, :4]), derive=False, run_evaluation=False
    )
    record = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry).require("tiny")
    # two float outputs per row are class scores as far as a profile can tell: documented, not guessed
    assert record.settings["outputs"] == "scores" and record.profile.inputs.classes is not None
    one = np.ones((3, 1), np.float32)
    assert model_outputs(_single_output_model(), "onnx", one) is None


def _single_output_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "regression",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_a_tampered_stored_reference_is_refused_not_read(sqlite_workspace: Any, world: DigitsWorld) -> None:
    register_model(sqlite_workspace, "digits", world.onnx, dataset=world.eval_npz(), derive=False, run_evaluation=False)
    service = ReferenceService(sqlite_workspace.engine, sqlite_workspace.registry)
    doc = service.require("digits").profile.to_dict()
    doc["inputs"]["features"][3]["sketch"] = "AAAA"
    with sqlite_workspace.engine.begin() as conn:
        conn.execute(update(ReferenceProfileRow).values(profile=doc))
    with pytest.raises(SpecError):
        service.get("digits")


def test_settings_follow_the_telemetry_policy() -> None:
    s = ReferenceSettings.from_policy(TelemetryPolicy(projection_dims=4, projection_seed=9, sketch_k=100))
    assert s.to_dict() == {"k": 100, "max_features": 64, "projection_dims": 4, "projection_seed": 9}


def test_a_reference_that_cannot_be_built_never_fails_registration_nor_adding_a_dataset(
    sqlite_workspace: Any, world: DigitsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinymlops.cli.dataset import _reference_for_new_dataset
    from tinymlops.registry.blobs import sha256_hex

    ws = sqlite_workspace
    register_model(ws, "bare", world.onnx, derive=False, run_evaluation=False)
    service = ReferenceService(ws.engine, ws.registry)
    assert service.try_build("bare") is None  # no dataset: nothing to build from, nothing failed
    calib, holdout = npz(world.x_eval[:200]), npz(world.x_eval[200:400])
    ws.registry.add_dataset("bare", "calib", calib, role="calibration")
    ws.registry.add_dataset("bare", "holdout", holdout, role="eval")
    attempt = service.try_build("bare", given=[sha256_hex(b"not registered"), sha256_hex(calib)])
    assert attempt is not None and attempt.error is None and attempt.record is not None
    assert (attempt.model, attempt.version, attempt.record.dataset) == ("bare", 1, "calib")  # the given data

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise InvalidInputError("the model does not run here")

    monkeypatch.setattr(ReferenceService, "compute", refuse)
    attempt = service.try_build("bare", dataset="holdout")
    assert attempt is not None and attempt.record is None and attempt.error == "the model does not run here"
    assert service.require("bare").dataset == "calib"  # the stored reference is untouched
    other = digits_world(1).onnx
    v2 = register_model(ws, "bare", other, dataset=holdout, derive=False, run_evaluation=False)
    assert v2.reference == {"status": "failed", "error": "the model does not run here"}
    register_model(ws, "other", other, derive=False, run_evaluation=False)
    ws.registry.add_dataset("other", "eval", holdout, role="eval")
    assert _reference_for_new_dataset(ws, "other", "eval") == {
        "version": 1,
        "status": "failed: the model does not run here",
    }
    with pytest.raises(NotFoundError):  # an unknown version is the caller's mistake: raised
        service.try_build("bare", 9)


def test_two_concurrent_first_stores_leave_one_row_the_loser_retrying_as_an_update(
    workspace: Any, world: DigitsWorld
) -> None:
    """Both writers see no row (the barrier holds each after its SELECT … FOR UPDATE), both insert:
    the unique (model, version) constraint refuses one, which retries and updates the winner's row."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    register_model(workspace, "digits", world.onnx, derive=False, run_evaluation=False)
    record = workspace.registry.add_dataset("digits", "eval", world.eval_npz(), role="eval")
    service = ReferenceService(workspace.engine, workspace.registry)
    base = workspace.registry.resolve("digits")
    profile, extra = service.compute(base, workspace.registry.load_dataset(record), source="test")
    assert service.get("digits") is None
    barrier, local, selects = threading.Barrier(2, timeout=30), threading.local(), []
    sessions = service._sessions

    class RacingSession:
        def __init__(self) -> None:
            self._session = sessions()

        def __enter__(self) -> Any:
            real = self._session.__enter__()
            scalar = real.scalar

            def first_select_then_wait(*args: Any, **kwargs: Any) -> Any:
                row = scalar(*args, **kwargs)
                selects.append((local.who, row is None))
                if not getattr(local, "waited", False):  # the first attempt: wait for the other writer
                    local.waited = True
                    barrier.wait()
                return row

            real.scalar = first_select_then_wait
            return real

        def __exit__(self, *exc: Any) -> Any:
            return self._session.__exit__(*exc)

    def store(who: str) -> Any:
        local.who = who
        return service._store(base, record, {**extra, "who": who}, profile)

    service._sessions = RacingSession  # type: ignore[assignment]
    with ThreadPoolExecutor(2) as pool:
        stored = list(pool.map(store, "AB"))
    assert [r.settings["who"] for r in stored] == ["A", "B"]  # neither writer failed
    assert sorted(saw_none for _, saw_none in selects) == [False, True, True]  # both saw no row, then one retry
    (loser,) = [who for who, saw_none in selects if not saw_none]  # ... found the winner's row
    assert rows(workspace) == 1
    service._sessions = sessions
    kept = service.require("digits")
    assert kept.settings["who"] == loser and kept.profile.to_dict() == profile.to_dict()  # updated by the loser
