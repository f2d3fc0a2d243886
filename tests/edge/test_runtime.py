"""The device runtime on real bundles: same outputs as the variant in ONNX Runtime, decryption only
in memory, the middleware chain, bad input."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.reader import run_check
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.backends import open_backend
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import InputMismatchError, KeyMismatchError, SpecError
from tinymlops.optimize.pipeline import register_model

SOFTMAX_ARGMAX = {
    "spec_version": "1.0",
    "pre": [],
    "post": [{"op": "softmax", "params": {"axis": -1}}],
}


@pytest.fixture
def registered(sqlite_workspace, digits_model):
    ws = sqlite_workspace
    cfg = ws.root / "tinymlops.toml"
    text = cfg.read_text()
    start = text.index("default = [")
    cfg.write_text(text[:start] + 'default = ["int8-static"]' + text[text.index("\n", start) :])
    from tinymlops.workspace import Workspace

    ws = Workspace.open(ws.root)
    register_model(
        ws, "digits", digits_model.onnx, dataset=digits_model.npz("test"), calibration=digits_model.npz("train")
    )
    return ws


def test_bundle_predicts_like_the_variant_in_onnxruntime(registered, digits_model, tmp_path: Path) -> None:
    ws = registered
    device = DeviceKeys.generate()
    out = tmp_path / "digits.tmlb"
    build_bundle(
        ws,
        "digits:1/int8-static",
        target="x86-edge-server",
        device_public_key=device.wrapping_public,
        out=out,
        policies={"telemetry": {"enabled": True}},
    )
    runtime = Runtime.open(out, device, [release_public_key(ws)])
    direct = open_backend(ws.registry.read_bytes(ws.registry.resolve("digits:1/int8-static")))
    for i in range(50):
        x = digits_model.x_test[i : i + 1]
        got = runtime.predict(x)
        (want,) = direct.run(x)
        assert np.array_equal(next(iter(got.outputs.values())), want)
        assert got.models_called == ("main",)
    assert runtime.latency is not None and runtime.latency.summary()["count"] == 50


def test_wrong_input_and_wrong_device_are_refused(registered, digits_model, tmp_path: Path) -> None:
    ws = registered
    device, other = DeviceKeys.generate(), DeviceKeys.generate()
    out = tmp_path / "b.tmlb"
    build_bundle(ws, "digits:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out)
    with pytest.raises(KeyMismatchError):
        Runtime.open(out, other, [release_public_key(ws)])
    runtime = Runtime.open(out, device, [release_public_key(ws)])
    with pytest.raises(InputMismatchError, match=r"expects float32 \[batch, 1, 8, 8\], got float32 \[1, 1, 9, 9\]"):
        runtime.predict(np.zeros((1, 1, 9, 9), np.float32))
    with pytest.raises(InputMismatchError):
        runtime.predict(np.zeros((1, 64), np.float32))
    assert runtime.predict(digits_model.x_test[:1]).outputs  # still works afterwards


def test_the_runtime_carries_the_check_vector_and_opens_one_session_per_model(
    registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Runtime.open`` creates each model's session once, from bytes, and does not run the smoke
    test itself; the manifest it keeps has the verified check vector for whoever runs it."""
    import onnxruntime as ort

    ws = registered
    device = DeviceKeys.generate()
    out = tmp_path / "b.tmlb"
    build_bundle(ws, "digits:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out)
    created: list[type] = []
    real = ort.InferenceSession

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, path_or_bytes: object, *args: object, **kwargs: object) -> None:
            created.append(type(path_or_bytes))
            super().__init__(path_or_bytes, *args, **kwargs)

        def run(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("Runtime.open ran the model")

    monkeypatch.setattr(ort, "InferenceSession", Counting)
    runtime = Runtime.open(out, device, [release_public_key(ws)])
    assert created == [bytes]
    monkeypatch.setattr(ort, "InferenceSession", real)
    check = runtime.manifest.check
    assert check is not None and check.loaded
    direct = open_backend(ws.registry.read_bytes(ws.registry.resolve("digits:1")))
    assert run_check(runtime.manifest, direct).passed


def test_a_dropped_runtime_frees_its_session_and_plaintext_without_the_cycle_collector(
    registered, tmp_path: Path
) -> None:
    ws = registered
    device = DeviceKeys.generate()
    out = tmp_path / "b.tmlb"
    build_bundle(ws, "digits:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out)
    gc.collect()
    gc.disable()
    try:
        runtime = Runtime.open(out, device, [release_public_key(ws)], extra_middleware=[lambda r, nxt: nxt(r)])
        assert runtime.predict(np.zeros((1, 1, 8, 8), np.float32)).outputs
        backend = weakref.ref(runtime.backends["main"])
        session = weakref.ref(runtime.backends["main"].session)
        del runtime
        assert backend() is None and session() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_policy_the_runtime_does_not_implement_is_refused(registered, tmp_path: Path) -> None:
    ws = registered
    device = DeviceKeys.generate()
    out = tmp_path / "b.tmlb"
    build_bundle(
        ws,
        "digits:1",
        target="x86-edge-server",
        device_public_key=device.wrapping_public,
        out=out,
        policies={"metering": {"enabled": True, "license": "prepaid"}},
    )
    with pytest.raises(SpecError, match="metering"):
        Runtime.open(out, device, [release_public_key(ws)])


def test_plaintext_model_never_touches_disk(registered, tmp_path: Path) -> None:
    """Open and run the bundle in a fresh process whose TMPDIR and cwd are empty directories; then
    no file there, beside the bundle or in /dev/shm contains any 32-byte piece of the model."""
    ws = registered
    device = DeviceKeys.generate()
    device.save(tmp_path / "device")
    (tmp_path / "release.pub").write_bytes(release_public_key(ws))
    bundle = tmp_path / "bundle" / "b.tmlb"
    bundle.parent.mkdir()
    build_bundle(
        ws, "digits:1/int8-static", target="x86-edge-server", device_public_key=device.wrapping_public, out=bundle
    )
    plaintext = ws.registry.read_bytes(ws.registry.resolve("digits:1/int8-static"))
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    shm_before = set(Path("/dev/shm").glob("*"))
    script = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from tinymlops.crypto.keys import DeviceKeys
        from tinymlops.edge.runtime import Runtime
        rt = Runtime.open({str(bundle)!r}, DeviceKeys.load({str(tmp_path / "device")!r}),
                          [Path({str(tmp_path / "release.pub")!r}).read_bytes()])
        for _ in range(20):
            rt.predict(np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32))
        print("ok")
        """
    )
    env = {"TMPDIR": str(tmp), "HOME": str(work), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
    pieces = [plaintext[i : i + 32] for i in range(0, len(plaintext) - 32, 97)]
    assert len(pieces) > 50
    candidates = [p for d in (work, tmp, bundle.parent) for p in d.rglob("*") if p.is_file()]
    candidates += [p for p in set(Path("/dev/shm").glob("*")) - shm_before if p.is_file()]
    for path in candidates:
        content = path.read_bytes()
        assert not any(piece in content for piece in pieces), f"{path} contains plaintext model bytes"
    # the check would catch a leak: the plaintext itself contains the pieces
    assert all(piece in plaintext for piece in pieces)
