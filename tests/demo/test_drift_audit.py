"""The demo's raw-input audit finds a served row when a window's JSON holds one (the demo asserts it
finds none: that only means something if the search would see one)."""

from __future__ import annotations

import json

import numpy as np

from tinymlops.demo.drift import rows_found


def _digits(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).integers(0, 17, size=(n, 1, 8, 8)) / 16.0).astype(np.float32)


def test_a_served_row_in_a_window_is_found_and_sketches_alone_are_not() -> None:
    served = _digits(5, 1)
    leaked = [float(v) for v in served[2].reshape(-1)]
    window = {"inputs": {"features": [{"kind": "element", "index": 0, "sketch": "AgMIGggAAQA="}]}, "debug": leaked}
    assert rows_found(json.dumps([None, window, None]), [served]) == (5, 1)
    # one image row of it (values 32-39) is enough
    part = {"inputs": {"row": leaked[32:40]}}
    assert rows_found(json.dumps(part), [served[:3]]) == (3, 1)
    clean = {"inputs": {"features": [{"kind": "element", "index": 0, "mean": 0.5, "sketch": "AgMIGggAAQA="}]}}
    assert rows_found(json.dumps(clean), [served, _digits(4, 2)]) == (9, 0)
