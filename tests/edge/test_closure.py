"""The edge closure stays light: importing tinymlops.edge pulls in no server or training stack."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn")


def _loaded_by(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    code += "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_edge_imports_no_heavy_packages() -> None:
    loaded = _loaded_by(
        "import tinymlops.edge, tinymlops.edge.backends, tinymlops.spec;"
        "import tinymlops.edge.agent, tinymlops.edge.agent.command;"
    )
    assert not loaded & set(FORBIDDEN), f"edge closure imports {sorted(loaded & set(FORBIDDEN))}"
    # onnxruntime itself is allowed (and imported lazily); "onnx" the package is not
    assert "onnx" not in loaded


def test_the_upload_store_and_uploader_stay_in_the_edge_closure(tmp_path) -> None:
    """The device's telemetry path — a runtime policy context, the upload store (SQLite) and policy,
    sealing, the uploader — imported and used: still no server or training stack."""
    code = f"""
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
"""
    loaded = _loaded_by(code)
    assert "sqlite3" in loaded and "datasketches" in loaded  # it really ran the store and the sketches
    assert not loaded & set(FORBIDDEN), f"the telemetry path imports {sorted(loaded & set(FORBIDDEN))}"


def test_the_metering_path_stays_in_the_edge_closure(tmp_path) -> None:
    """The metering device half — a metered chain, its SQLite ledger, license verification and a
    signed usage report, used for real — imports no server or training stack."""
    code = f"""
import secrets, time
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import tinymlops.edge
from tinymlops.crypto.keys import key_id, public_bytes
from tinymlops.edge.middleware import PolicyContext, Request, Response, build_chain, compose
from tinymlops.metering import MeteringHost, metering_bound, sign_license
from tinymlops.spec.license import License
issuer, device = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
host = MeteringHost({str(tmp_path)!r}, device_key=device, trusted_issuer_keys=[issuer])
now = int(time.time())
lic = License(license_id=secrets.token_hex(16), device_id=key_id(device), device_public_key=public_bytes(device).hex(),
              model="tiny", queries=3, valid_from=now - 60, valid_until=now + 3600, issued_at=now,
              issuer_key_id=key_id(issuer))
with metering_bound(host):
    (mw,) = build_chain({{"metering": {{"enabled": True, "model": "tiny"}}}}, context=PolicyContext("a" * 32, "tiny:1"))
    host.meter("tiny").install(sign_license(lic, issuer))
    compose([mw], lambda r: Response(outputs={{}}))(Request(np.ones(1)))
    assert host.meter("tiny").usage_report(0) is not None
"""
    loaded = _loaded_by(code)
    assert "sqlite3" in loaded and "tinymlops" in loaded
    assert not loaded & set(FORBIDDEN), f"the metering path imports {sorted(loaded & set(FORBIDDEN))}"
