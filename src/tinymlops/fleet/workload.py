"""What a simulated device predicts: real digits where the model takes them, else generated inputs.

:func:`workload_for` looks at the input of the bundle the device runs (its main model's first input):

* 64 values per sample (``[batch, 1, 8, 8]``, ``[batch, 8, 8]``, ``[batch, 64]``) → **digits**:
  scikit-learn's 8×8 handwritten digits, the held-out test split the demo's model never saw
  (:func:`tinymlops.demo.digits.load_digits_split`), scaled to [0, 1] as the demo trains on; each
  answer is scored against its label (the argmax of a 10-score output, or an integer label);
* anything else (MLPerf Tiny keyword spotting, an image model, …) → **generated**: uniform [0, 1)
  float32 samples of the input's shape (dynamic dimensions are 1), seeded per device; the backend
  quantizes them when the model's input is integer. No accuracy is scored.

Each device walks its own seeded permutation of the samples, one sample per prediction.

An :class:`InputShift` (a mix entry's ``[profiles.NAME.inputs]``) makes a cohort's data drift: the
listed features (indices into the flattened input) read ``sd`` standard deviations — of that
feature over the workload's samples — higher, as a miscalibrated sensor would. The labels stay.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinymlops.errors import UsageError

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10


#: the most features one shift may name
MAX_SHIFT_FEATURES = 4096


@dataclass(frozen=True)
class InputShift:
    """Add ``sd`` standard deviations (per feature, over the samples) to ``features`` of every sample."""

    features: tuple[int, ...]
    sd: float

    def __post_init__(self) -> None:
        if not self.features or len(self.features) > MAX_SHIFT_FEATURES:
            raise UsageError(f"an input shift names 1 to {MAX_SHIFT_FEATURES} features, got {len(self.features)}")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.features):
            raise UsageError(f"input shift features are indices >= 0 into the flattened input, got {self.features}")
        if len(set(self.features)) != len(self.features):
            raise UsageError("an input shift names a feature twice")
        if isinstance(self.sd, bool) or not isinstance(self.sd, int | float) or not math.isfinite(self.sd):
            raise UsageError(f"an input shift's sd must be a finite number, got {self.sd!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """A shifted copy of ``x`` (samples first); UsageError when a feature is outside a sample."""
        flat = np.array(x, dtype=np.float32).reshape(len(x), -1)
        size = flat.shape[1]
        outside = [i for i in self.features if i >= size]
        if outside:
            raise UsageError(f"input shift feature(s) {outside} outside the model input's {size} values")
        idx = np.asarray(self.features)
        flat[:, idx] += (self.sd * flat[:, idx].std(axis=0)).astype(np.float32)
        return flat.reshape(x.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"shift_features": list(self.features), "shift_sd": self.sd}


@dataclass
class Workload:
    kind: str  # "digits" | "generated" | "none"
    x: np.ndarray  # [n, *sample shape]
    y: np.ndarray | None  # labels (digits only)
    order: np.ndarray
    reason: str = ""
    _i: int = 0

    def next(self) -> tuple[np.ndarray, int | None]:
        """One batch-of-one input and its label (None when not labelled)."""
        j = int(self.order[self._i % len(self.order)])
        self._i += 1
        label = None if self.y is None else int(self.y[j])
        return self.x[j : j + 1].copy(), label  # the shared samples stay read-only

    def score(self, outputs: dict[str, Any], label: int | None) -> bool | None:
        """Was the answer right? None when the answer or the label cannot say."""
        if label is None or not outputs:
            return None
        out = np.asarray(next(iter(outputs.values())))
        if out.dtype.kind in "iu" and out.size == 1:
            return int(out.reshape(-1)[0]) == label
        if out.dtype.kind == "f" and out.size == DIGITS_CLASSES:
            return int(np.argmax(out.reshape(-1))) == label
        return None


@functools.lru_cache(maxsize=1)
def digits_test_split() -> tuple[np.ndarray, np.ndarray] | None:
    """The held-out digits (x in [0, 1], shape [n, 1, 8, 8]; y) or None without scikit-learn."""
    try:
        from tinymlops.demo.digits import load_digits_split

        _, _, x, y = load_digits_split(seed=0)
    except ImportError:
        return None
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _static_shape(shape: tuple[Any, ...]) -> tuple[int, ...] | None:
    """The sample shape with dynamic dimensions as 1 (None if a sample dimension is unknown)."""
    dims: list[int] = []
    for d in shape[1:]:
        if not isinstance(d, int) or d <= 0:
            return None
        dims.append(d)
    return tuple(dims)


def workload_for(runtime: Any, seed: int, *, samples: int = 64, shift: InputShift | None = None) -> Workload:
    """The workload for the bundle ``runtime`` serves (see the module docstring), shifted by ``shift``
    (a feature outside the input: no workload, and the reason says why)."""
    workload = _workload_for(runtime, seed, samples)
    if shift is None or workload.kind == "none":
        return workload
    try:
        workload.x = shift.apply(workload.x)
    except UsageError as exc:
        return Workload("none", np.zeros((1, 1), np.float32), None, np.zeros(1, np.int64), exc.message)
    workload.kind += "+shift"
    return workload


def _workload_for(runtime: Any, seed: int, samples: int) -> Workload:
    rng = np.random.default_rng(seed)
    backends = getattr(runtime, "backends", {}) or {}
    backend = backends.get("main") or next(iter(backends.values()), None)
    inputs = getattr(backend, "inputs", ()) if backend is not None else ()
    if len(inputs) != 1:
        return Workload("none", np.zeros((1, 1), np.float32), None, np.zeros(1, np.int64), "not a one-input model")
    spec = inputs[0]
    shape = tuple(spec.shape)
    sample = _static_shape(shape) if shape else None
    if sample is None:
        return Workload("none", np.zeros((1, 1), np.float32), None, np.zeros(1, np.int64), f"input shape {shape}")
    if int(np.prod(sample)) == DIGITS_FEATURES:
        digits = digits_test_split()
        if digits is not None:
            x, y = digits
            xs = x.reshape((len(x), *sample)).astype(np.float32, copy=False)
            return Workload("digits", xs, y, rng.permutation(len(xs)))
    x = rng.random((samples, *sample), dtype=np.float32)
    return Workload("generated", x, None, rng.permutation(samples))


__all__ = ["DIGITS_CLASSES", "DIGITS_FEATURES", "InputShift", "Workload", "digits_test_split", "workload_for"]
