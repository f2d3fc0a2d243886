"""The device half of tinymlops.devices stays edge-safe: no server or training stack, and never
the server half of its own package."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("sqlalchemy", "fastapi", "starlette", "torch", "flwr", "onnx", "alembic", "typer", "httpx", "pydantic")


def test_device_half_imports_no_heavy_packages() -> None:
    code = (
        "import sys, json;"
        "import tinymlops.devices, tinymlops.devices.identity, tinymlops.devices.request_auth,"
        " tinymlops.devices.client, tinymlops.devices.records;"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & set(FORBIDDEN), f"device half imports {sorted(tops & set(FORBIDDEN))}"
    server_half = {"tinymlops.devices.service", "tinymlops.devices.enrolment", "tinymlops.devices.schema"}
    assert not loaded & server_half
    assert not any(m.startswith(("tinymlops.access", "tinymlops.server", "tinymlops.registry")) for m in loaded)
