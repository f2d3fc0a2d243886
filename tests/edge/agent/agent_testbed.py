"""Real bundles for the agent tests, built once per session from models registered in a real workspace.

A plain module, not a ``conftest.py``: several test modules import the root conftest by name
(``from conftest import mlperf``), which a second conftest on ``sys.path`` would shadow. Test modules
import the fixture functions (``from agent_testbed import agent_bundles_fixture``); pytest registers
them under their ``name=``. The bundles are built once per session (cached below).

``v1``/``v2``/``v3``  tiny:1..3 (a MatMul with different weights), for this device, built ~1 s apart so
                      their manifests' ``created_at`` differ (the scan after a lost state file uses it)
``badcheck``          v2's bytes with the manifest's check vector corrupted and re-signed with the real
                      release key: it verifies, but its smoke test fails
``brittle``           a model that passes its smoke test (2 rows) but fails on any other batch size
``other_device``      tiny:1 for another device's key
``untrusted``         tiny:1 signed by a release key the device does not trust
``nocheck``           tiny:1 without a check vector
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tiny_models import tiny_onnx
from tinymlops.bundle.container import pack, unpack
from tinymlops.crypto.keys import DeviceKeys, generate_signing_key, save_public_key
from tinymlops.crypto.signing import DetachedSignature
from tinymlops.spec.manifest import canonical_json


def brittle_onnx() -> bytes:
    """Reshapes its input to a fixed [2, 4]: the 2-row check vector passes, a 1-row predict fails."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2), "W")
    shape = numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])],
        "brittle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [w, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def corrupt_check_vector(bundle: bytes, release_key: object) -> bytes:
    """Add 10 to every expected output of the check vector, and re-sign the manifest with
    ``release_key``: a bundle that verifies but whose smoke test fails. Handles both manifest layouts:
    tensors inline as base64 (spec 1.x) or in the plain ``check`` member whose SHA-256 the manifest
    lists (spec 2.x)."""
    members = unpack(bundle)
    doc = json.loads(members["manifest.json"])
    check = doc["check"]
    if "member" in check:
        member = check["member"]
        n_in = sum(4 * math.prod(t["shape"]) for t in check["inputs"])
        raw = members[member]
        outputs = np.frombuffer(raw[n_in:], dtype="<f4") + np.float32(10.0)
        members[member] = raw[:n_in] + outputs.astype("<f4").tobytes()
        doc["members"][member]["sha256"] = hashlib.sha256(members[member]).hexdigest()
    else:
        for tensor in check["outputs"]:
            values = np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4") + np.float32(10.0)
            tensor["data"] = base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")
    manifest = canonical_json(doc)
    sig = DetachedSignature.create(release_key, manifest)  # type: ignore[arg-type]
    rest = {k: v for k, v in members.items() if k not in ("manifest.json", "manifest.sig")}
    return pack({"manifest.json": manifest, "manifest.sig": sig.encode(), **rest})


@dataclass
class AgentBundles:
    root: Path
    device: DeviceKeys
    device_dir: Path
    release_public: bytes
    release_public_file: Path
    paths: dict[str, Path]
    plaintext: dict[str, bytes]

    def data(self, name: str) -> bytes:
        return self.paths[name].read_bytes()

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.data(name)).hexdigest()

    def bundle_id(self, name: str) -> str:
        return json.loads(unpack(self.data(name))["manifest.json"])["bundle_id"]

    @property
    def trusted(self) -> list[bytes]:
        return [self.release_public]


_BUILT: list[AgentBundles] = []


@pytest.fixture(scope="session", name="agent_bundles")
def agent_bundles_fixture(tmp_path_factory: pytest.TempPathFactory) -> AgentBundles:
    if not _BUILT:  # each importing module registers its own fixture; build only once
        _BUILT.append(_build(tmp_path_factory))
    return _BUILT[0]


def _build(tmp_path_factory: pytest.TempPathFactory) -> AgentBundles:
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_key, release_public_key
    from tinymlops.workspace import Workspace

    root = tmp_path_factory.mktemp("agent-bundles")
    ws = Workspace.init(root / "ws")
    device, other = DeviceKeys.generate(), DeviceKeys.generate()
    device_dir = root / "device-keys"
    device.save(device_dir)
    out = root / "built"
    out.mkdir()
    plaintext: dict[str, bytes] = {}
    paths: dict[str, Path] = {}
    try:
        for i, scale in enumerate((1.0, 2.0, 3.0), start=1):
            plaintext[f"v{i}"] = tiny_onnx(scale)
            ws.registry.register("tiny", plaintext[f"v{i}"])
        ws.registry.register("brittle", brittle_onnx())

        def build(name: str, ref: str, **kw: object) -> None:
            kw.setdefault("device_public_key", device.wrapping_public)
            build_bundle(ws, ref, target="x86-edge-server", out=out / f"{name}.tmlb", **kw)  # type: ignore[arg-type]
            paths[name] = out / f"{name}.tmlb"

        for i in (1, 2, 3):
            build(f"v{i}", f"tiny:{i}")
            if i < 3:
                time.sleep(1.05)  # created_at has one-second resolution
        build("brittle", "brittle:1")
        build("other_device", "tiny:1", device_public_key=other.wrapping_public)
        build("untrusted", "tiny:1", release_key=generate_signing_key())
        build("nocheck", "tiny:1", check=False)
        paths["badcheck"] = out / "badcheck.tmlb"
        paths["badcheck"].write_bytes(corrupt_check_vector(paths["v2"].read_bytes(), release_key(ws)))
        public = release_public_key(ws)
    finally:
        ws.close()
    pub_file = save_public_key(root / "release.pub", public)
    return AgentBundles(root, device, device_dir, public, pub_file, paths, plaintext)


@pytest.fixture(name="offer_dir")
def offer_dir_fixture(tmp_path: Path, agent_bundles: AgentBundles) -> Callable[..., Path]:
    """``publish(name, urgent=False, revoked=())``: copy a bundle into a fresh source directory and offer it."""
    from tinymlops.edge.agent.source import write_offer

    source = tmp_path / "source"
    source.mkdir()

    def publish(name: str, *, urgent: bool = False, revoked: tuple[str, ...] = ()) -> Path:
        dest = source / f"{name}.tmlb"
        dest.write_bytes(agent_bundles.data(name))
        write_offer(source, dest, urgent=urgent, revoked=revoked)
        return source

    return publish
