"""The agent reports the health of the bundle it runs (real bundles, a real local-directory source,
real ONNX Runtime): every call is recorded into the active bundle's window; a bundle change (install,
health-driven rollback, a rollback the control plane asks for) closes the old bundle's window and
reports it at the next cycle; reports go out at most once per interval, never when offline; a report
the reporter does not take is kept and merged, never counted twice; reporting off records nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_testbed import agent_bundles_fixture, offer_dir_fixture  # noqa: F401 (fixtures)

from tinymlops.edge.agent import Agent, AgentConfig, InstallResult, LocalDirectorySource
from tinymlops.errors import BackendError, InputMismatchError, UsageError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport

X = np.arange(8, dtype=np.float32).reshape(2, 4)
INTERVAL = 30.0


class Clocks:
    """A wall clock the test sets, and a monotonic timer that runs for real (so latencies are real)
    but that the test can push forward (to pass the health interval)."""

    def __init__(self) -> None:
        self.wall = 1_718_000_000.0
        self.skip = 0.0

    def clock(self) -> float:
        return self.wall

    def timer(self) -> float:
        return time.perf_counter() + self.skip

    def later(self, seconds: float) -> None:
        self.wall += seconds
        self.skip += seconds


class HealthSinkStub:
    """Collects the reports it takes; ``fail`` > 0 makes the next calls raise (a full disk, say)."""

    def __init__(self) -> None:
        self.reports: list[HealthReport] = []
        self.calls = 0
        self.fail = 0
        self.lock = threading.Lock()

    def __call__(self, report: HealthReport) -> None:
        with self.lock:
            self.calls += 1
            if self.fail:
                self.fail -= 1
                raise OSError("no space left on device (scripted)")
            HealthReport.from_dict(report.to_dict())  # what it takes is a valid document
            self.reports.append(report)

    def of(self, bundle_id: str) -> list[HealthReport]:
        return [r for r in self.reports if r.bundle_id == bundle_id]

    def predictions(self) -> int:
        return sum(r.predictions for r in self.reports)


class World:
    def __init__(
        self, tmp_path: Path, bundles: Any, publish: Callable[..., Path], *, report: bool = True, **config: Any
    ) -> None:
        self.bundles = bundles
        self.publish = publish
        self.clocks = Clocks()
        self.health = HealthSinkStub()
        self.installs: list[InstallResult] = []
        self.context = DeviceContext(battery=0.7, network="wifi")
        self.agent = Agent(
            tmp_path / "data",
            LocalDirectorySource(publish("v1")),
            bundles.device,
            bundles.trusted,
            config=AgentConfig(**{"poll_interval": 30.0, "health_interval": INTERVAL, **config}),
            context=lambda: self.context,
            reporter=self.installs.append,
            health_reporter=self.health if report else None,
            clock=self.clocks.clock,
            timer=self.clocks.timer,
        )

    def id(self, name: str) -> str:
        return str(self.bundles.bundle_id(name))

    def predict(self, n: int, rows: int = 2) -> None:
        for _ in range(n):
            self.agent.predict(np.ones((rows, 4), np.float32))


@pytest.fixture
def world(tmp_path: Path, agent_bundles, offer_dir) -> World:  # type: ignore[no-untyped-def]
    w = World(tmp_path, agent_bundles, offer_dir)
    yield w
    w.agent.close()


def test_an_install_reports_the_previous_bundles_window_at_once(world: World) -> None:
    w = world
    installed_at = w.clocks.wall
    assert w.agent.run_once().action == "installed"
    assert w.health.calls == 0  # nothing served yet: nothing to report
    w.predict(3)
    with pytest.raises(InputMismatchError):  # the caller's mistake: not a prediction of the bundle
        w.agent.predict(np.ones((2, 5), np.float32))
    serving = w.agent.serving
    assert serving is not None and serving.bundle_id == w.id("v1") and serving.peek().rejected == 1

    w.clocks.wall += 10  # well inside the interval (the timer does not move)
    w.publish("v2")
    assert w.agent.run_once().action == "installed"
    (v1,) = w.health.reports  # sent at once: the bundle changed
    assert (v1.bundle_id, v1.predictions, v1.errors) == (w.id("v1"), 3, 0)
    assert (v1.window_start, v1.window_end) == (installed_at, installed_at + 10)
    assert v1.latency_ms is not None and 0 < v1.latency_ms["p50"] <= v1.latency_ms["max"] < 1000
    assert v1.context == w.context and v1.at == w.clocks.wall

    w.predict(2)
    assert w.agent.run_once().action == "idle"
    assert len(w.health.reports) == 1  # within the interval: nothing sent
    w.clocks.later(INTERVAL)
    assert w.agent.run_once().action == "idle"
    v2 = w.health.reports[-1]
    assert (v2.bundle_id, v2.predictions, v2.window_start) == (w.id("v2"), 2, installed_at + 10)
    assert w.agent.run_once().action == "idle" and len(w.health.reports) == 2  # interval again


def test_a_health_driven_rollback_reports_the_bundle_that_failed(world: World) -> None:
    w = world
    w.agent.run_once()
    w.predict(4)
    w.publish("brittle")  # passes its smoke test (2 rows), fails on any other batch size
    assert w.agent.run_once().action == "installed"
    assert [r.predictions for r in w.health.of(w.id("v1"))] == [4]
    w.predict(1)  # 2 rows: works
    for _ in range(3):  # the third failure rolls back, inside the call: no report on the prediction path
        with pytest.raises(BackendError):
            w.agent.predict(np.ones((1, 4), np.float32))
    assert w.installs[-1].status == "rolled_back" and w.health.calls == 1
    assert w.agent.serving is not None and w.agent.serving.bundle_id == w.id("v1")
    w.predict(2)  # served by v1 again

    w.agent.run_once()  # within the interval, but the bundle changed: the failed window goes now
    (brittle,) = w.health.of(w.id("brittle"))
    assert (brittle.predictions, brittle.errors, brittle.error_rate) == (4, 3, 0.75)
    assert brittle.latency_ms is not None  # of the one call that worked
    assert [r.predictions for r in w.health.of(w.id("v1"))] == [4, 2]  # a flush closes the active window too
    w.predict(1)
    w.agent.run_once()
    assert len(w.health.reports) == 3  # and then the interval applies again
    w.clocks.later(INTERVAL)
    w.agent.run_once()
    assert [r.predictions for r in w.health.of(w.id("v1"))] == [4, 2, 1]


def test_a_rollback_the_control_plane_asks_for_reports_the_revoked_bundle(world: World) -> None:
    w = world
    w.agent.run_once()
    w.publish("v2")
    w.agent.run_once()
    w.predict(5)
    w.publish("v3", revoked=(w.id("v2"),))
    assert w.agent.run_once().action == "rolled_back"
    assert [(r.bundle_id, r.predictions) for r in w.health.reports] == [(w.id("v2"), 5)]
    w.predict(1)  # served by v1
    assert w.agent.run_once().action == "installed"  # then the offered v3 replaces v1
    assert [(r.bundle_id, r.predictions) for r in w.health.reports[1:]] == [(w.id("v1"), 1)]
    w.predict(2)
    w.agent.rollback("operator asked", refuse=False)  # a rollback by hand, outside any cycle
    assert len(w.health.reports) == 2  # queued, not sent from here
    w.agent.run_once()
    assert [(r.bundle_id, r.predictions) for r in w.health.reports[2:]] == [(w.id("v3"), 2)]


def test_a_report_not_taken_is_kept_and_merged_never_counted_twice(world: World) -> None:
    w = world
    started = w.clocks.wall
    w.agent.run_once()
    w.predict(5)
    w.clocks.later(INTERVAL)
    w.health.fail = 1
    assert w.agent.run_once().action == "idle"  # the report failed; the cycle did not
    assert w.health.calls == 1 and w.health.reports == [] and w.agent.health_pending.predictions() == 5

    w.predict(2)
    w.clocks.later(INTERVAL)
    w.agent.run_once()
    (merged,) = w.health.reports
    assert (merged.predictions, merged.window_start, merged.window_end) == (7, started, w.clocks.wall)
    assert len(w.agent.health_pending) == 0

    # two bundles pending, the first send fails: both stay, in order, and go out together next time
    w.predict(1)
    w.publish("v2")
    w.health.fail = 1
    w.agent.run_once()
    assert w.health.predictions() == 7 and [x.bundle_id for x in w.agent.health_pending] == [w.id("v1")]
    w.predict(3)
    w.clocks.later(INTERVAL)
    w.agent.run_once()
    assert [(r.bundle_id, r.predictions) for r in w.health.reports[1:]] == [(w.id("v1"), 1), (w.id("v2"), 3)]
    assert w.health.predictions() == 7 + 1 + 3


def test_nothing_is_sent_while_offline(world: World) -> None:
    w = world
    w.agent.run_once()
    w.predict(2)
    w.context = DeviceContext(network="offline")
    w.clocks.later(INTERVAL)
    assert w.agent.run_once().action == "offline" and w.health.calls == 0
    w.context = DeviceContext(network="cellular", bandwidth_kbps=float("inf"))
    w.agent.run_once()
    (report,) = w.health.reports
    assert report.predictions == 2
    assert report.context is not None and report.context.network == "cellular"
    assert report.context.bandwidth_kbps is None  # JSON has no infinity: unknown


def test_an_interval_of_zero_reports_every_cycle_and_a_check_error_does_not_stop_reports(
    tmp_path: Path, agent_bundles: Any, offer_dir: Any
) -> None:
    w = World(tmp_path, agent_bundles, offer_dir, health_interval=0)
    try:
        w.agent.run_once()
        for n in (1, 2):
            w.predict(n)
            w.agent.run_once()
        assert [r.predictions for r in w.health.reports] == [1, 2]
        w.agent.source.directory.joinpath("offer.json").write_text("{not json")  # the check fails
        w.predict(3)
        assert w.agent.run_once().action == "error"
        assert [r.predictions for r in w.health.reports] == [1, 2, 3]
    finally:
        w.agent.close()


def test_reporting_off_records_nothing(tmp_path: Path, agent_bundles: Any, offer_dir: Any) -> None:
    w = World(tmp_path, agent_bundles, offer_dir, report=False)
    try:
        w.agent.run_once()
        w.predict(3)
        assert w.agent.serving is None and w.agent.runtime is not None
        assert w.agent.flush_health() == 0 and len(w.agent.health_pending) == 0
        w.publish("v2")
        assert w.agent.run_once().action == "installed" and len(w.agent.health_pending) == 0
    finally:
        w.agent.close()


def test_windows_survive_close_until_flushed(world: World) -> None:
    w = world
    w.agent.run_once()
    w.predict(2)
    w.agent.close()
    assert w.agent.flush_health() == 1 and w.health.reports[0].predictions == 2


def test_the_health_interval_is_checked() -> None:
    for bad in (-1, float("nan"), float("inf"), "30", True):
        with pytest.raises(UsageError, match="health_interval"):
            AgentConfig(health_interval=bad)  # type: ignore[arg-type]
    assert AgentConfig(health_interval=0).health_interval == 0


def test_concurrent_predictions_across_an_install_are_each_reported_once(world: World) -> None:
    w = world
    w.agent.run_once()
    threads = 4
    served = [0] * threads
    stop = threading.Event()

    def serve(i: int) -> None:
        while not stop.is_set():
            w.agent.predict(X)
            served[i] += 1

    def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, "the prediction threads made no progress"
            time.sleep(0.001)

    workers = [threading.Thread(target=serve, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        until(lambda: min(served) > 20)
        assert w.agent.flush_health() == 1  # v1's window so far, while calls run
        w.publish("v2")
        assert w.agent.run_once().action == "installed"  # the switch happens while calls run
        before = sum(served)
        until(lambda: sum(served) > before + 100)  # v2 serves
        w.agent.flush_health()
    finally:
        stop.set()
        for t in workers:
            t.join()
    w.agent.flush_health()  # the calls since, and any that was in flight on v1 when it was replaced
    by_bundle = {b: sum(r.predictions for r in w.health.of(w.id(b))) for b in ("v1", "v2")}
    assert w.health.predictions() == sum(served) and all(r.errors == 0 for r in w.health.reports)
    assert by_bundle["v1"] > 0 and by_bundle["v2"] >= 100
