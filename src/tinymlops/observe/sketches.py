"""Input profiles: what a stream of model inputs and outputs looked like, without keeping any of it.

:class:`InputProfile` takes model inputs (numpy arrays, axis 0 always the batch) and keeps, per
input **feature**, a KLL quantile sketch (Apache DataSketches, ``k`` = 200 by default: ranks within
the sketch's ``normalized_rank_error`` ≈ 1.65% with 99% confidence) and its moments — count, mean,
variance (population: ``M2 / count``), min, max — plus the predicted-class and confidence
histograms of the outputs. What a feature is, for an input row of shape ``S`` (the input without
its batch axis):

* at most ``max_features`` values per row (a vector, or a tensor as small as an 8×8 image): every
  element of the flattened row is a feature (``element``) — a pixel that drifts is named, not
  averaged away in its channel's mean;
* ``S = (C, d1, d2, …)`` with more values but ``C <= max_features``: every **channel** is a feature — the slice
  along axis 1 of the batched input, averaged over the remaining (spatial) axes (``channel``);
  axis 1 is the channel axis as in ONNX's NCHW layout;
* otherwise (more than ``max_features`` elements or channels): no per-element features, only the
  projection — sketching 784 pixels one by one would cost more than the model call it watches.

Always (unless ``projection_dims = 0``), the whole flattened row ``x`` (``D`` values) is also
projected to ``projection_dims`` values ``x @ R`` with a fixed random matrix ``R`` (``D × k``,
entries ``±1/√D``, the sign of bit 63 of ``splitmix64(seed + (i·k + j + 1)·0x9E3779B97F4A7C15)``),
each sketched as a ``projection`` feature. The matrix is a pure function of (seed, D, k) computed
with 64-bit integer arithmetic — no library's random stream — so every device and the server get
the same one.

Values are taken as float32 (what a KLL float sketch holds). A non-finite value (NaN, ±inf) is not
sketched: it counts in the feature's ``nonfinite`` instead (``count + nonfinite = rows``).

Outputs (:meth:`InputProfile.observe`): class scores ``[batch, classes]`` — the predicted class is
the argmax, the confidence the largest probability (scores that are not already probabilities
are softmaxed; ``outputs`` says which, ``auto`` decides on the first batch) — or integer labels
``[batch]`` (classes only). One kind per profile, the first it is given: a window's confidence
histogram counts every prediction, so labels after scores (or scores after labels) are refused.
Confidence goes into ``CONFIDENCE_BINS`` equal bins over [0, 1].

**Cost.** :meth:`add` and :meth:`observe` only copy rows into a buffer shaped like the rows (a
batch of one row of the shape and dtype seen before takes a short path: one comparison and one
copy); every ``buffer_rows`` rows (at most ``buffer_bytes``) the buffer is reduced at once: one
matrix product for the projection, vectorized moments merged with Chan's formula, and one
``update`` of a ``vector_of_kll_floats_sketches`` with the whole block — each feature's block
sorted first (descending): a KLL sketch's error bound holds for any order of its stream, and it
takes a sorted run about twice as fast (~20 ns per value instead of ~42 here, the sort included).
The minimum and maximum are then the block's first and last rows. A batch of at least a whole
buffer, given while the buffer is empty, is reduced as it is, without the copy:
:class:`~tinymlops.observe.recorder.TelemetryRecorder` keeps its own per-call buffer and hands it
over here one full block at a time.

**Merging.** :meth:`merge` is exact as the library defines it: the sketches merge (DataSketches
KLL merge: the result has the error bound of a single sketch over the union), moments combine with
Chan et al.'s pairwise formula (exact up to float rounding), histograms add. Profiles merge only
with the same layout (features, projection seed and dimensions).

Not thread-safe: :class:`~tinymlops.observe.recorder.TelemetryRecorder` holds the lock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinymlops.errors import SpecError, UsageError
from tinymlops.spec.telemetry import (
    CONFIDENCE_BINS,
    MAX_CLASSES,
    MAX_FEATURES,
    MAX_PROJECTION_DIMS,
    FeatureSummary,
    InputsSummary,
    Projection,
)

DEFAULT_K = 200
#: KLL k above this could make one serialized sketch exceed the spec's MAX_SKETCH_BYTES
MAX_K = 2000
DEFAULT_MAX_FEATURES = 64
DEFAULT_PROJECTION_DIMS = 8
DEFAULT_BUFFER_ROWS = 256
DEFAULT_BUFFER_BYTES = 256 * 1024
OUTPUT_KINDS = ("auto", "probabilities", "logits")

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _kll() -> Any:
    import datasketches

    return datasketches


def splitmix64(counters: np.ndarray) -> np.ndarray:
    """SplitMix64's output function over uint64 counters (wrapping arithmetic)."""
    z = counters.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MIX1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    return z


def projection_matrix(seed: int, input_size: int, dims: int) -> np.ndarray:
    """The fixed ``input_size × dims`` projection (float32, entries ±1/√input_size); see the module doc."""
    if not 0 <= seed < 2**63 or input_size < 1 or not 1 <= dims <= MAX_PROJECTION_DIMS:
        raise UsageError(f"projection needs 0 <= seed < 2**63, input_size >= 1, 1 <= dims <= {MAX_PROJECTION_DIMS}")
    with np.errstate(over="ignore"):
        steps = np.arange(1, input_size * dims + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
        bits = splitmix64(steps + np.uint64(seed))
    signs = np.where(bits >> np.uint64(63), -1.0, 1.0).astype(np.float32)
    return (signs / np.float32(math.sqrt(input_size))).reshape(input_size, dims)


@dataclass(frozen=True)
class Layout:
    """How rows become features: ``mode`` (``element``, ``channel`` or ``none``), ``features`` of that
    kind, ``input_size`` values per row; ``row_shape`` when known (a profile read from a window
    does not know it)."""

    mode: str
    features: int
    input_size: int
    row_shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, row_shape: tuple[int, ...], max_features: int) -> Layout:
        size = math.prod(row_shape)
        if size < 1:
            raise UsageError(f"an input row of shape {row_shape} has no values to profile")
        if size <= max_features:  # a small input (a vector, an 8×8 image): every value is a feature
            return cls("element", size, size, row_shape)
        if len(row_shape) <= 1:
            return cls("none", 0, size, row_shape)
        channels = row_shape[0]
        if channels <= max_features:
            return cls("channel", channels, size, row_shape)
        return cls("none", 0, size, row_shape)

    def accepts(self, row_shape: tuple[int, ...], max_features: int) -> bool:
        if self.row_shape is not None:
            return self.row_shape == row_shape
        other = Layout.of(row_shape, max_features)
        return (other.mode, other.features, other.input_size) == (self.mode, self.features, self.input_size)


class InputProfile:
    """Sketches and moments of a stream of inputs, histograms of its outputs (see the module doc)."""

    def __init__(
        self,
        *,
        max_features: int = DEFAULT_MAX_FEATURES,
        projection_dims: int = DEFAULT_PROJECTION_DIMS,
        seed: int = 0,
        k: int = DEFAULT_K,
        outputs: str = "auto",
        classes: int | None = None,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        for name, value, low, high in (
            ("max_features", max_features, 0, MAX_FEATURES - MAX_PROJECTION_DIMS),
            ("projection_dims", projection_dims, 0, MAX_PROJECTION_DIMS),
            ("seed", seed, 0, 2**63 - 1),
            ("k", k, 8, MAX_K),
            ("buffer_rows", buffer_rows, 1, 1 << 20),
            ("buffer_bytes", buffer_bytes, 1, 1 << 30),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"input profile: {name} must be an integer within [{low}, {high}], got {value!r}")
        if classes is not None and (
            isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES
        ):
            raise UsageError(f"input profile: classes must be an integer within [1, {MAX_CLASSES}], got {classes!r}")
        if outputs not in OUTPUT_KINDS:
            raise UsageError(f"input profile: outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
        self.max_features = max_features
        self.projection_dims = projection_dims
        self.seed = seed
        self.k = k
        self.outputs = outputs
        self.buffer_rows = buffer_rows
        self.buffer_bytes = buffer_bytes
        self.layout: Layout | None = None
        self.rows = 0
        self.predictions = 0
        self._projection: np.ndarray | None = None
        self._sketches: Any = None
        self._count = self._nonfinite = np.zeros(0, np.int64)
        self._mean = self._m2 = np.zeros(0)
        self._min = self._max = np.zeros(0)
        self._buf: np.ndarray | None = None
        self._fill = 0
        self._fast_shape: tuple[int, ...] | None = None  # (1, *row shape) of the rows the buffer takes as they are
        self._fast_dtype: np.dtype[Any] | None = None
        self.n_classes = classes
        self._classes = np.zeros(classes or 0, np.int64)
        self._confidence: np.ndarray | None = None  # None until scores are seen: labels carry no confidence
        self._scores: np.ndarray | None = None
        self._score_fill = 0
        self._score_kind: str | None = None if outputs == "auto" else outputs
        self._score_shape: tuple[int, ...] | None = None  # (1, classes) of the scores the buffer takes as they are
        self._score_dtype: np.dtype[Any] | None = None

    # --- the stream ----------------------------------------------------------------------------
    def add(self, inputs: Any) -> None:
        """Profile a batch of inputs (axis 0 is the batch; a 0-d array is one row of one value)."""
        x = inputs if type(inputs) is np.ndarray else np.asarray(inputs)
        if x.shape == self._fast_shape and x.dtype is self._fast_dtype:
            # the hot path: one more row like the previous ones — a copy into the buffer (shaped like the rows)
            fill = self._fill
            buf = self._buf
            assert buf is not None
            buf[fill] = x
            self._fill = fill = fill + 1
            if fill == buf.shape[0]:
                self._flush_inputs()
            return
        if x.ndim == 0:
            x = x.reshape(1)
        if x.dtype.kind not in "biuf":
            raise UsageError(f"input profile: inputs must be numeric, got dtype {x.dtype}")
        rows, row_shape = x.shape[0], tuple(int(d) for d in x.shape[1:])
        if self.layout is None:
            self._start(Layout.of(row_shape, self.max_features))
        assert self.layout is not None
        if not self.layout.accepts(row_shape, self.max_features):
            raise UsageError(
                f"input profile: rows of shape {row_shape} do not fit the profile's layout "
                f"({self.layout.mode}, {self.layout.features} features, {self.layout.input_size} values per row)"
            )
        if self.layout.row_shape is None:
            self.layout = Layout(self.layout.mode, self.layout.features, self.layout.input_size, row_shape)
        if self._buf is None:
            size = max(1, min(self.buffer_rows, self.buffer_bytes // (4 * self.layout.input_size)))
            self._buf = np.empty((size, *(row_shape or (1,))), np.float32)
        # rows the buffer takes as they are from now on: batches of one, of this (row shape, dtype)
        self._fast_shape, self._fast_dtype = (1, *self._buf.shape[1:]), x.dtype
        x = x.reshape(rows, *self._buf.shape[1:])
        size = self._buf.shape[0]
        done = 0
        while done < rows:
            if self._fill == 0 and rows - done >= size:  # a whole buffer's worth: reduced as it is, no copy
                self._reduce_inputs(np.asarray(x[done : done + size], np.float32).reshape(size, -1))
                done += size
                continue
            take = min(rows - done, size - self._fill)
            self._buf[self._fill : self._fill + take] = x[done : done + take]
            self._fill += take
            done += take
            if self._fill == self._buf.shape[0]:
                self._flush_inputs()

    def observe(self, outputs: Any) -> None:
        """Count a batch of outputs: class scores ``[batch, classes]`` or integer labels ``[batch]``."""
        y = outputs if type(outputs) is np.ndarray else np.asarray(outputs)
        if y.shape == self._score_shape and y.dtype is self._score_dtype:
            scores = self._scores  # the hot path: one more row of scores like the previous ones
            assert scores is not None
            fill = self._score_fill
            scores[fill] = y
            self._score_fill = fill = fill + 1
            if fill == scores.shape[0]:
                self._flush_scores()
            return
        if y.dtype.kind in "biu" and y.ndim <= 1:
            if self._confidence is not None or self._score_fill:
                raise UsageError("input profile: outputs were class scores, got integer labels (one kind per profile)")
            self._flush_scores()
            labels = y.reshape(-1).astype(np.int64)
            limit = self.n_classes or MAX_CLASSES
            if labels.size and (labels.min() < 0 or labels.max() >= limit):
                raise UsageError(
                    f"input profile: class labels must be within [0, {limit}), got {labels.min()}..{labels.max()}"
                )
            self._count_classes(labels)
            return
        if y.dtype.kind != "f" or y.ndim != 2 or not 1 <= y.shape[1] <= MAX_CLASSES:
            raise UsageError(
                f"input profile: outputs must be class scores [batch, classes <= {MAX_CLASSES}] or integer labels "
                f"[batch], got dtype {y.dtype} shape {y.shape}"
            )
        if self.predictions and self._confidence is None:
            raise UsageError("input profile: outputs were integer labels, got class scores (one kind per profile)")
        if self.n_classes is not None and y.shape[1] != self.n_classes:
            raise UsageError(f"input profile: expected scores for {self.n_classes} classes, got {y.shape[1]}")
        if self._scores is not None and self._scores.shape[1] != y.shape[1]:
            self._flush_scores()
            self._scores = None
        if self._scores is None:
            self._scores = np.empty(
                (max(1, min(self.buffer_rows, self.buffer_bytes // (4 * y.shape[1]))), y.shape[1]), np.float32
            )
        self._score_shape, self._score_dtype = (1, y.shape[1]), y.dtype
        size = self._scores.shape[0]
        done = 0
        while done < y.shape[0]:
            if self._score_fill == 0 and y.shape[0] - done >= size:  # a whole buffer's worth: reduced as it is
                self._reduce_scores(np.asarray(y[done : done + size], np.float32))
                done += size
                continue
            take = min(y.shape[0] - done, size - self._score_fill)
            self._scores[self._score_fill : self._score_fill + take] = y[done : done + take]
            self._score_fill += take
            done += take
            if self._score_fill == self._scores.shape[0]:
                self._flush_scores()

    def flush(self) -> None:
        """Reduce whatever is buffered (done by every reader; call it to bound the buffered rows)."""
        self._flush_inputs()
        self._flush_scores()

    # --- reduction -----------------------------------------------------------------------------
    def _start(self, layout: Layout) -> None:
        self.layout = layout
        total = layout.features + (self.projection_dims if layout.input_size else 0)
        if self.projection_dims:
            self._projection = projection_matrix(self.seed, layout.input_size, self.projection_dims)
        self._sketches = _kll().vector_of_kll_floats_sketches(self.k, max(total, 1))
        self._count = np.zeros(total, np.int64)
        self._nonfinite = np.zeros(total, np.int64)
        self._mean = np.zeros(total)
        self._m2 = np.zeros(total)
        self._min = np.full(total, np.inf)
        self._max = np.full(total, -np.inf)

    @property
    def n_features(self) -> int:
        return len(self.feature_keys())

    def _values(self, block: np.ndarray) -> np.ndarray:
        assert self.layout is not None
        parts = []
        if self.layout.mode == "element":
            parts.append(block)
        elif self.layout.mode == "channel":
            parts.append(block.reshape(block.shape[0], self.layout.features, -1).mean(axis=2, dtype=np.float32))
        if self._projection is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                parts.append(block @ self._projection)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _flush_inputs(self) -> None:
        if self._fill == 0 or self._buf is None:
            return
        block = self._buf[: self._fill].reshape(self._fill, -1)
        self._fill = 0
        self._reduce_inputs(block)

    def _reduce_inputs(self, block: np.ndarray) -> None:
        """Reduce a block of rows (float32, ``[rows, input_size]``) into the moments and the sketches."""
        if not self.n_features:
            self.rows += block.shape[0]
            return
        values = self._values(block)
        self.rows += values.shape[0]
        # Each feature's block in descending order (NaN first, then +inf, …, -inf): a KLL sketch's error
        # bound holds for any order of its stream, and it takes a sorted run about twice as fast (its
        # level-0 compaction sorts what it holds, and items fill level 0 from the top down).
        values = np.sort(values, axis=0)[::-1]
        if np.isfinite(values[0]).all() and np.isfinite(values[-1]).all():  # the extremes of every column
            n_b = np.full(values.shape[1], values.shape[0], np.int64)
            mean_b = values.mean(axis=0, dtype=np.float64)
            m2_b = np.square(values - mean_b).sum(axis=0, dtype=np.float64)
            min_b, max_b = values[-1], values[0]
            sketched = values
        else:
            finite = np.isfinite(values)
            n_b = finite.sum(axis=0)
            self._nonfinite += values.shape[0] - n_b
            masked = np.where(finite, values, 0.0).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, masked.sum(axis=0) / np.maximum(n_b, 1), 0.0)
            m2_b = np.square(np.where(finite, values - mean_b, 0.0)).sum(axis=0, dtype=np.float64)
            min_b = np.where(finite, values, np.inf).min(axis=0)
            max_b = np.where(finite, values, -np.inf).max(axis=0)
            sketched = np.where(finite, values, np.float32(np.nan)).astype(np.float32)  # the sketch skips NaN
        self._combine(n_b, mean_b, m2_b, min_b, max_b)
        if sketched.shape[1]:
            self._sketches.update(np.ascontiguousarray(sketched, dtype=np.float32))

    def _combine(self, n_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray, min_b: Any, max_b: Any) -> None:
        """Chan, Golub & LeVeque's pairwise update of (count, mean, M2), feature by feature."""
        n_a = self._count
        n = n_a + n_b
        safe = np.maximum(n, 1).astype(np.float64)
        delta = mean_b - self._mean
        self._mean = np.where(n > 0, self._mean + delta * (n_b / safe), 0.0)
        self._m2 = self._m2 + m2_b + np.square(delta) * (n_a.astype(np.float64) * n_b / safe)
        self._count = n
        self._min = np.minimum(self._min, min_b)
        self._max = np.maximum(self._max, max_b)

    def _flush_scores(self) -> None:
        if self._score_fill == 0 or self._scores is None:
            return
        scores = self._scores[: self._score_fill]
        self._score_fill = 0
        self._reduce_scores(scores)

    def _reduce_scores(self, scores: np.ndarray) -> None:
        """Reduce a block of score rows (float32, ``[rows, classes]``) into the class and confidence histograms."""
        finite = np.isfinite(scores).all(axis=1)
        if not finite.all():
            scores = scores[finite]
        if scores.shape[0] == 0:
            return
        if self._score_kind is None:
            probabilities = bool(
                (scores >= 0).all() and (scores <= 1).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
            )
            self._score_kind = "probabilities" if probabilities else "logits"
        labels = scores.argmax(axis=1)
        if self._score_kind == "probabilities":
            confidence = scores.max(axis=1)
        else:  # the largest softmax probability: 1 / sum(exp(s - max))
            shifted = scores - scores.max(axis=1, keepdims=True)
            confidence = 1.0 / np.exp(shifted).sum(axis=1)
        bins = np.clip((np.clip(confidence, 0.0, 1.0) * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1)
        if self._confidence is None:
            self._confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        self._confidence += np.bincount(bins, minlength=CONFIDENCE_BINS)
        self._count_classes(labels.astype(np.int64))

    def _count_classes(self, labels: np.ndarray) -> None:
        if labels.size == 0:
            return
        counts = np.bincount(labels, minlength=self._classes.size)
        if counts.size > self._classes.size:
            counts[: self._classes.size] += self._classes
            self._classes = counts.astype(np.int64)
        else:
            self._classes += counts
        self.predictions += int(labels.size)

    # --- reading -------------------------------------------------------------------------------
    def feature_keys(self) -> list[tuple[str, int]]:
        """(kind, index) of every feature, in order."""
        if self.layout is None:
            return []
        keys = [(self.layout.mode, i) for i in range(self.layout.features)]
        return keys + [("projection", j) for j in range(self.projection_dims if self._projection is not None else 0)]

    def moments(self) -> dict[str, np.ndarray]:
        """count, nonfinite, mean, variance (population), min, max per feature (after a flush)."""
        self.flush()
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = np.where(self._count > 0, self._m2 / np.maximum(self._count, 1), np.nan)
        empty = self._count == 0
        return {
            "count": self._count.copy(),
            "nonfinite": self._nonfinite.copy(),
            "mean": np.where(empty, np.nan, self._mean),
            "variance": variance,
            "min": np.where(empty, np.nan, self._min),
            "max": np.where(empty, np.nan, self._max),
        }

    def sketch(self, feature: int) -> Any:
        """Feature ``feature``'s KLL sketch (a copy: a ``datasketches.kll_floats_sketch``)."""
        self.flush()
        if not 0 <= feature < len(self.feature_keys()):
            raise UsageError(f"input profile: no feature {feature} (it has {len(self.feature_keys())})")
        return _kll().kll_floats_sketch.deserialize(self._sketches.serialize(feature)[0])

    def sketch_bytes(self) -> list[bytes]:
        """The serialized sketch of every feature, in order."""
        self.flush()
        if not self.feature_keys():
            return []
        return [bytes(b) for b in self._sketches.serialize()]

    @property
    def classes(self) -> np.ndarray:
        self.flush()
        return self._classes.copy()

    @property
    def confidence(self) -> np.ndarray | None:
        self.flush()
        return None if self._confidence is None else self._confidence.copy()

    # --- merging -------------------------------------------------------------------------------
    def _same_settings(self, other: InputProfile) -> None:
        mine, theirs = (self.projection_dims, self.seed), (other.projection_dims, other.seed)
        if mine != theirs:
            raise UsageError(f"input profiles with different projections do not merge: (dims, seed) {mine} vs {theirs}")
        if self.layout is not None and other.layout is not None:
            a, b = self.layout, other.layout
            if (a.mode, a.features, a.input_size) != (b.mode, b.features, b.input_size):
                raise UsageError(f"input profiles of different layouts do not merge: {a} vs {b}")

    def merge(self, other: InputProfile) -> None:
        """Add ``other``'s stream to this profile (in place; ``other`` is left as it was, flushed)."""
        self._same_settings(other)
        self.flush()
        other.flush()
        if other.layout is not None:
            if self.layout is None:
                self._start(other.layout)
            self.rows += other.rows
            self._nonfinite = self._nonfinite + other._nonfinite
            self._combine(other._count, other._mean, other._m2, other._min, other._max)
            if self.feature_keys():
                self._sketches.merge(other._sketches)
        if other._classes.size:
            n = max(self._classes.size, other._classes.size)
            merged = np.zeros(n, np.int64)
            merged[: self._classes.size] += self._classes
            merged[: other._classes.size] += other._classes
            self._classes = merged
        if other._confidence is not None:
            self._confidence = (
                other._confidence.copy() if self._confidence is None else self._confidence + other._confidence
            )
        self.predictions += other.predictions

    # --- the spec --------------------------------------------------------------------------------
    def summary(self) -> InputsSummary:
        """This profile as the ``inputs`` part of a telemetry window (exact histograms)."""
        self.flush()
        features = []
        m = self.moments()
        for j, ((kind, index), sketch) in enumerate(zip(self.feature_keys(), self.sketch_bytes(), strict=True)):
            count = int(m["count"][j])
            stats: dict[str, float | None] = {"mean": None, "variance": None, "min": None, "max": None}
            if count:
                stats = {key: float(m[key][j]) for key in stats}
                stats["variance"] = max(0.0, stats["variance"] or 0.0)
            features.append(
                FeatureSummary(
                    kind=kind, index=index, count=count, nonfinite=int(m["nonfinite"][j]), sketch=sketch, **stats
                )
            )
        projection = None
        if self.layout is not None and self._projection is not None:
            projection = Projection(seed=self.seed, dims=self.projection_dims, input_size=self.layout.input_size)
        return InputsSummary(
            rows=self.rows,
            features=tuple(features),
            projection=projection,
            predictions=self.predictions,
            classes=tuple(int(c) for c in self._classes) if self._classes.size else None,
            confidence=None if self._confidence is None else tuple(int(c) for c in self._confidence),
        )

    def to_window_dict(self) -> dict[str, Any]:
        """:meth:`summary` as a document (``InputsSummary.to_dict``)."""
        return self.summary().to_dict()

    @classmethod
    def from_window_dict(cls, data: InputsSummary | Mapping[str, Any], *, k: int = DEFAULT_K) -> InputProfile:
        """A profile rebuilt from a window's ``inputs`` (a document is parsed strictly first, so its
        sketches are checked before the library sees them). Histograms are taken as exact counts:
        de-bias privatized ones with :mod:`tinymlops.observe.privacy` instead. ``max_features`` is
        taken as the window's feature count, so a profile read back merges with others read back."""
        summary = data if isinstance(data, InputsSummary) else InputsSummary.from_dict(data)
        kinds = [f.kind for f in summary.features]
        plain = [f for f in summary.features if f.kind != "projection"]
        projected = [f for f in summary.features if f.kind == "projection"]
        mode = plain[0].kind if plain else "none"
        if (
            any(f.kind != mode for f in plain)
            or kinds != [mode] * len(plain) + ["projection"] * len(projected)
            or [f.index for f in plain] != list(range(len(plain)))
            or [f.index for f in projected] != list(range(len(projected)))
            or (summary.projection is None) != (not projected)
            or (summary.projection is not None and summary.projection.dims != len(projected))
        ):
            raise SpecError(
                "inputs: features must be element or channel features 0..F-1 followed by projection features "
                "0..dims-1 to be read back as a profile"
            )
        dims = len(projected)
        seed = summary.projection.seed if summary.projection is not None else 0
        max_features = len(plain) if plain else DEFAULT_MAX_FEATURES
        profile = cls(max_features=max_features, projection_dims=dims, seed=seed, k=k)
        if summary.features:
            input_size = summary.projection.input_size if summary.projection is not None else len(plain)
            if mode == "element" and input_size != len(plain):
                raise SpecError(f"inputs: {len(plain)} element features but {input_size} values per row")
            profile._start(Layout(mode, len(plain), input_size))
            for j, f in enumerate(summary.features):
                profile._sketches.deserialize(f.sketch, j)
                profile._count[j] = f.count
                profile._nonfinite[j] = f.nonfinite
                if f.count:
                    assert f.mean is not None and f.variance is not None and f.min is not None and f.max is not None
                    profile._mean[j] = f.mean
                    profile._m2[j] = f.variance * f.count
                    profile._min[j] = f.min
                    profile._max[j] = f.max
        profile.rows = summary.rows
        profile.predictions = summary.predictions if summary.classes is not None else 0
        if summary.classes is not None:
            profile._classes = np.asarray(summary.classes, np.int64)
        if summary.confidence is not None:
            profile._confidence = np.asarray(summary.confidence, np.int64)
        return profile


__all__ = ["InputProfile", "Layout", "projection_matrix", "splitmix64"]
