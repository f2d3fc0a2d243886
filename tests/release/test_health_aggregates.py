"""The weighted quantiles health reports are merged with: each report's p50 stands for its calls."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tinymlops.release.health import weighted_median, weighted_quantile

PAIRS = st.lists(st.tuples(st.floats(0, 1e4, allow_nan=False), st.integers(0, 50)), max_size=30)


@given(PAIRS, st.floats(0.01, 1.0))
def test_a_weighted_quantile_is_the_quantile_of_the_expanded_values(pairs: list[tuple[float, int]], q: float) -> None:
    expanded = sorted(v for v, w in pairs for _ in range(w))
    got = weighted_quantile(pairs, q)
    if not expanded:
        assert got is None
        return
    # the smallest value whose cumulative count reaches q of the total ("inverted_cdf")
    assert got == expanded[max(0, math.ceil(q * len(expanded) - 1e-9) - 1)]
    assert got == float(np.quantile(np.array(expanded), q, method="inverted_cdf"))

def test_the_weighted_median_is_the_lower_median_and_ignores_weightless_values() -> None:
    assert weighted_median([(1.0, 1), (2.0, 1)]) == 1.0
    assert weighted_median([(3.0, 10), (1.0, 1)]) == 3.0
    assert weighted_median([(5.0, 0)]) is None and weighted_median([]) is None
