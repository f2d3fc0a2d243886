"""Whole bundles through ``Runtime``: a cascade with a WebAssembly pre-processing step, a TFLite
model on the LiteRT backend, and the edge import closure *after* a real open and predict."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlperf_models import mlperf
from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.backends import open_backend
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import PipelineError
from tinymlops.pipeline.ops import softmax
from tinymlops.pipeline.wasm import builtin_module
from tinymlops.workspace import Workspace

THRESHOLD = 0.95
#: raw 0..16 pixels in → the CNN's [0, 1] input via a WebAssembly step → cascade → class index
PIPELINE = {
    "spec_version": "1.0",
    "pre": [
        {"op": "reshape", "params": {"shape": [1, 8, 8]}},
        {"op": "wasm", "name": "scale", "params": {"module": "normalize", "params": [0.0, 16.0]}},
    ],
    "post": [
        {"op": "cascade", "params": {"model": "big", "threshold": THRESHOLD}},
        {"op": "argmax", "name": "label"},
    ],
}
FORBIDDEN = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, digits_model) -> Workspace:
    import torch
    from torch import nn

    from tinymlops.registry.converters import onnx_from_torch

    torch.manual_seed(0)
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # a weak first model: escalates often
    opt = torch.optim.Adam(small.parameters(), lr=0.05)
    x, y = torch.from_numpy(digits_model.x_train), torch.from_numpy(digits_model.y_train)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(small(x), y).backward()
        opt.step()
    root = tmp_path_factory.mktemp("rtp")
    ws = Workspace.init(root / "ws")
    cfg = ws.root / "tinymlops.toml"
    text = cfg.read_text()
    start = text.index("default = [")
    cfg.write_text(text[:start] + "default = []" + text[text.index("\n", start) :])  # no derivations needed
    ws = Workspace.open(ws.root)
    ws.registry.register("small", onnx_from_torch(small, digits_model.x_test[:1]))
    ws.registry.register("cnn", digits_model.onnx)
    return ws


@pytest.fixture(scope="module")
def cascade_bundle(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeviceKeys]:
    device = DeviceKeys.generate()
    out = tmp_path_factory.mktemp("b") / "cascade.tmlb"
    build_bundle(
        ws,
        "small:1",
        target="rpi-4",
        device_public_key=device.wrapping_public,
        pipeline=PIPELINE,
        extra_models={"big": "cnn:1"},
        wasm_modules={"normalize": builtin_module("normalize")},
        out=out,
    )
    return out, device


def test_cascade_bundle_with_a_wasm_step_matches_the_models_run_directly(ws, cascade_bundle, digits_model) -> None:
    path, device = cascade_bundle
    runtime = Runtime.open(path, device, [release_public_key(ws)])
    small = open_backend(ws.registry.read_bytes(ws.registry.resolve("small:1")))
    big = open_backend(ws.registry.read_bytes(ws.registry.resolve("cnn:1")))
    x01, y = digits_model.x_test, digits_model.y_test
    raw = np.rint(x01.reshape(len(x01), -1) * 16).astype(np.float32)
    escalated, correct = 0, 0
    for i in range(len(raw)):
        got = runtime.predict(raw[i : i + 1])
        small_scores = small.run(x01[i : i + 1])[0]
        unsure = softmax(small_scores, -1).max() < THRESHOLD
        want = int(np.argmax(big.run(x01[i : i + 1])[0] if unsure else small_scores))
        assert int(np.asarray(got.outputs["label"]).reshape(-1)[0]) == want
        assert got.models_called == (("main", "big") if unsure else ("main",))
        escalated += unsure
        correct += want == y[i]
    # the weak first model is unsure about a real share of the digits, sure about most
    assert 0 < escalated < len(raw) / 2
    assert correct / len(raw) > 0.95


def test_a_pipeline_naming_a_missing_stage_is_refused_at_build_time(ws, tmp_path: Path) -> None:
    device = DeviceKeys.generate()
    out = tmp_path / "x.tmlb"
    bad = {**PIPELINE, "post": [{"op": "cascade", "params": {"model": "huge", "threshold": 0.5}}]}
    with pytest.raises(PipelineError, match="huge"):
        build_bundle(
            ws,
            "small:1",
            target="rpi-4",
            device_public_key=device.wrapping_public,
            pipeline=bad,
            wasm_modules={"normalize": builtin_module("normalize")},
            out=out,
        )
    with pytest.raises(PipelineError, match=r"no_such_op|unknown"):
        build_bundle(
            ws,
            "small:1",
            target="rpi-4",
            device_public_key=device.wrapping_public,
            pipeline={"spec_version": "1.0", "pre": [{"op": "no_such_op"}]},
            out=out,
        )
    with pytest.raises(PipelineError, match="normalize"):  # a wasm step whose module the bundle lacks
        build_bundle(ws, "small:1", target="rpi-4", device_public_key=device.wrapping_public, pipeline=PIPELINE,
                     extra_models={"big": "cnn:1"}, out=out)  # fmt: skip
    assert not out.exists()


def test_tflite_bundle_runs_on_litert_like_the_file(ws, tmp_path: Path) -> None:
    path = mlperf("kws_ref_model_float32.tflite")
    ws.registry.register("kws", path.read_bytes())
    device = DeviceKeys.generate()
    out = tmp_path / "kws.tmlb"
    built = build_bundle(ws, "kws:1", target="mcu-cortex-m7", device_public_key=device.wrapping_public, out=out)
    assert built.manifest.model.backend == "litert"
    runtime = Runtime.open(out, device, [release_public_key(ws)])
    direct = open_backend(path.read_bytes())
    spec = direct.inputs[0]
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal(tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape))
        x = x.astype(np.float32)
        (got,) = runtime.predict(x).outputs.values()
        np.testing.assert_array_equal(got, direct.run(x)[0])


def test_edge_closure_after_a_real_open_and_predict(ws, cascade_bundle, tmp_path: Path) -> None:
    """Not just ``import tinymlops.edge``: opening a bundle (verify, unwrap, decrypt, wasm, cascade)
    and predicting must not pull the server or training stack in either."""
    path, device = cascade_bundle
    device.save(tmp_path / "device")
    (tmp_path / "release.pub").write_bytes(release_public_key(ws))
    script = textwrap.dedent(
        f"""
        import sys, json
        import numpy as np
        from pathlib import Path
        from tinymlops.crypto.keys import DeviceKeys
        from tinymlops.edge.runtime import Runtime
        rt = Runtime.open({str(path)!r}, DeviceKeys.load({str(tmp_path / "device")!r}),
                          [Path({str(tmp_path / "release.pub")!r}).read_bytes()])
        rt.predict(np.full((1, 64), 8.0, dtype=np.float32))
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert {"onnxruntime", "cryptography", "wasmtime"} <= loaded  # it really opened and ran
    assert not loaded & set(FORBIDDEN), f"the runtime pulled in {sorted(loaded & set(FORBIDDEN))}"
