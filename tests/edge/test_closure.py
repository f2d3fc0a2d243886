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
