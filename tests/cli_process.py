"""Run the real ``tinymlops`` command in a subprocess, as a user would (for CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(ws: Path | None, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``python -m tinymlops ARGS`` with ``TINYMLOPS_WORKSPACE=ws`` (unset when ``ws`` is None);
    asserts the exit code unless ``code`` is None."""
    env = {k: v for k, v in os.environ.items() if k != "TINYMLOPS_WORKSPACE"}
    if ws is not None:
        env["TINYMLOPS_WORKSPACE"] = str(ws)
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlops", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if code is not None:
        assert proc.returncode == code, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc
