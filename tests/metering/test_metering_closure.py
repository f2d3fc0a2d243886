"""The metering device half stays in the edge closure: a metered chain, its SQLite ledger, license
verification and a signed usage report, used for real, import no server or training stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn")


def test_the_metering_path_imports_no_heavy_packages(tmp_path: Path) -> None:
    code = f"""
import sys, json, secrets, time
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
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "sqlite3" in loaded and "tinymlops" in loaded
    assert not loaded & set(FORBIDDEN), f"the metering path imports {sorted(loaded & set(FORBIDDEN))}"
