"""Releases carry a telemetry policy: every bundle a release builds has a ``[policies.telemetry]``
table in its signed manifest — on by default with the reference profile's sketch settings and the
model's class count, or as the release asked (off, performance only, local DP) — and a device opening
the bundle reads it from the verified manifest and records with it. Bad values are refused before
anything is built or published, naming the key (service: SpecError; API: 400/422 JSON; CLI: non-zero
exit)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

import delivery_world
from cli_process import run_cli
from delivery_world import World, X
from tinymlops.bundle.reader import open_bundle
from tinymlops.cli.release import _telemetry_options
from tinymlops.edge.backends import open_backend
from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.errors import SpecError, UsageError
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.recorder import TelemetryRecorder
from tinymlops.release.service import BUNDLE_SUFFIX, RELEASES_DIR, ReleaseService
from tinymlops.release.telemetry import common_table, score_output, telemetry_table
from tinymlops.spec.model_info import TensorSpec

delivery = delivery_world.delivery  # the live world (fixture)

#: what tiny:N (a MatMul [batch, 4] x [4, 2], output "y") gets by default
DEFAULT_TABLE = {
    "enabled": True,
    "inputs": True,
    "max_features": 64,
    "projection_dims": 8,
    "projection_seed": 0,
    "sketch_k": 200,
    "output": "y",
    "classes": 2,
}


def _count(world: World, table: str) -> int:
    with world.ws.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _bundle(world: World, release_id: str, device_id: str) -> Path:
    return Path(world.ws.root) / RELEASES_DIR / release_id / f"{device_id}{BUNDLE_SUFFIX}"


def test_a_device_reads_the_default_policy_from_its_verified_manifest_and_records_with_it(
    delivery: World, tmp_path: Path
) -> None:
    conn = delivery.connect(tmp_path / "a")
    record = ReleaseService(delivery.ws).create_release("tiny:2")
    assert record.telemetry == DEFAULT_TABLE
    # the reference profile's settings are the device defaults: the table must say the same
    defaults = TelemetryPolicy()
    assert (DEFAULT_TABLE["sketch_k"], DEFAULT_TABLE["max_features"]) == (defaults.sketch_k, defaults.max_features)
    assert (DEFAULT_TABLE["projection_dims"], DEFAULT_TABLE["projection_seed"]) == (
        defaults.projection_dims,
        defaults.projection_seed,
    )
    assignment = record.assignment(conn.device_id)
    assert assignment.telemetry == DEFAULT_TABLE

    # as the device does: the bundle TUF serves (same bytes), opened with the device's key and trust
    data = _bundle(delivery, record.id, conn.device_id).read_bytes()
    assert hashlib.sha256(data).hexdigest() == assignment.bundle_sha256
    opened = open_bundle(data, key=conn.keys, trusted_release_keys=conn.trusted_keys)
    table = opened.manifest.policies["telemetry"]
    assert dict(table) == DEFAULT_TABLE
    policy = TelemetryPolicy.from_table(table)
    assert (policy.inputs, policy.classes, policy.output, policy.privacy.active) == (True, 2, "y", False)

    # and the recorder that policy makes profiles the model's real outputs into a 2-class histogram
    backend = open_backend(opened.models["main"])
    recorder = TelemetryRecorder(opened.manifest.bundle_id, model=opened.manifest.model.ref, policy=policy)

    def endpoint(request: Request) -> Response:
        names = [t.name for t in backend.outputs]
        return Response(outputs=dict(zip(names, backend.run(request.inputs), strict=True)))

    predict = compose([recorder], endpoint)
    for row in X:
        predict(Request(row[None, :]))
    window = recorder.take_window()
    assert window is not None and window.inputs is not None and recorder.profile_errors == 0
    want = np.bincount(delivery.expected("tiny:2").argmax(axis=1), minlength=2)
    assert window.inputs.classes == tuple(int(c) for c in want)
    assert [(f.kind, f.index) for f in window.inputs.features] == [("element", i) for i in range(4)] + [
        ("projection", j) for j in range(8)
    ]


def test_off_performance_only_and_privacy_are_what_the_bundles_carry(delivery: World, tmp_path: Path) -> None:
    conn = delivery.connect(tmp_path / "a")
    service = ReleaseService(delivery.ws)
    privacy = {"classes_epsilon": 1.0, "confidence_epsilon": 2, "window_epsilon": 3.5, "day_epsilon": 10}
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"enabled": False}, {"enabled": False}),
        ({"inputs": False}, {"enabled": True, "inputs": False}),
        (
            {"privacy": privacy},
            DEFAULT_TABLE | {"privacy": {k: float(v) for k, v in privacy.items()}},
        ),
    ]
    for options, want in cases:
        record = service.create_release("tiny:1", telemetry=options)
        assert record.telemetry == want, options
        opened = open_bundle(
            _bundle(delivery, record.id, conn.device_id), key=conn.keys, trusted_release_keys=conn.trusted_keys
        )
        assert dict(opened.manifest.policies["telemetry"]) == want
    device_policy = TelemetryPolicy.from_table(want)
    assert device_policy.privacy == PrivacyPolicy(1.0, 2.0, 3.5, 10.0)
    # the record read back (list and show) carries the same
    listed = {r.id: r.telemetry for r in service.list_releases()}
    assert listed[record.id] == want and service.get_release(record.id).to_dict()["telemetry"] == want


BAD_OPTIONS: list[tuple[Any, str]] = [
    ({"privacy": {"classes_epsilon": -1.0}}, "privacy.classes_epsilon"),
    ({"privacy": {"confidence_epsilon": float("nan")}}, "privacy.confidence_epsilon"),
    ({"privacy": {"window_epsilon": 0}}, "privacy.window_epsilon"),
    ({"privacy": {"day_epsilon": "lots"}}, "privacy.day_epsilon"),
    ({"privacy": {"epsilon": 1.0}}, "epsilon"),
    ({"privacy": [1.0]}, "'privacy'"),
    ({"sketch_k": 50}, "sketch_k"),
    ({"enabled": "yes"}, "'enabled'"),
    ({"inputs": 1}, "'inputs'"),
    ("on", "must be an object"),
]


def test_a_bad_value_is_refused_naming_it_before_anything_is_built(delivery: World, tmp_path: Path) -> None:
    delivery.connect(tmp_path / "a")
    service = ReleaseService(delivery.ws)
    for options, names in BAD_OPTIONS:
        with pytest.raises(SpecError, match=names.replace(".", r"\.")):
            service.create_release("tiny:1", telemetry=options)
    assert _count(delivery, "releases") == 0 and _count(delivery, "release_assignments") == 0
    releases = Path(delivery.ws.root) / RELEASES_DIR
    assert not releases.exists() or not any(releases.iterdir())


def test_the_api_takes_the_policy_and_refuses_bad_values_with_json(delivery: World, tmp_path: Path) -> None:
    delivery.connect(tmp_path / "a")
    doc = delivery.release("tiny:1", telemetry={"inputs": True, "privacy": {"classes_epsilon": 0.5}})
    assert doc["telemetry"] == DEFAULT_TABLE | {"privacy": {"classes_epsilon": 0.5}}
    assert doc["assignments"][0]["selection"]["telemetry"] == doc["telemetry"]
    assert delivery.show(doc["id"])["telemetry"] == doc["telemetry"]
    listed = delivery.plane.http(delivery.read_key).get("/v1/releases").json()
    assert listed[0]["telemetry"] == doc["telemetry"]
    off = delivery.release("tiny:1", telemetry={"enabled": False})
    assert off["telemetry"] == {"enabled": False}
    default = delivery.release("tiny:1", telemetry=None)
    assert default["telemetry"] == DEFAULT_TABLE

    http = delivery.plane.http(delivery.release_key)
    before = _count(delivery, "releases")
    bad = http.post("/v1/releases", json={"model": "tiny:1", "telemetry": {"privacy": {"classes_epsilon": 1000}}})
    assert bad.status_code == 400, bad.text
    assert "privacy.classes_epsilon" in bad.json()["error"]["message"]
    unknown = http.post("/v1/releases", json={"model": "tiny:1", "telemetry": {"sketch_k": 10}})
    assert unknown.status_code == 422 and "telemetry.sketch_k" in unknown.json()["error"]["message"]
    typed = http.post("/v1/releases", json={"model": "tiny:1", "telemetry": {"enabled": "no"}})
    assert typed.status_code == 422 and "telemetry.enabled" in typed.json()["error"]["message"]
    assert _count(delivery, "releases") == before


@pytest.mark.slow
def test_the_cli_options(delivery: World, tmp_path: Path) -> None:
    delivery.connect(tmp_path / "a")
    ws = Path(delivery.ws.root)
    created = json.loads(
        run_cli(
            ws, "release", "create", "tiny:1", "--no-telemetry-inputs", "--privacy", "window_epsilon=2", "--json"
        ).stdout
    )
    assert created["telemetry"] == {"enabled": True, "inputs": False, "privacy": {"window_epsilon": 2.0}}
    shown = run_cli(ws, "release", "show", created["id"]).stdout
    assert "telemetry: on; performance only; privacy window_epsilon=2" in shown
    refused = run_cli(ws, "release", "create", "tiny:1", "--privacy", "classes_epsilon=-1", code=None)
    assert refused.returncode != 0 and "privacy.classes_epsilon" in refused.stderr, refused.stderr
    assert _count(delivery, "releases") == 1


def test_the_cli_options_as_release_options() -> None:
    assert _telemetry_options(True, None, None) is None  # the default policy
    assert _telemetry_options(False, None, None) == {"enabled": False}
    assert _telemetry_options(True, False, ["classes_epsilon=1", " day_epsilon = 12 "]) == {
        "inputs": False,
        "privacy": {"classes_epsilon": 1.0, "day_epsilon": 12.0},
    }
    for args, message in [
        ((True, None, ["classes_epsilon"]), "is not KEY=VALUE"),
        ((True, None, ["=1"]), "is not KEY=VALUE"),
        ((True, None, ["classes_epsilon=lots"]), "not a number"),
        ((True, None, ["classes_epsilon=1", "classes_epsilon=2"]), "given twice"),
        ((False, None, ["classes_epsilon=1"]), "--no-telemetry turns telemetry off"),
        ((False, True, None), "--no-telemetry turns telemetry off"),
    ]:
        with pytest.raises(UsageError, match=message):
            _telemetry_options(*args)  # type: ignore[arg-type]
    # a key the device does not know is named by the release's check
    with pytest.raises(SpecError, match="budget"):
        telemetry_table(_telemetry_options(True, None, ["budget=1"]))


def _spec(name: str, shape: list[Any], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype)


def test_classes_come_from_the_output_evaluation_and_the_reference_read() -> None:
    assert score_output([_spec("logits", ["N", 10])]) == _spec("logits", ["N", 10])
    # scikit-learn: the label first, the probabilities second — the scores are read, not the label
    label, probabilities = _spec("label", ["N"], "int64"), _spec("probabilities", ["N", 3])
    assert telemetry_table(None, [label, probabilities])["output"] == "probabilities"
    assert telemetry_table(None, [label, probabilities])["classes"] == 3
    for outputs in (
        [_spec("y", ["N", 1])],  # a regression
        [label, _spec("zipmap", ["N"], "seq(map(int64,tensor(float)))")],
        [_spec("wide", ["N", 5000])],  # more classes than a window carries
        [_spec("image", ["N", 3, 8, 8])],
        [],
    ):
        table = telemetry_table(None, outputs)
        assert "classes" not in table and "output" not in table, outputs
        TelemetryPolicy.from_table(table)
    assert telemetry_table({"inputs": False}, [probabilities]) == {"enabled": True, "inputs": False}


def test_what_a_release_records_when_its_variants_differ() -> None:
    a = DEFAULT_TABLE
    b = DEFAULT_TABLE | {"classes": 3, "output": "scores"}
    assert common_table([a, a]) == a
    assert common_table([a, b]) == {k: v for k, v in a.items() if k not in ("classes", "output")}
    assert common_table([]) is None
