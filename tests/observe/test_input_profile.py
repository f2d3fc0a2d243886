"""Input profiles on real data (scikit-learn's 8×8 digits, 64 features): merging N device profiles
equals one profile over the union (moments to float tolerance, KLL ranks within the sketch's
stated error), accuracy against exact quantiles, the feature rules (elements, channels, the
projection only), non-finite values, outputs, and the round trip through the spec."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tinymlops.errors import SpecError, UsageError
from tinymlops.observe.sketches import InputProfile, projection_matrix
from tinymlops.spec.telemetry import CONFIDENCE_BINS, MAX_SKETCH_BYTES, InputsSummary

QS = np.linspace(0.01, 0.99, 99)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)  # 1797 × 64, pixel intensities 0..16


def _exact_rank(values: np.ndarray, x: float) -> tuple[float, float]:
    """The exact normalized rank interval of ``x`` in ``values`` (< x, <= x): ties make it an interval."""
    return float(np.mean(values < x)), float(np.mean(values <= x))


def _max_rank_error(sketch, values: np.ndarray) -> float:
    """The largest distance between each requested rank and the exact rank of the sketch's answer."""
    worst = 0.0
    for q, x in zip(QS, sketch.get_quantiles(QS), strict=True):
        lo, hi = _exact_rank(values, float(x))
        worst = max(worst, 0.0 if lo <= q <= hi else min(abs(q - lo), abs(q - hi)))
    return worst


def _feed(profile: InputProfile, x: np.ndarray, batch: int) -> None:
    for i in range(0, len(x), batch):
        profile.add(x[i : i + batch])


def test_merging_device_profiles_equals_one_profile_over_the_union(digits: np.ndarray) -> None:
    """10 'devices' each see a different slice of the digits (different batch sizes, some inputs
    doubled to pass the sketches' exact mode); their merge equals one profile over everything."""
    x = np.concatenate([digits] * 4)  # 7188 rows: every sketch is in estimation mode
    parts = np.array_split(np.random.default_rng(0).permutation(len(x)), 10)
    devices = []
    for i, idx in enumerate(parts):
        p = InputProfile(seed=3, buffer_rows=17 + 13 * i)
        _feed(p, x[idx], batch=1 + i)
        devices.append(p)
    merged = InputProfile(seed=3)
    for p in devices:
        merged.merge(p)
    union = InputProfile(seed=3)
    _feed(union, x, batch=32)

    a, b = merged.moments(), union.moments()
    assert merged.rows == union.rows == len(x)
    assert np.array_equal(a["count"], b["count"])
    for key in ("mean", "variance", "min", "max"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-9, err_msg=key)
    # the moments are the exact ones of the raw values (projection features included)
    values = np.concatenate([x, x @ projection_matrix(3, 64, 8)], axis=1).astype(np.float64)
    np.testing.assert_allclose(a["mean"], values.mean(axis=0), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(a["variance"], values.var(axis=0), rtol=1e-6, atol=1e-6)

    worst_merged = worst_union = 0.0
    for j in range(merged.n_features):
        sm, su = merged.sketch(j), union.sketch(j)
        assert sm.is_estimation_mode()
        eps = sm.normalized_rank_error(False)
        col = values[:, j].astype(np.float32)
        worst_merged = max(worst_merged, _max_rank_error(sm, col))
        worst_union = max(worst_union, _max_rank_error(su, col))
        assert _max_rank_error(sm, col) <= eps, f"feature {j}"
    print(f"max rank error over 72 features: merged {worst_merged:.4f}, single {worst_union:.4f}")


def test_sketch_accuracy_and_size_on_the_digits(digits: np.ndarray) -> None:
    p = InputProfile()
    _feed(p, digits, batch=1)
    sizes = [len(b) for b in p.sketch_bytes()]
    assert len(sizes) == 72 and max(sizes) <= MAX_SKETCH_BYTES
    print(f"serialized sketch bytes per feature after {len(digits)} rows: mean {np.mean(sizes):.0f}, max {max(sizes)}")
    errors = [_max_rank_error(p.sketch(j), digits[:, j]) for j in range(64)]
    assert max(errors) <= p.sketch(0).normalized_rank_error(False)
    # a sketch that has seen fewer than k values keeps them all: its quantiles are exact
    small = InputProfile()
    small.add(digits[:150])
    assert all(_max_rank_error(small.sketch(j), digits[:150, j]) == 0.0 for j in range(64))


def test_per_channel_features_average_over_the_spatial_axes(digits: np.ndarray) -> None:
    images = digits.reshape(-1, 1, 8, 8)
    x = np.concatenate([images, 16.0 - images, images[:, :, ::-1]], axis=1)  # 3 channels, [batch, 3, 8, 8]
    p = InputProfile(projection_dims=4)
    _feed(p, x, batch=5)
    assert p.feature_keys() == [("channel", 0), ("channel", 1), ("channel", 2)] + [("projection", j) for j in range(4)]
    channel_means = x.mean(axis=(2, 3), dtype=np.float64)
    m = p.moments()
    np.testing.assert_allclose(m["mean"][:3], channel_means.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(m["variance"][:3], channel_means.var(axis=0), rtol=1e-4)
    np.testing.assert_allclose(m["max"][:3], channel_means.max(axis=0), rtol=1e-6)


def test_wide_inputs_keep_only_the_projection(digits: np.ndarray) -> None:
    wide = np.repeat(digits, 13, axis=1)[:, :784]  # 784 values per row, above the 64-feature cap
    p = InputProfile(max_features=64, projection_dims=8)
    _feed(p, wide, batch=16)
    assert p.feature_keys() == [("projection", j) for j in range(8)]
    expected = (wide.astype(np.float64) @ projection_matrix(0, 784, 8).astype(np.float64)).mean(axis=0)
    np.testing.assert_allclose(p.moments()["mean"], expected, rtol=1e-5)
    everything = InputProfile(max_features=784, projection_dims=0)
    everything.add(wide[:10])
    assert len(everything.feature_keys()) == 784
    nothing = InputProfile(max_features=64, projection_dims=0)
    nothing.add(wide[:10])
    assert nothing.feature_keys() == [] and nothing.summary().rows == 10


def _splitmix64_reference(x: int) -> int:
    """SplitMix64 written out with Python integers, independently of the numpy version under test."""
    mask = (1 << 64) - 1
    z = x & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_the_projection_is_a_pure_function_of_seed_and_shape() -> None:
    a = projection_matrix(42, 64, 8)
    assert np.array_equal(a, projection_matrix(42, 64, 8))
    assert not np.array_equal(a, projection_matrix(43, 64, 8))
    assert set(np.unique(np.abs(a))) == {np.float32(1 / 8)}
    for i in (0, 1, 7, 100, 511):
        bits = _splitmix64_reference(42 + (i + 1) * 0x9E3779B97F4A7C15)
        assert a.reshape(-1)[i] == (np.float32(-1 / 8) if bits >> 63 else np.float32(1 / 8))
    assert abs(a.mean()) < 0.1  # signs are balanced


def test_non_finite_values_are_counted_apart(digits: np.ndarray) -> None:
    x = digits[:100].copy()
    x[3, 5] = np.nan
    x[7, 5] = np.inf
    x[9, 0] = -np.inf
    p = InputProfile(projection_dims=2)
    _feed(p, x, batch=8)
    m = p.moments()
    assert m["nonfinite"][5] == 2 and m["count"][5] == 98
    assert m["nonfinite"][0] == 1
    assert list(m["nonfinite"][64:]) == [3, 3]  # a projection of a row with any non-finite value
    assert np.all(m["count"] + m["nonfinite"] == 100)
    finite = x[:, 5][np.isfinite(x[:, 5])].astype(np.float64)
    assert m["mean"][5] == pytest.approx(finite.mean())
    assert p.sketch(5).n == 98
    InputsSummary.from_dict(p.to_window_dict())  # the spec's consistency rules hold


def test_outputs_make_the_class_and_confidence_histograms() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 10)).astype(np.float32) * 3
    p = InputProfile(buffer_rows=64)
    for i in range(0, 500, 7):
        p.observe(logits[i : i + 7])
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert np.array_equal(p.classes, np.bincount(logits.argmax(axis=1), minlength=10))
    bins = np.minimum((probs.max(axis=1) * CONFIDENCE_BINS).astype(int), CONFIDENCE_BINS - 1)
    assert np.array_equal(p.confidence, np.bincount(bins, minlength=CONFIDENCE_BINS))
    q = InputProfile()
    q.observe(probs)  # already probabilities: taken as they are
    assert np.array_equal(q.confidence, p.confidence)
    labels = InputProfile(classes=10)
    labels.observe(logits.argmax(axis=1))
    assert np.array_equal(labels.classes, p.classes) and labels.confidence is None
    with pytest.raises(UsageError, match="within"):
        labels.observe(np.array([10]))
    with pytest.raises(UsageError, match="class scores"):
        p.observe(np.zeros((2, 3, 4), np.float32))


def test_the_window_round_trip_and_merging_read_back_profiles(digits: np.ndarray) -> None:
    devices = []
    for part in np.array_split(digits, 3):
        p = InputProfile(seed=9)
        _feed(p, part, batch=10)
        p.observe(np.eye(10, dtype=np.float32)[(part.sum(axis=1) % 10).astype(int)])
        devices.append(p)
    docs = [d.to_window_dict() for d in devices]
    back = [InputProfile.from_window_dict(doc) for doc in docs]
    assert back[0].summary() == devices[0].summary()
    server = back[0]
    server.merge(back[1])
    server.merge(back[2])
    union = InputProfile(seed=9)
    for d in devices:
        union.merge(d)
    a, b = server.moments(), union.moments()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9)
    assert np.array_equal(server.classes, union.classes) and server.predictions == len(digits)
    with pytest.raises(SpecError):
        InputProfile.from_window_dict({**docs[0], "features": docs[0]["features"][::-1]})


def test_profiles_of_different_layouts_or_projections_do_not_merge(digits: np.ndarray) -> None:
    a, b, c = InputProfile(seed=1), InputProfile(seed=2), InputProfile(seed=1)
    a.add(digits[:5])
    b.add(digits[:5])
    c.add(digits[:5, :32])
    with pytest.raises(UsageError, match="projections"):
        a.merge(b)
    with pytest.raises(UsageError, match="layouts"):
        a.merge(c)
    with pytest.raises(UsageError, match="layout"):
        a.add(digits[:5, :32])
    with pytest.raises(UsageError, match="numeric"):
        a.add(np.array([["x"] * 64]))


def test_rows_one_at_a_time_and_a_read_mid_buffer_hold_every_row(digits: np.ndarray) -> None:
    """The hot path copies single rows into the buffer (shaped like the rows) and reduces a block at a
    time, each feature's block sorted first: read at any point — here mid-buffer — a profile holds
    exactly the rows it was given, the same as one profile fed everything in one batch."""
    x = digits[:1000]
    one_by_one = InputProfile(buffer_rows=256)
    for i in range(len(x) - 37):  # 963 rows: three full blocks and a partial one
        one_by_one.add(x[i : i + 1])
    at_once = InputProfile(buffer_rows=4096)
    at_once.add(x[: len(x) - 37])
    assert one_by_one._fill == (len(x) - 37) % 256  # the read below happens mid-buffer
    a, b = one_by_one.summary(), at_once.summary()
    assert a.rows == b.rows == len(x) - 37
    for fa, fb in zip(a.features, b.features, strict=True):
        assert (fa.kind, fa.index, fa.count, fa.nonfinite) == (fb.kind, fb.index, fb.count, fb.nonfinite)
        assert (fa.min, fa.max) == (fb.min, fb.max)
        assert fa.mean == pytest.approx(fb.mean, rel=1e-9, abs=1e-9)
        assert fa.variance == pytest.approx(fb.variance, rel=1e-6, abs=1e-9)
    exact = x[: len(x) - 37].astype(np.float64)
    assert [f.mean for f in a.features[:64]] == pytest.approx(exact.mean(axis=0), rel=1e-9, abs=1e-9)
    for j in (0, 20, 43):
        assert one_by_one.sketch(j).n == len(x) - 37
        assert _max_rank_error(one_by_one.sketch(j), x[: len(x) - 37, j]) <= one_by_one.sketch(j).normalized_rank_error(
            False
        )
    # reading flushed the buffer; the stream goes on after it
    for i in range(len(x) - 37, len(x)):
        one_by_one.add(x[i : i + 1])
    assert one_by_one.summary().rows == len(x) and one_by_one.moments()["count"][0] == len(x)


def test_the_hot_path_takes_rows_of_any_shape_and_dtype_as_the_slow_path_does() -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(300, 3, 8, 8)).astype(np.float32)  # 192 values > max_features: channels
    fast, slow = InputProfile(buffer_rows=64), InputProfile(buffer_rows=64)
    for i in range(len(images)):
        fast.add(images[i : i + 1])  # [1, 3, 8, 8] rows: channel features
    for i in range(0, len(images), 7):
        slow.add(images[i : i + 7])
    assert [k for k in fast.feature_keys()] == [("channel", c) for c in range(3)] + [
        ("projection", j) for j in range(8)
    ]
    assert fast.moments()["mean"] == pytest.approx(slow.moments()["mean"], rel=1e-9, abs=1e-12)
    assert fast.moments()["min"] == pytest.approx(slow.moments()["min"])
    # one value per row ([1] arrays), then the same values as float64 and as a 0-d array
    scalars = InputProfile(buffer_rows=16)
    values = rng.normal(size=50)
    for v in values[:20]:
        scalars.add(np.array([v], np.float32))
    for v in values[20:49]:
        scalars.add(np.array([v]))  # float64: another dtype, re-keyed, cast into the buffer
    scalars.add(np.float32(values[49]))
    m = scalars.moments()
    assert m["count"][0] == 50 and m["mean"][0] == pytest.approx(values.astype(np.float32).mean(), rel=1e-6)
    # a row of another shape is still refused, whatever went through the hot path before
    with pytest.raises(UsageError, match="do not fit"):
        fast.add(np.zeros((1, 3, 8, 9), np.float32))
    # scores one at a time: the same histograms as in one batch
    scores = rng.dirichlet(np.ones(5), size=200).astype(np.float32)
    one, batch = InputProfile(buffer_rows=32), InputProfile()
    for row in scores:
        one.observe(row[None, :])
    batch.observe(scores)
    assert np.array_equal(one.classes, batch.classes) and np.array_equal(one.confidence, batch.confidence)


@pytest.mark.parametrize("order", ["increasing", "decreasing", "sawtooth", "random"])
def test_sorted_blocks_keep_the_stated_rank_error_whatever_the_stream_order(order: str) -> None:
    """KLL's bound holds for any (oblivious) order; the profile sorts each block before the sketch
    sees it. Adversarial-looking orders stay within the stated bound."""
    n = 60_000
    base = np.random.default_rng(7).lognormal(size=n).astype(np.float32)
    stream = {
        "increasing": np.sort(base),
        "decreasing": np.sort(base)[::-1],
        "sawtooth": np.sort(base).reshape(60, -1).T.reshape(-1),
        "random": base,
    }[order]
    profile = InputProfile(projection_dims=0)
    for i in range(0, n, 100):
        profile.add(stream[i : i + 100, None])
    sketch = profile.sketch(0)
    assert sketch.n == n and sketch.is_estimation_mode()
    assert _max_rank_error(sketch, stream) <= sketch.normalized_rank_error(False)


def test_a_whole_buffer_of_rows_is_reduced_without_the_copy_and_keeps_every_row(digits: np.ndarray) -> None:
    """A batch of at least a buffer's worth, given while the buffer is empty, is reduced as it is (the
    recorder hands its buffer over this way); what does not fill a block still waits in the buffer."""
    x = digits[:200]
    big = InputProfile(buffer_rows=64)
    big.add(x)  # three blocks reduced as they are, 8 rows buffered
    assert big._fill == 8 and big.rows == 192
    small = InputProfile(buffer_rows=64)
    for i in range(len(x)):
        small.add(x[i : i + 1])
    a, b = big.summary(), small.summary()
    assert a.rows == b.rows == 200
    for fa, fb in zip(a.features, b.features, strict=True):
        assert (fa.count, fa.min, fa.max) == (fb.count, fb.min, fb.max)
        assert fa.mean == pytest.approx(fb.mean, rel=1e-9, abs=1e-12)
    scores = np.random.default_rng(2).dirichlet(np.ones(10), size=150).astype(np.float32)
    whole, rows = InputProfile(buffer_rows=64), InputProfile(buffer_rows=64)
    whole.observe(scores.astype(np.float64))  # float64: taken as float32, as the buffer takes it
    for row in scores:
        rows.observe(row[None, :])
    assert np.array_equal(whole.classes, rows.classes) and np.array_equal(whole.confidence, rows.confidence)


def test_a_profile_takes_one_kind_of_outputs() -> None:
    """A window's confidence histogram counts every prediction: labels after scores, or scores after
    labels, would break that, so the second kind is refused (the recorder counts it in profile_errors)."""
    scores = InputProfile()
    scores.observe(np.array([[0.2, 0.8]], np.float32))
    with pytest.raises(UsageError, match="labels"):
        scores.observe(np.array([1]))
    labels = InputProfile()
    labels.observe(np.array([1, 0]))
    with pytest.raises(UsageError, match="scores"):
        labels.observe(np.array([[0.2, 0.8]], np.float32))
    assert InputsSummary.from_dict(scores.to_window_dict()).predictions == 1
    assert InputsSummary.from_dict(labels.to_window_dict()).predictions == 2
