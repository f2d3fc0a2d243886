"""The agent loop against a real local-directory source and real bundles: polling, jittered back-off,
the device-context policy, health-driven and server-driven rollback, status reports."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_testbed import agent_bundles_fixture, offer_dir_fixture  # noqa: F401 (fixtures)
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.edge.agent import (
    Agent,
    AgentConfig,
    Backoff,
    DownloadPolicy,
    FileContext,
    InstallResult,
    LocalDirectorySource,
    Offer,
)
from tinymlops.edge.backends import open_backend
from tinymlops.errors import (
    BackendError,
    InputMismatchError,
    IntegrityError,
    OperationError,
    SpecError,
    UpdateSourceError,
    UsageError,
)
from tinymlops.spec.context import DeviceContext


class CountingSource:
    """The real local-directory source, counting calls, with scripted failures (the other side's faults)."""

    def __init__(self, directory: Path, *, chunk: int = 64 * 1024) -> None:
        self.inner = LocalDirectorySource(directory, chunk=chunk)
        self.checks = 0
        self.fetches = 0
        self.fail_checks = 0
        self.fail_fetches = 0

    def check(self) -> Offer | None:
        self.checks += 1
        if self.fail_checks:
            self.fail_checks -= 1
            raise UpdateSourceError("server unreachable (scripted)")
        return self.inner.check()

    def fetch(self, offer: Offer, dest_dir: Path) -> Path:
        self.fetches += 1
        if self.fail_fetches:
            self.fail_fetches -= 1
            raise UpdateSourceError("connection reset (scripted)")
        return self.inner.fetch(offer, dest_dir)


class Harness:
    def __init__(self, tmp_path: Path, bundles: Any, publish: Callable[..., Path], **config: Any) -> None:
        self.bundles = bundles
        self.publish = publish
        self.source = CountingSource(publish("v1"))
        self.reports: list[InstallResult] = []
        self.context = DeviceContext()
        self.rng_seed = 7
        self.agent = Agent(
            tmp_path / "data",
            self.source,
            bundles.device,
            bundles.trusted,
            config=AgentConfig(**{"poll_interval": 30.0, **config}),
            context=lambda: self.context,
            reporter=self.reports.append,
            rng=random.Random(self.rng_seed),
        )

    def predict_like(self, name: str) -> None:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        (want,) = open_backend(self.bundles.plaintext[name]).run(x)
        assert np.array_equal(self.agent.predict(x).outputs["y"], want)


@pytest.fixture
def harness(tmp_path: Path, agent_bundles, offer_dir) -> Harness:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, agent_bundles, offer_dir)
    yield h
    h.agent.close()


def test_installs_what_is_offered_then_idles(harness: Harness) -> None:
    h = harness
    h.agent.start()
    with pytest.raises(UsageError, match="no bundle is installed on this device yet"):
        h.agent.predict(np.zeros((1, 4), np.float32))
    c = h.agent.run_once()
    assert c.action == "installed" and c.result is not None and c.error is None
    assert 27.0 <= c.delay <= 33.0  # the poll interval, jittered ±10%
    assert [r.status for r in h.reports] == ["installed"]
    assert h.reports[0].bundle_id == h.bundles.bundle_id("v1") and "download_s" in h.reports[0].timings
    h.predict_like("v1")
    assert h.agent.run_once().action == "idle" and h.source.fetches == 1
    assert list(h.agent.store.incoming_dir.iterdir()) == []  # the download is cleaned up

    h.publish("v2")
    assert h.agent.run_once().action == "installed"
    h.predict_like("v2")
    assert h.agent.state.active == "b" and h.agent.state.fallback == "a"


def test_back_off_is_jittered_exponential_capped_and_reset_by_success(harness: Harness) -> None:
    h = harness
    h.agent.backoff = Backoff(base=2.0, factor=2.0, cap=20.0, jitter=0.5, rng=random.Random(1))
    replica = random.Random(1)
    h.source.fail_checks = 7
    delays = [h.agent.run_once() for _ in range(7)]
    assert all(c.action == "error" and "server unreachable" in (c.error or "") for c in delays)
    ceilings = [2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    for cycle, ceiling in zip(delays, ceilings, strict=True):
        assert cycle.delay == pytest.approx(ceiling * (1 - 0.5 * replica.random()))
        assert ceiling / 2 <= cycle.delay <= ceiling
    assert h.reports == []  # errors are not install results
    ok = h.agent.run_once()
    assert ok.action == "installed" and h.agent.backoff.failures == 0
    h.source.fail_fetches = 1
    h.publish("v2")
    again = h.agent.run_once()  # the first failure after a success starts from the base again
    assert again.action == "error" and "fetching v2.tmlb" in (again.error or "") and again.delay <= 2.0
    assert h.agent.run_once().action == "installed"


def test_back_off_never_overflows_and_stays_in_bounds() -> None:
    b = Backoff(base=1.0, factor=3.0, cap=3600.0, jitter=0.25, rng=random.Random(0))
    for _ in range(5000):
        d = b.failure()
        assert 0 < d <= 3600.0
    assert b.ceiling(5000) == 3600.0 and b.ceiling(1) == 1.0 and b.ceiling(0) == 0.0
    with pytest.raises(UsageError, match="must not exceed the cap"):
        Backoff(base=10.0, cap=5.0)
    with pytest.raises(UsageError, match="jitter must be within"):
        Backoff(jitter=1.0)


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.01, 100),
    factor=st.floats(1, 10),
    cap=st.floats(100, 10_000),
    jitter=st.floats(0, 0.99),
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
)
def test_back_off_delays_are_bounded_monotone_ceilings(
    base: float, factor: float, cap: float, jitter: float, seed: int, n: int
) -> None:
    b = Backoff(base=base, factor=factor, cap=cap, jitter=jitter, rng=random.Random(seed))
    previous = 0.0
    for i in range(1, n + 1):
        d = b.failure()
        ceiling = b.ceiling(i)
        assert ceiling >= previous and ceiling <= cap
        assert ceiling * (1 - jitter) - 1e-9 <= d <= ceiling + 1e-9
        previous = ceiling


def test_large_bundles_wait_for_wifi_unless_urgent(tmp_path: Path, agent_bundles, offer_dir) -> None:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, agent_bundles, offer_dir, large_bundle_bytes=1000)  # the bundles are ~2 KB
    try:
        h.context = DeviceContext(network="cellular")
        for _ in range(3):
            assert h.agent.run_once().action == "deferred"
        assert h.source.fetches == 0
        assert [r.status for r in h.reports] == ["deferred"]  # reported once, not every poll
        assert "waiting for Wi-Fi" in h.reports[0].reason and h.reports[0].sha256 == agent_bundles.sha("v1")
        h.context = DeviceContext(network="wifi")
        assert h.agent.run_once().action == "installed"
        h.context = DeviceContext(network="cellular")
        h.publish("v2", urgent=True)
        assert h.agent.run_once().action == "installed"  # urgent: over cellular
        h.context = DeviceContext(network="offline")
        checks = h.source.checks
        assert h.agent.run_once().action == "offline" and h.source.checks == checks  # does not even poll
    finally:
        h.agent.close()


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 10_000),
    threshold=st.integers(0, 10_000),
    urgent=st.booleans(),
    network=st.sampled_from(["wifi", "cellular", "offline"]),
)
def test_download_policy(length: int, threshold: int, urgent: bool, network: str) -> None:
    offer = Offer("b.tmlb", "0" * 64, length, urgent)
    decision = DownloadPolicy(threshold).decide(offer, DeviceContext(network=network))
    expected = network != "offline" and (length <= threshold or network == "wifi" or urgent)
    assert decision.allowed == expected and decision.reason


def test_unhealthy_bundle_rolls_back_and_is_never_installed_again(harness: Harness) -> None:
    """``brittle`` passes its smoke test (2 rows) but every 1-row prediction fails in ONNX Runtime."""
    h = harness
    assert h.agent.run_once().action == "installed"
    h.publish("brittle")
    assert h.agent.run_once().action == "installed"
    assert h.agent.state.active_bundle.bundle_id == h.bundles.bundle_id("brittle")  # type: ignore[union-attr]
    one = np.ones((1, 4), np.float32)
    with pytest.raises(InputMismatchError):  # the caller's mistake: does not count
        h.agent.predict(np.ones((1, 5), np.float32))
    for _ in range(2):
        with pytest.raises(BackendError):
            h.agent.predict(one)
    assert h.agent.state.active == "b"
    with pytest.raises(BackendError):
        h.agent.predict(one)  # the third failure in a row
    assert h.reports[-1].status == "rolled_back"
    assert "3 consecutive prediction failures" in h.reports[-1].reason
    assert h.reports[-1].bundle_id == h.bundles.bundle_id("brittle")
    assert h.agent.state.active == "a" and h.agent.state.is_refused(h.bundles.sha("brittle"))
    h.predict_like("v1")
    # the file on disk agrees
    doc = json.loads(h.agent.store.state_path.read_text())
    assert doc["active"] == "a" and h.bundles.sha("brittle") in doc["refused"]
    fetches = h.source.fetches
    assert h.agent.run_once().action == "skipped" and h.source.fetches == fetches  # not downloaded again


def test_unhealthy_with_nothing_to_roll_back_to_reports_and_keeps_serving(harness: Harness) -> None:
    h = harness
    h.publish("brittle")
    assert h.agent.run_once().action == "installed"
    for _ in range(3):
        with pytest.raises(BackendError):
            h.agent.predict(np.ones((1, 4), np.float32))
    assert h.reports[-1].status == "failed" and "cannot roll back" in h.reports[-1].reason
    assert h.agent.state.active == "a"
    assert h.agent.predict(np.ones((2, 4), np.float32)).outputs["y"].shape == (2, 2)


def test_the_control_plane_rolls_back_and_forward(harness: Harness) -> None:
    h = harness
    assert h.agent.run_once().action == "installed"
    h.publish("v2")
    assert h.agent.run_once().action == "installed"
    fetches = h.source.fetches
    # re-offering the previous bundle: switch back to the slot that still holds it, no download
    h.publish("v1")
    c = h.agent.run_once()
    assert c.action == "rolled_back" and h.source.fetches == fetches
    assert "offers the previous bundle again" in h.reports[-1].reason
    assert h.agent.state.active == "a" and not h.agent.state.is_refused(h.bundles.sha("v2"))
    h.predict_like("v1")
    # and forward again, still without a download
    h.publish("v2")
    assert h.agent.run_once().action == "rolled_back" and h.source.fetches == fetches
    h.predict_like("v2")
    # an offer that revokes the active bundle rolls back and refuses it
    h.publish("v3", revoked=(h.bundles.bundle_id("v2"),))
    c = h.agent.run_once()
    assert c.action == "rolled_back" and "rolled back bundle" in h.reports[-1].reason
    assert h.agent.state.is_refused(h.bundles.sha("v2"))
    h.predict_like("v1")
    assert h.agent.run_once().action == "installed"  # then installs the offered v3
    h.predict_like("v3")


def test_a_tampered_fallback_is_not_rolled_back_to(harness: Harness) -> None:
    h = harness
    h.agent.run_once()
    h.publish("v2")
    h.agent.run_once()
    p = h.agent.store.slot_path("a")
    d = bytearray(p.read_bytes())
    d[-3] ^= 0x20
    p.write_bytes(bytes(d))
    result = h.agent.rollback("operator asked")
    assert result.status == "failed" and "slot a no longer verifies" in result.reason
    assert h.agent.state.active == "b" and h.agent.state.slots["a"] is None
    h.predict_like("v2")


def test_bad_offers_and_bad_downloads_back_off_and_change_nothing(harness: Harness) -> None:
    h = harness
    assert h.agent.run_once().action == "installed"
    state = h.agent.store.state_path.read_bytes()
    source = h.source.inner.directory
    # an offer whose bundle file is not the one it describes (a half-copied USB stick)
    (source / "v2.tmlb").write_bytes(h.bundles.data("v2"))
    lie = {"sha256": h.bundles.sha("v3"), "length": len(h.bundles.data("v2"))}
    good = json.loads((source / "offer.json").read_text())
    (source / "offer.json").write_text(json.dumps({**good, "bundle": "v2.tmlb", **lie}))
    c = h.agent.run_once()
    assert c.action == "error" and "does not match the offer" in (c.error or "")
    # a malformed offer document
    (source / "offer.json").write_text('{"spec_version": "1.0", "bundle": "../etc/passwd"}')
    c = h.agent.run_once()
    assert c.action == "error" and "plain file name" in (c.error or "")
    assert h.agent.backoff.failures == 2
    assert h.agent.store.state_path.read_bytes() == state
    assert list(h.agent.store.incoming_dir.iterdir()) == []


def test_refused_offers_are_reported_once_and_not_fetched_again(harness: Harness) -> None:
    h = harness
    h.agent.run_once()
    h.publish("untrusted")
    c = h.agent.run_once()
    assert c.action == "refused" and "untrusted release key" in h.reports[-1].reason
    fetches = h.source.fetches
    assert h.agent.run_once().action == "skipped" and h.source.fetches == fetches
    assert [r.status for r in h.reports] == ["installed", "refused"]


def test_a_smoke_test_failure_is_reported_and_the_device_stays(harness: Harness) -> None:
    h = harness
    h.agent.run_once()
    h.publish("badcheck")
    c = h.agent.run_once()
    assert c.action == "failed" and "smoke test failed" in h.reports[-1].reason
    h.predict_like("v1")
    assert h.agent.run_once().action == "skipped"


def test_a_broken_reporter_does_not_stop_updates(harness: Harness) -> None:
    h = harness

    def broken(result: InstallResult) -> None:
        raise RuntimeError("telemetry endpoint down")

    h.agent.reporter = broken
    assert h.agent.run_once().action == "installed"


def test_a_broken_context_provider_backs_off(harness: Harness, tmp_path: Path) -> None:
    h = harness
    ctx = tmp_path / "context.json"
    h.agent.context = FileContext(ctx)
    assert h.agent.context() == DeviceContext()  # missing file: the default
    ctx.write_text('{"spec_version": "1.0", "network": "satellite"}')
    c = h.agent.run_once()
    assert c.action == "error" and "network" in (c.error or "")
    ctx.write_text('{"spec_version": "1.0", "network": "wifi"}')
    assert h.agent.run_once().action == "installed"


def test_run_forever_waits_each_delay_and_stops(harness: Harness) -> None:
    h = harness
    waits: list[float] = []
    stop = threading.Event()

    def wait(event: threading.Event, seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 3:
            event.set()
        return event.is_set()

    h.agent._wait = wait
    h.source.fail_checks = 1
    h.agent.run_forever(stop)
    assert len(waits) == 3 and waits[0] <= 2.0 and all(27 <= w <= 33 for w in waits[1:])
    assert [r.status for r in h.reports] == ["installed"]


def test_run_forever_in_a_thread_stops_promptly(harness: Harness) -> None:
    h = harness
    stop = threading.Event()
    t = threading.Thread(target=h.agent.run_forever, args=(stop,))
    t.start()
    for _ in range(200):
        if h.reports:
            break
        threading.Event().wait(0.05)
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive() and h.reports[0].status == "installed"


# --- the local-directory source and its offer document ------------------------------------------
def test_offer_document_round_trip_and_strictness(tmp_path: Path) -> None:
    offer = Offer("a.tmlb", "ab" * 32, 10, True, frozenset({"c" * 32}))
    assert Offer.from_dict(json.loads(json.dumps(offer.to_dict()))) == offer
    doc = offer.to_dict()
    for bad, match in [
        ({**doc, "extra": 1}, "unknown field"),
        ({**doc, "spec_version": "2.0"}, "unsupported spec_version"),
        ({**doc, "bundle": "x/y.tmlb"}, "plain file name"),
        ({**doc, "sha256": "AB" * 32}, "64 lowercase hex"),
        ({**doc, "length": 0}, ">= 1"),
        ({**doc, "length": True}, "must be an integer"),
        ({**doc, "urgent": "yes"}, "true or false"),
        ({**doc, "revoked": "abc"}, "must be a list"),
        ({**doc, "revoked": ["nothex"]}, "bundle ids"),
    ]:
        with pytest.raises(SpecError, match=match):
            Offer.from_dict(bad)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.dictionaries(
        st.sampled_from(["spec_version", "bundle", "sha256", "length", "urgent", "revoked", "other"]),
        st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=70) | st.lists(st.text(max_size=70)),
    )
)
def test_offer_parser_raises_only_spec_errors(doc: dict[str, Any]) -> None:
    try:
        offer = Offer.from_dict(doc)
    except SpecError:
        return
    assert Offer.from_dict(offer.to_dict()) == offer


def test_local_source_faults(tmp_path: Path, agent_bundles) -> None:  # type: ignore[no-untyped-def]
    src = LocalDirectorySource(tmp_path / "nope")
    with pytest.raises(UpdateSourceError, match="does not exist"):
        src.check()
    (tmp_path / "s").mkdir()
    src = LocalDirectorySource(tmp_path / "s", chunk=100)
    assert src.check() is None
    (tmp_path / "s" / "offer.json").write_bytes(b"{" * 70_000)
    with pytest.raises(SpecError, match="far too large"):
        src.check()
    data = agent_bundles.data("v1")
    import hashlib

    offer = Offer("v1.tmlb", hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(UpdateSourceError, match="does not exist"):
        src.fetch(offer, tmp_path / "in")
    (tmp_path / "s" / "v1.tmlb").write_bytes(data + b"x")
    with pytest.raises(IntegrityError, match="larger than the offered"):
        src.fetch(offer, tmp_path / "in")
    (tmp_path / "s" / "v1.tmlb").write_bytes(data)
    path = src.fetch(offer, tmp_path / "in")
    assert path.read_bytes() == data and sorted(p.name for p in (tmp_path / "in").iterdir()) == [path.name]


def test_a_disk_error_mid_install_backs_off_and_the_next_cycle_repairs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state write after the copy fails (disk full), and so does the clean-up: the install is left
    pending in memory and on disk. The cycle reports an error and backs off; the next one recovers the
    directory (aborting the half install) and installs."""
    h = harness
    assert h.agent.run_once().action == "installed"
    h.publish("v2")
    store = h.agent.store
    real_apply = store.apply
    calls = {"n": 0}

    def flaky_apply(state, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] in (2, 3):  # mark_verified, then the abort in the clean-up
            raise OperationError("state.json: cannot write the agent state: No space left on device")
        return real_apply(state, **kw)

    monkeypatch.setattr(store, "apply", flaky_apply)
    c = h.agent.run_once()
    assert c.action == "error" and "No space left" in (c.error or "")
    assert store.state.pending == "b" and store.state.active == "a"
    h.predict_like("v1")  # still serving
    c = h.agent.run_once()
    assert c.action == "installed", c
    assert any("aborted the interrupted install" in a for a in h.agent.recovery.actions)  # type: ignore[union-attr]
    h.predict_like("v2")
