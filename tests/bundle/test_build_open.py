"""Building bundles from registered variants and opening them as a device would."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlperf_models import mlperf
from tinymlops.bundle import inspect_bundle, open_bundle, run_check, verify_bundle
from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.container import unpack
from tinymlops.bundle.workspace_keys import fleet_key, release_key, release_key_path, release_public_key
from tinymlops.crypto.keys import DeviceKeys, key_id, public_bytes
from tinymlops.edge.backends import open_backend
from tinymlops.errors import IncompatibleError, KeyMismatchError, UsageError
from tinymlops.optimize.derivation import derive_variants
from tinymlops.workspace.config import ChainConfig


def tiny_onnx() -> bytes:
    """A 4 -> 3 affine model (MatMul + Add): a few hundred bytes."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array((np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10, "W")
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.fixture
def ws(sqlite_workspace, digits_model):
    """A workspace with digits:1 (+ its eval set) and the derived variant digits:1/fp16."""
    w = sqlite_workspace
    base = w.registry.register("digits", digits_model.onnx)
    w.registry.add_dataset("digits", "eval-v1", digits_model.npz("test"))
    outcomes = derive_variants(w.registry, w.config, base, chains=[ChainConfig(("fp16",))])
    assert [o.status for o in outcomes] == ["succeeded"]
    return w


@pytest.fixture
def device() -> DeviceKeys:
    return DeviceKeys.generate()


def test_variant_bundle_opens_with_the_device_key_and_matches_the_registry(ws, device, tmp_path, digits_model) -> None:
    out = tmp_path / "digits-fp16.tmlb"
    result = build_bundle(ws, "digits:1/fp16", target="rpi-4", device_public_key=device.wrapping_public, out=out)
    assert out.is_file() and result.size == out.stat().st_size
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.release_key_id == key_id(release_key(ws))

    opened = open_bundle(out, key=device, trusted_release_keys=[release_public_key(ws)])
    record = ws.registry.resolve("digits:1/fp16")
    plaintext = ws.registry.read_bytes(record)
    assert opened.models == {"main": plaintext} and opened.wasm_modules == {}
    assert opened.release_key_id == result.release_key_id
    m = opened.manifest
    assert m.raw == unpack(out.read_bytes())["manifest.json"]
    assert (m.model.ref, m.model.variant, m.model.format, m.model.backend) == (
        "digits:1/fp16",
        "fp16",
        "onnx",
        "onnxruntime",
    )
    assert m.model.sha256 == record.sha256 and m.target == "rpi-4"
    assert [s.ref for s in m.lineage] == ["digits:1", "digits:1/fp16"]
    assert m.lineage[0].recipe is None and m.lineage[1].recipe["recipe"] == "fp16"
    assert m.key_wrap.mode == "device" and m.key_wrap.recipient_key_id == device.wrapping_key_id
    assert set(m.members) == {"model.enc", "check.bin"} and m.members["model.enc"].encrypted
    assert m.members["check.bin"].role == "check" and not m.members["check.bin"].encrypted
    assert m.policies == {n: {"enabled": False} for n in ("metering", "telemetry", "guard", "proof")}
    assert m.pipeline is None

    # the plaintext model is nowhere in the file (not even a 32-byte window of it)
    blob = out.read_bytes()
    for start in range(0, len(plaintext) - 32, 997):
        assert plaintext[start : start + 32] not in blob

    # the check vector: the eval set's first rows, and the outputs the variant gives in ONNX Runtime
    assert m.check is not None
    x = np.frombuffer(m.check.inputs[0].data, dtype="<f4").reshape(m.check.inputs[0].shape)
    np.testing.assert_array_equal(x, digits_model.x_test[:2])
    direct = open_backend(plaintext).run(x)[0]
    expected = np.frombuffer(m.check.outputs[0].data, dtype="<f4").reshape(m.check.outputs[0].shape)
    np.testing.assert_array_equal(direct, expected)
    report = run_check(m, open_backend(opened.models["main"]))
    assert report.passed and report.max_abs_error == 0.0
    # its bytes are the plain member check.bin (inputs then outputs), not base64 in the manifest
    check_bytes = unpack(blob)["check.bin"]
    assert check_bytes == x.astype("<f4").tobytes() + expected.tobytes() == m.check.payload()
    assert m.members["check.bin"].sha256 == hashlib.sha256(check_bytes).hexdigest()
    assert len(m.raw) < 4096 and b'"data"' not in m.raw


def test_the_check_vector_is_bound_only_from_a_verified_bundle(ws, device, tmp_path) -> None:
    from tinymlops.spec.manifest import BundleManifest

    out = tmp_path / "b.tmlb"
    build_bundle(ws, "digits:1", target="rpi-4", device_public_key=device.wrapping_public, out=out)
    members = unpack(out.read_bytes())
    alone = BundleManifest.from_bytes(members["manifest.json"])
    assert alone.check is not None and not alone.check.loaded
    backend = open_backend(ws.registry.read_bytes(ws.registry.resolve("digits:1")))
    with pytest.raises(UsageError, match=r"check vector's data \(member 'check\.bin'\) is not loaded"):
        run_check(alone, backend)
    verified = verify_bundle(out, trusted_release_keys=[release_public_key(ws)])
    assert verified.manifest.check is not None and verified.manifest.check.loaded
    assert verified.manifest == alone and run_check(verified.manifest, backend).passed


def test_fleet_bundle_opens_with_the_fleet_key_only(ws, device, tmp_path) -> None:
    out = tmp_path / "fleet.tmlb"
    build_bundle(ws, "digits:1", target="x86-edge-server", fleet=True, out=out)
    trusted = [release_public_key(ws)]
    opened = open_bundle(out, key=fleet_key(ws), trusted_release_keys=trusted)
    assert opened.manifest.key_wrap.mode == "fleet"
    assert opened.manifest.key_wrap.recipient_key_id == key_id(fleet_key(ws))
    with pytest.raises(KeyMismatchError, match="not for this device/fleet key"):
        open_bundle(out, key=device, trusted_release_keys=trusted)


def test_a_bundle_for_a_backend_the_target_lacks_is_refused_and_nothing_written(ws, device, tmp_path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "mcu.tmlb"
    with pytest.raises(IncompatibleError, match=r"needs onnxruntime.*mcu-cortex-m7 has only litert") as info:
        build_bundle(ws, "digits:1", target="mcu-cortex-m7", device_public_key=device.wrapping_public, out=out)
    assert info.value.details["issues"][0]["kind"] == "backend"
    assert list(out_dir.iterdir()) == []


def test_compatibility_issues_are_listed_and_nothing_written(ws, device, tmp_path) -> None:
    (ws.root / "targets" / "tiny-ram.toml").write_text(
        'spec_version = "1.0"\nname = "tiny-ram"\ndevice_class = "custom"\nbackends = ["onnxruntime"]\n'
        'dtypes = ["int8"]\nram_mb = 0.001\nstorage_mb = 0.001\nrelative_compute = 1.0\n'
        "active_power_w = 1.0\nidle_power_w = 0.5\n"
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.tmlb"
    with pytest.raises(IncompatibleError) as info:
        build_bundle(ws, "digits:1", target="tiny-ram", device_public_key=device.wrapping_public, out=out)
    kinds = {i["kind"] for i in info.value.details["issues"]}
    assert {"dtype", "memory", "storage"} <= kinds
    assert "memory" in info.value.message and "dtype" in info.value.message
    assert list(out_dir.iterdir()) == []


def test_litert_bundle_for_a_microcontroller(sqlite_workspace, device, tmp_path) -> None:
    ws = sqlite_workspace
    ws.registry.register("kws", mlperf("kws_ref_model.tflite").read_bytes())
    out = tmp_path / "kws.tmlb"
    build_bundle(ws, "kws:1", target="mcu-cortex-m7", device_public_key=device.wrapping_public, out=out)
    opened = open_bundle(out, key=device.wrapping, trusted_release_keys=[release_key(ws)])
    assert opened.manifest.model.backend == "litert" and opened.manifest.model.format == "tflite"
    backend = open_backend(opened.models["main"])
    assert backend.name == "litert"
    assert opened.manifest.check is not None and run_check(opened.manifest, backend).passed


def test_cascade_models_and_wasm_modules_travel_encrypted(ws, device, tmp_path) -> None:
    ws.registry.register("tiny", tiny_onnx())
    wasm = b"\x00asm\x01\x00\x00\x00"
    out = tmp_path / "cascade.tmlb"
    build_bundle(
        ws,
        "digits:1",
        target="x86-edge-server",
        device_public_key=device.wrapping_public,
        extra_models={"small": "tiny:1"},
        wasm_modules={"norm": wasm},
        policies={"telemetry": {"enabled": True, "latency_window": 16}},
        out=out,
    )
    opened = open_bundle(out, key=device, trusted_release_keys=[release_public_key(ws)])
    assert opened.models["small"] == tiny_onnx() and set(opened.models) == {"main", "small"}
    assert opened.wasm_modules == {"norm": wasm}
    m = opened.manifest
    assert set(m.members) == {"model.enc", "models/small.enc", "wasm/norm.wasm", "check.bin"}
    assert m.members["wasm/norm.wasm"].role == "wasm"
    assert all(e.encrypted == (e.role != "check") for e in m.members.values())
    assert m.extra_models["small"].ref == "tiny:1" and m.extra_models["small"].member == "models/small.enc"
    assert m.policies["telemetry"] == {"enabled": True, "latency_window": 16}
    assert m.policies["metering"] == {"enabled": False}
    assert wasm not in out.read_bytes()


def test_generated_check_inputs_without_a_dataset(sqlite_workspace, device, tmp_path) -> None:
    ws = sqlite_workspace
    ws.registry.register("tiny", tiny_onnx())
    out = tmp_path / "tiny.tmlb"
    result = build_bundle(ws, "tiny:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out)
    assert any("generated:seed=0" in n for n in result.notes)
    check = result.manifest.check
    assert check is not None and check.inputs[0].shape == (2, 4) and check.outputs[0].shape == (2, 3)
    no_check = build_bundle(
        ws, "tiny:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out, check=False
    )
    assert no_check.manifest.check is None


def test_usage_errors(ws, device, tmp_path) -> None:
    pub = device.wrapping_public
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    cases = [
        ({"device_public_key": pub, "fleet": True}, "not both"),
        ({}, "device_public_key"),
        ({"device_public_key": pub, "extra_models": {"main": "digits:1"}}, "cascade model name"),
        ({"device_public_key": pub, "wasm_modules": {"Bad Name": b""}}, "WebAssembly module name"),
        ({"device_public_key": b"short"}, "32 raw bytes"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            build_bundle(ws, "digits:1", target="rpi-4", out=tmp_path / "x.tmlb", **kwargs)
    with pytest.raises(UsageError, match="is a directory"):
        build_bundle(ws, "digits:1", target="rpi-4", device_public_key=pub, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _pipeline_available() -> bool:
    try:
        from tinymlops.pipeline import validate_pipeline  # noqa: F401
        from tinymlops.spec.pipeline import PipelineSpec  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _pipeline_available(), reason="tinymlops.pipeline is not there yet")
def test_a_valid_pipeline_with_wasm_and_cascade_is_embedded(ws, device, tmp_path) -> None:
    from tinymlops.pipeline import builtin_module
    from tinymlops.spec.pipeline import PipelineSpec

    spec = {
        "spec_version": "1.0",
        "pre": [{"op": "wasm", "name": "norm", "params": {"module": "normalize", "params": [0.0, 1.0]}}],
        "post": [{"op": "cascade", "params": {"model": "big", "threshold": 0.9}}, {"op": "softmax"}],
    }
    out = tmp_path / "pipe.tmlb"
    wasm = {"normalize": builtin_module("normalize")}
    result = build_bundle(
        ws,
        "digits:1/fp16",
        target="rpi-4",
        device_public_key=device.wrapping_public,
        pipeline=PipelineSpec.from_dict(spec),
        extra_models={"big": "digits:1"},
        wasm_modules=wasm,
        out=out,
    )
    assert result.manifest.pipeline == PipelineSpec.from_dict(spec).to_dict()
    opened = open_bundle(out, key=device, trusted_release_keys=[release_public_key(ws)])
    assert PipelineSpec.from_dict(opened.manifest.pipeline) == PipelineSpec.from_dict(spec)
    assert opened.wasm_modules == wasm and set(opened.models) == {"main", "big"}
    # a plain dict is accepted too
    build_bundle(
        ws,
        "digits:1",
        target="rpi-4",
        device_public_key=device.wrapping_public,
        pipeline={"spec_version": "1.0", "post": [{"op": "softmax"}, {"op": "argmax"}]},
        out=out,
    )


@pytest.mark.skipif(not _pipeline_available(), reason="tinymlops.pipeline is not there yet")
@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"spec_version": "1.0", "post": [{"op": "no_such_op"}]}, "no_such_op"),
        ({"spec_version": "1.0", "pre": [{"op": "wasm", "params": {"module": "missing"}}]}, "missing"),
        ({"spec_version": "1.0", "post": [{"op": "cascade", "params": {"model": "big", "threshold": 0.5}}]}, "big"),
        ({"spec_version": "1.0", "pre": [{"op": "reshape", "params": {"shape": [3, 3]}}]}, "reshape|shape"),
        ({"spec_version": "1.0", "stages": []}, "stages"),
    ],
)
def test_an_invalid_pipeline_is_refused_at_build_time_and_nothing_written(
    ws, device, tmp_path, pipeline, message
) -> None:
    from tinymlops.errors import PipelineError

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(PipelineError, match=message):
        build_bundle(
            ws,
            "digits:1",
            target="rpi-4",
            device_public_key=device.wrapping_public,
            pipeline=pipeline,
            out=out_dir / "bad.tmlb",
        )
    assert list(out_dir.iterdir()) == []


def test_verify_and_inspect_need_no_device_key_and_show_no_secrets(ws, device, tmp_path) -> None:
    out = tmp_path / "b.tmlb"
    build_bundle(ws, "digits:1", target="rpi-4", device_public_key=device.wrapping_public, out=out)
    verified = verify_bundle(out.read_bytes(), trusted_release_keys=[release_public_key(ws)])
    assert verified.manifest.model.ref == "digits:1" and set(verified.members) == {"model.enc", "check.bin"}
    assert verified.manifest.check is not None and verified.manifest.check.loaded
    shown = inspect_bundle(out)
    assert shown["key_wrap"] == {
        "mode": "device",
        "recipient_key_id": device.wrapping_key_id,
        "wrapped_key_bytes": 48,
    }
    text = json.dumps(shown)
    kw = verified.manifest.key_wrap
    import base64

    for secret in (kw.wrapped_key, kw.salt, kw.ephemeral_public):
        assert base64.b64encode(secret).decode() not in text
    assert "data" not in json.dumps(shown["check"])


def test_workspace_keys_are_created_once_with_private_permissions(sqlite_workspace) -> None:
    ws = sqlite_workspace
    path = release_key_path(ws)
    assert not path.exists()
    first = release_public_key(ws)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert release_public_key(ws) == first == public_bytes(release_key(ws))
    assert (path.parent / "release.ed25519.pub").read_text().strip()
    assert public_bytes(fleet_key(ws)) == public_bytes(fleet_key(ws))
    with pytest.raises(UsageError, match=r"fleet\.x25519"):
        fleet_key(Path(ws.root) / "elsewhere", create=False)


def test_importing_the_device_side_stays_light() -> None:
    code = (
        "import sys, json; import tinymlops.bundle, tinymlops.bundle.reader, tinymlops.bundle.container, "
        "tinymlops.crypto, tinymlops.spec.manifest;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"onnx", "sqlalchemy", "torch", "fastapi", "flwr", "alembic", "typer"}
