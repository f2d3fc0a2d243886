"""The edge closure stays light: importing tinymlops.edge pulls in no server or training stack."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn")


def test_edge_imports_no_heavy_packages() -> None:
    code = (
        "import sys, json; import tinymlops.edge, tinymlops.edge.backends, tinymlops.spec;"
        "import tinymlops.edge.agent, tinymlops.edge.agent.command;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(FORBIDDEN), f"edge closure imports {sorted(loaded & set(FORBIDDEN))}"
    # onnxruntime itself is allowed (and imported lazily); "onnx" the package is not
    assert "onnx" not in loaded


def test_the_upload_store_and_uploader_stay_in_the_edge_closure(tmp_path) -> None:
    """The device's telemetry path — a runtime policy context, the upload store (SQLite) and policy,
    sealing, the uploader — imported and used: still no server or training stack."""
    code = f"""
import sys, json
import numpy as np
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.agent.remote import TelemetryUploader
from tinymlops.edge.middleware import PolicyContext, Request, Response, build_chain, compose
from tinymlops.observe.upload_policy import UploadPolicy, decide
from tinymlops.observe.upload_store import UploadStore
from tinymlops.spec.context import DeviceContext
keys = DeviceKeys.generate()
(rec,) = build_chain({{"telemetry": {{"enabled": True, "classes": 2}}}}, context=PolicyContext("a" * 32))
predict = compose([rec], lambda r: Response(outputs={{"p": np.full((1, 2), 0.5, np.float32)}}))
predict(Request(np.ones((1, 4), np.float32)))
store = UploadStore({str(tmp_path / "t.sqlite3")!r}, keys.signing)
store.add(rec.take_window(privatize_histograms=False))
assert store.next_batch().windows == 1
assert decide(UploadPolicy(consent=True), DeviceContext(), store.sent_log(), 0.0).allowed
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "sqlite3" in loaded and "datasketches" in loaded  # it really ran the store and the sketches
    assert not loaded & set(FORBIDDEN), f"the telemetry path imports {sorted(loaded & set(FORBIDDEN))}"
