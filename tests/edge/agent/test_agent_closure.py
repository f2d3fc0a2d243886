"""The agent stays in the edge closure — not only when imported, but after it has recovered a data
directory, installed a real bundle (verify, copy, open in ONNX Runtime, smoke test, switch) and served
a prediction, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from agent_testbed import agent_bundles_fixture, offer_dir_fixture  # noqa: F401 (fixtures)

FORBIDDEN = {"sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn", "uvicorn"}


def test_a_full_install_cycle_loads_nothing_heavy(tmp_path: Path, agent_bundles: Any, offer_dir: Any) -> None:
    source = offer_dir("v1")
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from tinymlops.crypto.keys import DeviceKeys, load_public_key
        from tinymlops.edge.agent import Agent, LocalDirectorySource

        agent = Agent({str(tmp_path / "data")!r}, LocalDirectorySource({str(source)!r}),
                      DeviceKeys.load({str(agent_bundles.device_dir)!r}),
                      [load_public_key({str(agent_bundles.release_public_file)!r})])
        cycle = agent.run_once()
        y = agent.predict(np.ones((1, 4), np.float32)).outputs["y"]
        print(json.dumps({{"action": cycle.action, "shape": list(y.shape),
                          "modules": sorted({{m.split('.')[0] for m in sys.modules}})}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    doc = json.loads(out.stdout)
    assert doc["action"] == "installed" and doc["shape"] == [1, 2]
    loaded = set(doc["modules"])
    assert "onnxruntime" in loaded  # it really ran the model
    assert not loaded & FORBIDDEN, f"the agent pulled in {sorted(loaded & FORBIDDEN)}"
