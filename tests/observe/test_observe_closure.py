"""The device half of tinymlops.observe stays in the edge closure: loading and using the recorder,
sketches, privacy, energy and memory modules (and the telemetry spec) pulls in numpy, datasketches
and the standard library — no server, training or drift-test stack."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn", "scipy")


def test_device_observe_modules_import_no_heavy_packages() -> None:
    code = """
import sys, json
import numpy as np
import tinymlops.spec.telemetry, tinymlops.spec.kll_format
from tinymlops.observe import energy, memory, policy, privacy, recorder, sketches
from tinymlops.edge.middleware import Request, Response, compose
rec = recorder.TelemetryRecorder("a" * 32, meter=energy.PowerModelMeter(1.0),
                                 policy=policy.TelemetryPolicy(privacy=privacy.PrivacyPolicy(classes_epsilon=1.0)))
chain = compose([rec], lambda r: Response(outputs={"p": np.full((1, 3), 1 / 3, np.float32)}))
chain(Request(np.ones((1, 4), np.float32)))
assert rec.take_window().inputs.rows == 1
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "datasketches" in loaded and "numpy" in loaded  # it really ran the sketches
    assert not loaded & set(FORBIDDEN), f"observe's device half imports {sorted(loaded & set(FORBIDDEN))}"
