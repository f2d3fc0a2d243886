"""The device's upload store (tinymlops.observe.upload_store) on real SQLite files, with windows filled by
the real TelemetryRecorder and batches sealed with real device keys: what survives a restart (windows,
the batch in flight, the epsilon budget), the bound under 10,000 windows (merged, counts exact, drops
counted), full and unwritable storage, and that no raw input row leaves in a payload."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.errors import UsageError
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.recorder import TelemetryRecorder
from tinymlops.observe.sealing import open_batch
from tinymlops.observe.sketches import InputProfile
from tinymlops.observe.upload_store import UploadStore
from tinymlops.spec.telemetry import MAX_WINDOWS, LatencyBuckets, Performance, TelemetryWindow

B1, B2, B3 = "b1" * 16, "b2" * 16, "b3" * 16
KEYS = DeviceKeys.generate()


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _endpoint(request: Request) -> Response:
    z = request.inputs[:, :3].astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return Response({"p": (p / p.sum(axis=1, keepdims=True)).astype(np.float32)}, ("main",))


def make_recorder(bundle: str, clock: Clock, privacy: PrivacyPolicy | None = None, inputs: bool = True):
    policy = TelemetryPolicy(inputs=inputs, classes=3, projection_dims=2, privacy=privacy or PrivacyPolicy())
    recorder = TelemetryRecorder(bundle, model="tiny:1", policy=policy, clock=clock)
    return recorder, compose([recorder], _endpoint)


def serve_window(recorder, predict, clock: Clock, x: np.ndarray, seconds: float = 60.0) -> TelemetryWindow:
    for row in x:
        predict(Request(row[None, :]))
    clock.now += seconds
    window = recorder.take_window(privatize_histograms=False)
    assert window is not None
    return window


def perf_window(bundle: str, start: float, requests: int) -> TelemetryWindow:
    """A performance-only window (what a bundle without an input profile sends)."""
    latency = LatencyBuckets(((500, requests),), 0.001, 0.002)
    return TelemetryWindow(bundle, start, start + 1.0, Performance(requests=requests, latency=latency))


def open_store(path: Path, clock: Clock, **kw) -> UploadStore:
    return UploadStore(path, KEYS.signing, clock=clock, rng=np.random.default_rng(7), **kw)


def opened(batch):
    return open_batch(batch.body, batch.signature, KEYS.signing.public_key()).batch


def test_windows_the_batch_in_flight_and_the_budget_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.sqlite3"
    privacy = PrivacyPolicy(classes_epsilon=1.0, window_epsilon=1.0, day_epsilon=2.0)
    recorder, predict = make_recorder(B1, clock, privacy)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    store = open_store(path, clock)
    for i in range(3):
        store.add(serve_window(recorder, predict, clock, x[10 * i : 10 * i + 10]), privacy)
    store.close()

    store = open_store(path, clock)  # a restart: the windows are there
    assert store.status().pending_windows == 3
    batch = store.next_batch()
    assert batch is not None and batch.windows == 3 and batch.requests == 30
    sent = opened(batch)
    # a day's cap of 2: two windows release their class histogram, the third is withheld
    assert [w.privacy.withheld for w in sent.windows] == [(), (), ("classes",)]
    assert [w.privacy.epsilon_spent for w in sent.windows] == [1.0, 1.0, 0.0]
    store.close()

    store = open_store(path, clock)  # a restart with the batch in flight: the very same bytes
    again = store.next_batch()
    assert again is not None and (again.digest, again.body) == (batch.digest, batch.body)
    assert store.acknowledge(batch.digest) == 3
    assert store.next_batch() is None
    store.add(serve_window(recorder, predict, clock, x[30:]), privacy)
    store.close()

    store = open_store(path, clock)  # the budget spent before the restarts still counts: withheld
    (window,) = opened(store.next_batch()).windows
    assert window.privacy.withheld == ("classes",) and window.inputs.classes is None
    clock.now += 86_400.0  # a day later the budget is back
    store.acknowledge(store.in_flight.digest)
    store.add(serve_window(recorder, predict, clock, x[:5]), privacy)
    (window,) = opened(store.next_batch()).windows
    assert window.privacy.classes is not None and window.privacy.classes.mechanism == "randomized_response"
    store.close()


@pytest.mark.slow  # ~15 s: 10,000 adds, each a transaction (and a merge)
def test_the_bound_holds_over_10000_windows_and_merging_keeps_every_request(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "t.sqlite3", clock, max_windows=40)
    rng = np.random.default_rng(1)
    bundles = (B1, B2, B3)
    added = dict.fromkeys(bundles, 0)
    t0 = time.perf_counter()
    for i in range(10_000):
        bundle = bundles[int(rng.integers(3))]
        n = int(rng.integers(1, 50))
        store.add(perf_window(bundle, 1000.0 + i, n))
        added[bundle] += n
        if i % 997 == 0:
            conn = sqlite3.connect(store.path)
            (count,) = conn.execute("SELECT COUNT(*) FROM windows").fetchone()
            conn.close()
            assert count <= 40
    elapsed = time.perf_counter() - t0
    status = store.status()
    assert status.pending_windows == 40 and status.dropped_windows == 0
    assert status.merged_windows == 10_000 - 40
    delivered = dict.fromkeys(bundles, 0)
    spans: dict[str, list[tuple[float, float]]] = {b: [] for b in bundles}
    while (batch := store.next_batch()) is not None:
        for w in opened(batch).windows:
            delivered[w.bundle_id] += w.performance.requests
            spans[w.bundle_id].append((w.window_start, w.window_end))
            assert w.performance.latency is not None and w.performance.latency.count == w.performance.requests
        store.acknowledge(batch.digest)
    assert delivered == added  # nothing lost, nothing counted twice
    for bundle, s in spans.items():  # a bundle's windows never overlap, even merged
        s.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(s)), bundle
    assert store.status().merged_windows == 0  # reported, then acknowledged
    print(f"10,000 windows added in {elapsed:.1f}s")


def test_merged_windows_keep_their_input_profiles_exactly(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock)
    store = open_store(tmp_path / "t.sqlite3", clock, max_windows=3)
    rng = np.random.default_rng(2)
    parts = [rng.normal(loc=i, size=(int(rng.integers(5, 30)), 4)).astype(np.float32) for i in range(12)]
    for part in parts:
        store.add(serve_window(recorder, predict, clock, part))
    batch = store.next_batch()
    windows = opened(batch).windows
    assert len(windows) == 3
    everything = np.concatenate(parts)
    assert sum(w.inputs.rows for w in windows) == len(everything)
    merged = InputProfile.from_window_dict(windows[0].inputs)
    for w in windows[1:]:
        merged.merge(InputProfile.from_window_dict(w.inputs))
    summary = merged.summary()
    first = next(f for f in summary.features if (f.kind, f.index) == ("element", 0))
    assert first.mean == pytest.approx(float(everything[:, 0].mean(dtype=np.float64)), rel=1e-5)
    assert first.min == pytest.approx(float(everything[:, 0].min())) and first.count == len(everything)
    assert sum(summary.classes) == len(everything)


def test_a_window_is_dropped_only_when_no_bundle_has_two_and_the_drop_is_reported(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "t.sqlite3", clock, max_windows=2)
    store.add(perf_window(B1, 10.0, 5))
    store.add(perf_window(B2, 20.0, 6))
    store.add(perf_window(B3, 30.0, 7))  # three bundles, one window each: the oldest (B1) goes
    status = store.status()
    assert (status.pending_windows, status.merged_windows, status.dropped_windows) == (2, 0, 1)
    batch = opened(store.next_batch())
    assert [w.bundle_id for w in batch.windows] == [B2, B3]
    assert batch.store is not None and batch.store.dropped_windows == 1 and batch.store.status == "ok"


def test_a_refused_batch_is_dropped_and_counted_and_an_acknowledged_one_resets_the_counts(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path / "t.sqlite3", clock, max_windows=2)
    for i in range(3):
        store.add(perf_window(B1, 10.0 * i, 1))
    first = store.next_batch()
    assert opened(first).store.merged_windows == 1
    with pytest.raises(UsageError, match="in flight"):
        store.acknowledge("00" * 32)
    assert store.refuse(first.digest, "400 SpecError: test") == 2
    store.add(perf_window(B1, 100.0, 1))
    second = store.next_batch()
    status = opened(second).store
    assert (status.merged_windows, status.dropped_windows) == (1, 2)  # still unreported: carried again
    store.acknowledge(second.digest)
    assert (store.status().merged_windows, store.status().dropped_windows) == (0, 0)


def test_a_batch_never_exceeds_the_window_limit_or_the_byte_limit_asked(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock)
    store = open_store(tmp_path / "t.sqlite3", clock, max_windows=500)
    rng = np.random.default_rng(3)
    for _ in range(MAX_WINDOWS + 6):
        store.add(serve_window(recorder, predict, clock, rng.normal(size=(3, 4)).astype(np.float32)))
    full = store.next_batch()
    assert full.windows == MAX_WINDOWS
    store.acknowledge(full.digest)
    small = store.next_batch(limit_bytes=1500)
    assert len(small.body) <= 1500 and 1 <= small.windows < 6
    store.acknowledge(small.digest)
    tiny = store.next_batch(limit_bytes=10)  # at least one window, whatever its size
    assert tiny.windows == 1


def test_a_full_store_keeps_windows_in_memory_reports_it_and_recovers(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock)
    path = tmp_path / "t.sqlite3"
    store = open_store(path, clock, max_file_bytes=64 * 1024, memory_windows=8)
    rng = np.random.default_rng(4)
    served = 0
    for _ in range(60):  # each window ~2-3 KiB of sketches: the 64 KiB file fills
        n = int(rng.integers(20, 40))
        store.add(serve_window(recorder, predict, clock, rng.normal(size=(n, 4)).astype(np.float32)))
        served += n
    status = store.status()
    assert status.status == "full" and "full" in status.error
    assert path.stat().st_size <= 64 * 1024
    batch = store.next_batch()
    sent = opened(batch)
    assert sent.store.status == "full" and "full" in sent.store.error
    total = batch.requests
    store.acknowledge(batch.digest)  # the oldest windows leave the file: room again
    while (batch := store.next_batch()) is not None:
        total += batch.requests
        store.acknowledge(batch.digest)
    status = store.status()
    dropped = status.dropped_windows
    assert total <= served and (total == served) == (dropped == 0)
    store.add(serve_window(recorder, predict, clock, rng.normal(size=(5, 4)).astype(np.float32)))
    assert store.status().status == "ok"  # it recovered once there was room


def test_an_unwritable_store_keeps_windows_in_memory_and_says_so(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock)
    directory = tmp_path / "telemetry"
    store = open_store(directory / "t.sqlite3", clock, memory_windows=4)
    rng = np.random.default_rng(5)
    store.add(serve_window(recorder, predict, clock, rng.normal(size=(3, 4)).astype(np.float32)))
    shutil.rmtree(directory)
    directory.write_bytes(b"not a directory")  # the directory is gone, and cannot come back
    requests = 0
    for _ in range(10):
        w = serve_window(recorder, predict, clock, rng.normal(size=(2, 4)).astype(np.float32))
        requests += w.performance.requests
        store.add(w)  # never raises
    status = store.status()
    assert status.status == "unwritable" and status.error
    assert status.pending_windows == 4 and status.merged_windows == 6  # bounded in memory, merged
    batch = store.next_batch()
    sent = opened(batch)
    assert sent.store.status == "unwritable" and batch.requests == requests
    assert store.next_batch().digest == batch.digest  # in flight in memory: the same bytes
    directory.unlink()  # the storage comes back
    store.acknowledge(batch.digest)
    store.add(serve_window(recorder, predict, clock, rng.normal(size=(2, 4)).astype(np.float32)))
    assert store.status().status == "ok" and (directory / "t.sqlite3").exists()
    assert opened(store.next_batch()).store.status == "ok"


def test_privatized_histograms_are_withheld_when_the_spend_cannot_be_made_durable(tmp_path: Path) -> None:
    clock = Clock()
    privacy = PrivacyPolicy(classes_epsilon=2.0, confidence_epsilon=1.0)
    recorder, predict = make_recorder(B1, clock, privacy)
    (tmp_path / "file").write_bytes(b"x")
    store = open_store(tmp_path / "file" / "t.sqlite3", clock)  # never opens: budgets unknown
    store.add(serve_window(recorder, predict, clock, np.ones((4, 4), np.float32)), privacy)
    (w,) = opened(store.next_batch()).windows
    assert w.privacy.withheld == ("classes", "confidence") and w.privacy.epsilon_spent == 0.0
    assert w.inputs.classes is None and w.inputs.confidence is None


def test_only_exact_windows_are_taken(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock, PrivacyPolicy(classes_epsilon=1.0))
    predict(Request(np.ones((1, 4), np.float32)))
    private = recorder.take_window()  # privatized by the recorder
    store = open_store(tmp_path / "t.sqlite3", clock)
    with pytest.raises(UsageError, match="exact"):
        store.add(private)
    with pytest.raises(UsageError, match="TelemetryWindow"):
        store.add({"bundle_id": B1})  # type: ignore[arg-type]


def test_no_raw_input_row_is_in_an_uploaded_payload(tmp_path: Path) -> None:
    clock = Clock()
    recorder, predict = make_recorder(B1, clock)
    store = open_store(tmp_path / "t.sqlite3", clock)
    rng = np.random.default_rng(6)
    x = (rng.uniform(1000.0, 2000.0, size=(200, 4)) + 0.123456789).astype(np.float32)
    store.add(serve_window(recorder, predict, clock, x))
    payload = gzip.decompress(store.next_batch().body).decode()
    doc = json.loads(payload)

    def numbers(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from numbers(v)
        elif isinstance(node, list):
            if len(node) >= 2 and all(isinstance(v, float) for v in node):
                yield tuple(node)
            for v in node:
                yield from numbers(v)
        elif isinstance(node, float):
            yield node

    lists = [n for n in numbers(doc) if isinstance(n, tuple)]
    rows = {tuple(float(v) for v in row) for row in x}
    assert not any(tuple(lst) in rows or any(tuple(lst[i : i + 4]) in rows for i in range(len(lst))) for lst in lists)
    seen = {v for v in numbers(doc) if isinstance(v, float)}
    raw = {float(v) for v in x.ravel()}
    # beyond the sketches (base64), only per-feature min and max can equal an input value: 2 per feature
    assert len(seen & raw) <= 2 * 4
    for row in x[:20]:
        assert json.dumps([float(v) for v in row]) not in payload


def test_a_file_deleted_under_a_batch_in_flight_keeps_the_new_files_windows_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.sqlite3"
    store = open_store(path, clock, max_windows=2)
    for i in range(3):  # two wait, one merge counted
        store.add(perf_window(B1, 10.0 * i, 1))
    batch = store.next_batch()
    assert batch.windows == 2 and opened(batch).store.merged_windows == 1
    path.unlink()  # the file goes; the next operation opens a fresh one, whose row ids restart at 1
    for i in range(3):
        store.add(perf_window(B2, 100.0 + 10.0 * i, 2))
    assert store.acknowledge(batch.digest) == 2  # delivered from memory
    status = store.status()
    # the new file's two windows and its own merge survive: nothing of it deleted or subtracted
    assert (status.pending_windows, status.merged_windows, status.dropped_windows) == (2, 1, 0)
    sent = opened(store.next_batch())
    assert [w.bundle_id for w in sent.windows] == [B2, B2]
    assert sum(w.performance.requests for w in sent.windows) == 6


def test_a_file_replaced_by_another_stores_file_keeps_that_files_windows(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "t.sqlite3"
    store = open_store(path, clock)
    for i in range(3):
        store.add(perf_window(B1, 10.0 * i, 1))
    batch = store.next_batch()
    other_path = tmp_path / "other.sqlite3"
    with open_store(other_path, clock, max_windows=2) as other:
        for i in range(3):
            other.add(perf_window(B3, 100.0 + 10.0 * i, 5))
    other_path.replace(path)  # another store's file (row ids 1 and 3, one merge) takes its place
    assert store.refuse(batch.digest, "400 test") == 3
    status = store.status()
    assert (status.pending_windows, status.merged_windows, status.dropped_windows) == (2, 1, 3)
    sent = opened(store.next_batch())
    assert [w.bundle_id for w in sent.windows] == [B3, B3]
    assert sum(w.performance.requests for w in sent.windows) == 15
