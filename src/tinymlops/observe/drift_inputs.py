"""What the drift tests read: one feature's distribution (from a KLL sketch or from raw values) and
one histogram of counts — plus a strict loader for sketch bytes that came from a device.

A KLL sketch keeps a few hundred of the values it saw, each standing for ``2**level`` of them, and
the weights add up to the stream length ``n``. :class:`FeatureDistribution` is that *weighted
empirical distribution*: its CDF, quantile function and moments are computed exactly over the
retained items, so every statistic derived from it is the exact statistic of what the sketch
kept. How far that is from the statistic of the raw stream is the sketch's rank error,
``rank_error`` below (the library's single-sided normalized rank error, a 99%-confidence bound
on the error of any rank; 0 while the sketch still holds every value it was given).

Sketch bytes from a device are hostile until proven otherwise. ``datasketches``' own
``deserialize`` checks the header and the total length but not the level offsets inside: bytes
with a tampered offset deserialize "successfully" and then crash the process (a segfault) on the
first query. :func:`load_kll_floats` therefore has the whole layout checked first
(:mod:`tinymlops.spec.kll_format`) and only then hands the bytes to the library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tinymlops.errors import InvalidInputError
from tinymlops.spec.kll_format import kll_floats_items


def _is_kll_floats(sketch: Any) -> bool:
    import datasketches

    return isinstance(sketch, datasketches.kll_floats_sketch)


class QuantileSketch(Protocol):
    """What is used of a ``datasketches`` KLL sketch (``kll_floats_sketch``/``kll_doubles_sketch``)."""

    @property
    def n(self) -> int: ...

    def is_empty(self) -> bool: ...

    def is_estimation_mode(self) -> bool: ...

    def normalized_rank_error(self, as_pmf: bool) -> float: ...

    def get_min_value(self) -> float: ...

    def get_max_value(self) -> float: ...

    def __iter__(self) -> Any: ...


@dataclass(frozen=True, eq=False)
class FeatureDistribution:
    """A weighted empirical distribution: sorted distinct ``items`` with integer-valued ``weights``.

    ``n`` is ``weights.sum()``; ``rank_error`` is the bound on how far any rank of this
    distribution may be from the rank in the stream it summarizes (0 when it is the stream).
    :meth:`std` is the standard deviation that puts distances in units of the feature's spread:
    ``exact_std`` when the caller knows it (from the moments), else the weighted items' own.
    """

    items: np.ndarray
    weights: np.ndarray
    rank_error: float = 0.0
    minimum: float = math.nan
    maximum: float = math.nan
    exact_std: float | None = None
    cumulative: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative", np.cumsum(self.weights, dtype=np.float64))

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Iterable[float] | np.ndarray, *, what: str = "values") -> FeatureDistribution:
        """Every value kept (rank error 0): the raw data a sketch would summarize."""
        a = np.asarray(values, dtype=np.float64).ravel()
        if a.size and not np.all(np.isfinite(a)):
            raise InvalidInputError(f"{what}: contains NaN or infinite values")
        items, counts = np.unique(a, return_counts=True)
        return cls(
            items=items,
            weights=counts.astype(np.float64),
            rank_error=0.0,
            minimum=float(items[0]) if items.size else math.nan,
            maximum=float(items[-1]) if items.size else math.nan,
            exact_std=float(a.std()) if a.size else None,
        )

    @classmethod
    def from_sketch(
        cls, sketch: QuantileSketch, *, count: int | None = None, std: float | None = None, what: str = "sketch"
    ) -> FeatureDistribution:
        """The sketch's retained items and weights. ``count``, when given (the device's moment
        count), must equal the sketch's ``n``; ``std``, when given, is the exact standard deviation."""
        n = int(sketch.n)
        if count is not None and int(count) != n:
            raise InvalidInputError(f"{what}: count {count} does not match the sketch's {n} values")
        if sketch.is_empty():
            return cls(items=np.empty(0), weights=np.empty(0), exact_std=std)
        if _is_kll_floats(sketch):
            # the weights come from the serialized levels, not the binding's iterator (it reports
            # weight 1 for every item of a merged sketch: see tinymlops.spec.kll_format.kll_floats_items)
            raw_items, raw_weights = kll_floats_items(sketch.serialize(), what)  # type: ignore[attr-defined]
            items = np.asarray(raw_items, dtype=np.float64)
            weights = np.asarray(raw_weights, dtype=np.float64)
        else:  # another sketch type: its iterator (the weight check below catches a wrong one)
            pairs = list(sketch)
            items = np.fromiter((p[0] for p in pairs), dtype=np.float64, count=len(pairs))
            weights = np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs))
        if not np.all(np.isfinite(items)):
            raise InvalidInputError(f"{what}: the sketch holds NaN or infinite values")
        if int(weights.sum()) != n:
            raise InvalidInputError(f"{what}: the sketch's weights add up to {int(weights.sum())}, not its n = {n}")
        order = np.argsort(items, kind="stable")
        items, weights = items[order], weights[order]
        distinct, first = np.unique(items, return_index=True)
        merged = np.add.reduceat(weights, first) if items.size else weights
        error = float(sketch.normalized_rank_error(False)) if sketch.is_estimation_mode() else 0.0
        return cls(
            items=distinct,
            weights=merged,
            rank_error=error,
            minimum=float(sketch.get_min_value()),
            maximum=float(sketch.get_max_value()),
            exact_std=std,
        )

    # --- queries ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        cum = self.cumulative
        return round(float(cum[-1])) if cum.size else 0

    @property
    def empty(self) -> bool:
        return self.items.size == 0

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """``P(X <= x)`` (right-continuous), vectorized."""
        cum = self.cumulative
        idx = np.searchsorted(self.items, np.asarray(x, dtype=np.float64), side="right")
        padded = np.concatenate(([0.0], cum))
        return padded[idx] / cum[-1]

    def quantiles(self, ranks: np.ndarray) -> np.ndarray:
        """Inverted CDF: the smallest item whose CDF reaches each rank (``numpy``'s ``inverted_cdf``)."""
        cum = self.cumulative
        targets = np.asarray(ranks, dtype=np.float64) * cum[-1]
        # a rank times n may land a rounding error above an exact cumulative weight
        idx = np.searchsorted(cum, targets - 1e-9 * cum[-1], side="left")
        return self.items[np.minimum(idx, self.items.size - 1)]

    def std(self) -> float:
        """The exact standard deviation when known, else the weighted items' (population) one."""
        if self.exact_std is not None:
            return self.exact_std
        if self.empty:
            return 0.0
        mean = float(np.average(self.items, weights=self.weights))
        return float(np.sqrt(np.average((self.items - mean) ** 2, weights=self.weights)))


@dataclass(frozen=True, eq=False)
class Histogram:
    """Counts per bin (classes, confidence bins): finite and non-negative. De-biased counts from
    local differential privacy may be fractional; clip their negative estimates to 0 before."""

    counts: np.ndarray

    @classmethod
    def of(cls, counts: Iterable[float] | np.ndarray, *, what: str = "histogram") -> Histogram:
        try:
            a = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what}: counts must be numbers ({exc})") from exc
        if a.ndim != 1:
            raise InvalidInputError(f"{what}: counts must be one-dimensional, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise InvalidInputError(f"{what}: counts contain NaN or infinite values")
        if np.any(a < 0):
            raise InvalidInputError(f"{what}: counts must be non-negative (bin {int(np.argmax(a < 0))} is {a.min()})")
        return cls(counts=a)

    @property
    def n(self) -> float:
        return float(self.counts.sum())

    def proportions(self, bins: int) -> np.ndarray:
        """Proportions over ``bins`` bins (a shorter histogram is padded with empty bins)."""
        out = np.zeros(bins)
        out[: self.counts.size] = self.counts
        total = out.sum()
        return out / total if total > 0 else out


# --- sketch bytes from the other side --------------------------------------------------------
def load_kll_floats(data: bytes | bytearray | memoryview, *, what: str = "sketch") -> Any:
    """A ``datasketches.kll_floats_sketch`` from device bytes, checked structurally first
    (:func:`tinymlops.spec.kll_format.kll_floats_n`); anything else is an :class:`InvalidInputError`."""
    import datasketches

    from tinymlops.spec.kll_format import kll_floats_n
    from tinymlops.spec.telemetry import MAX_SKETCH_BYTES

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInputError(f"{what}: a sketch must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_SKETCH_BYTES:
        raise InvalidInputError(f"{what}: {len(data)} bytes is over the {MAX_SKETCH_BYTES}-byte limit for one sketch")
    n = kll_floats_n(data, what)  # SpecError (an InvalidInputError) on any defect
    try:
        sketch = datasketches.kll_floats_sketch.deserialize(data)
    except (RuntimeError, ValueError) as exc:  # the library's own checks
        raise InvalidInputError(f"{what}: not a readable KLL sketch ({exc})") from exc
    if sketch.n != n:
        raise InvalidInputError(f"{what}: the library read n = {sketch.n} where the bytes say {n}")
    return sketch
