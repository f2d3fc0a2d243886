"""Where the MLPerf Tiny reference models are, for tests that use them.

A plain module, not ``conftest``: test folders have their own ``conftest.py`` files, and with no
packages under ``tests/`` a ``from conftest import …`` would pick whichever one was imported last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MLPERF_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "mlperf-tiny"


def mlperf(name: str) -> Path:
    path = MLPERF_DIR / name
    if not path.is_file():
        pytest.skip(f"MLPerf Tiny model {name} not found in {MLPERF_DIR}")
    return path
