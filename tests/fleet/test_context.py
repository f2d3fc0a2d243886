"""The simulated context: a deterministic schedule per seed, battery always in [0, 1] and integrated
exactly, flat time counted, and a real agent that skips its polls exactly while it is offline."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.crypto.keys import DeviceKeys, generate_signing_key
from tinymlops.edge.agent import Agent, AgentConfig, LocalDirectorySource
from tinymlops.errors import UsageError
from tinymlops.fleet.context import BatteryScenario, NetworkScenario, Scenario, SimulatedContext


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


networks = st.builds(
    NetworkScenario,
    weights=st.lists(
        st.tuples(st.sampled_from(["wifi", "cellular", "offline"]), st.floats(0.1, 5.0)),
        min_size=1,
        max_size=3,
        unique_by=lambda t: t[0],
    ).map(tuple),
    mean_period_s=st.floats(0.5, 20.0),
    min_period_s=st.floats(0.05, 0.5),
)


@st.composite
def battery_scenarios(draw: st.DrawFn) -> BatteryScenario | None:
    if draw(st.booleans()):
        return None
    lo = draw(st.floats(0.0, 1.0))
    every = draw(st.one_of(st.none(), st.floats(1.0, 50.0)))
    return BatteryScenario(
        initial=(lo, draw(st.floats(lo, 1.0))),
        drain_per_s=draw(st.floats(0.0, 0.2)),
        drain_per_prediction=draw(st.floats(0.0, 0.05)),
        charge_per_s=draw(st.floats(0.0, 0.3)),
        charge_every_s=every,
        charge_for_s=0.0 if every is None else draw(st.floats(0.0, 1.0)) * every,
    )


scenarios = st.builds(Scenario, network=networks, battery=battery_scenarios())
steps = st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 30)), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(scenarios, st.integers(0, 2**32 - 1), steps)
def test_battery_stays_in_range_and_the_context_follows_the_schedule(
    scenario: Scenario, seed: int, moves: list[tuple[float, int]]
) -> None:
    clock = ManualClock()
    ctx = SimulatedContext(scenario, seed, clock=clock)
    for dt, spent in moves:
        clock.t += dt
        ctx.spend(spent)
        now = ctx()
        t = clock.t - 1000.0
        assert 0.0 <= now.battery <= 1.0
        assert now.network == ctx.network_at(t)
        assert (now.bandwidth_kbps is None) == (now.network == "offline")
        if scenario.battery is None:
            assert now.battery == 1.0 and now.charging
        else:
            assert now.charging == ctx.charging.at(t)
    totals = ctx.totals()
    elapsed = clock.t - 1000.0
    assert math.isclose(sum(totals["network_s"].values()), elapsed, abs_tol=0.002)  # each rounded to 1 ms
    assert 0.0 <= totals["flat_s"] <= elapsed + 0.001


@settings(max_examples=50, deadline=None)
@given(scenarios, st.integers(0, 2**32 - 1), steps)
def test_the_same_seed_and_clock_give_the_same_moments(
    scenario: Scenario, seed: int, moves: list[tuple[float, int]]
) -> None:
    runs = []
    for _ in range(2):
        clock = ManualClock()
        ctx = SimulatedContext(scenario, seed, clock=clock)
        seen = []
        for dt, spent in moves:
            clock.t += dt
            ctx.spend(spent)
            seen.append(ctx())
        runs.append((seen, ctx.totals()))
    assert runs[0] == runs[1]


def test_different_seeds_give_different_schedules() -> None:
    net = NetworkScenario(weights=(("wifi", 1.0), ("cellular", 1.0), ("offline", 1.0)), mean_period_s=2.0)
    schedules = {
        tuple(SimulatedContext(Scenario(network=net), seed).network.periods(60.0)[i][2] for i in range(10))
        for seed in range(20)
    }
    assert len(schedules) > 15


@settings(max_examples=50, deadline=None)
@given(networks, st.integers(0, 2**32 - 1), st.lists(st.floats(0.0, 200.0), min_size=1, max_size=30))
def test_the_network_schedule_is_a_pure_function_of_seed_and_time(
    network: NetworkScenario, seed: int, times: list[float]
) -> None:
    forward = SimulatedContext(Scenario(network=network), seed)
    backward = SimulatedContext(Scenario(network=network), seed)
    a = [forward.network_at(t) for t in sorted(times)]
    b = [backward.network_at(t) for t in sorted(times, reverse=True)][::-1]
    assert a == b
    periods = forward.network.periods(max(times))
    assert periods[0][0] == 0.0
    for (s0, e0, _), (s1, _, _) in pairwise(periods):
        assert e0 == s1 and e0 - s0 >= network.min_period_s - 1e-9  # contiguous, never shorter than the minimum
    for start, end, state in periods:
        assert forward.network_at(start) == state and forward.network_at((start + end) / 2) == state


def test_time_per_network_state_matches_the_schedule() -> None:
    net = NetworkScenario(weights=(("wifi", 1.0), ("offline", 1.0)), mean_period_s=3.0, min_period_s=0.5)
    clock = ManualClock()
    ctx = SimulatedContext(Scenario(network=net), seed=11, clock=clock)
    for _ in range(600):
        clock.t += 0.1
        ctx()
    expected = {"wifi": 0.0, "cellular": 0.0, "offline": 0.0}
    for start, end, state in ctx.network.periods(60.0):
        expected[state] += max(0.0, min(end, 60.0) - start)
    got = ctx.totals()["network_s"]
    for state, seconds in expected.items():
        assert got[state] == pytest.approx(seconds, abs=1e-3)
    assert expected["offline"] > 5.0 and expected["wifi"] > 5.0


def test_battery_drains_goes_flat_and_comes_back_when_charging() -> None:
    # 0.5 at start, -0.1/s: empty after 5 s; charges 4 s of every 20 s at +0.2/s (net +0.1/s)
    battery = BatteryScenario(
        initial=(0.5, 0.5), drain_per_s=0.1, charge_per_s=0.2, charge_every_s=20.0, charge_for_s=4
    )
    clock = ManualClock()
    ctx = SimulatedContext(Scenario(battery=battery), seed=3, clock=clock)
    ctx.charging.phase = 4.0  # charging during [16, 20) of every 20 s, to check exact numbers
    clock.t += 3.0
    assert ctx().battery == pytest.approx(0.2) and not ctx.flat()
    clock.t += 4.0
    assert ctx().battery == 0.0 and ctx.flat()
    clock.t += 9.0  # t = 16: flat since t = 5
    assert ctx.totals()["flat_s"] == pytest.approx(11.0)
    clock.t += 2.0  # t = 18: charging
    now = ctx()
    assert now.charging and not ctx.flat() and now.battery == pytest.approx(0.2)
    clock.t += 2.0  # t = 20: charged 4 s at net +0.1/s
    assert ctx().battery == pytest.approx(0.4) and not ctx().charging
    assert ctx.totals()["flat_s"] == pytest.approx(11.0)
    ctx.spend(100)  # predictions drain too (drain_per_prediction is 0 here)
    assert ctx().battery == pytest.approx(0.4)


def test_predictions_drain_the_battery_and_low_battery_prefers_energy() -> None:
    battery = BatteryScenario(initial=(0.3, 0.3), drain_per_s=0.0, drain_per_prediction=0.001)
    clock = ManualClock()
    ctx = SimulatedContext(Scenario(battery=battery), seed=0, clock=clock)
    assert ctx().prefer == "balanced"
    ctx.spend(150)
    clock.t += 0.1
    now = ctx()
    assert now.battery == pytest.approx(0.15) and now.prefer == "energy"
    ctx.spend(10_000)
    clock.t += 0.1
    assert ctx().battery == 0.0 and ctx.flat()


def test_scenarios_refuse_impossible_values() -> None:
    with pytest.raises(UsageError, match="initial"):
        BatteryScenario(initial=(0.8, 0.2))
    with pytest.raises(UsageError, match="drain_per_s"):
        BatteryScenario(drain_per_s=-1)
    with pytest.raises(UsageError, match="charge_for_s"):
        BatteryScenario(charge_every_s=5, charge_for_s=6)
    with pytest.raises(UsageError, match="unknown state"):
        NetworkScenario(weights=(("lte", 1.0),))
    with pytest.raises(UsageError, match="must not all be 0"):
        NetworkScenario(weights=(("wifi", 0.0),))
    with pytest.raises(UsageError, match="prefer"):
        Scenario(prefer="fast")
    with pytest.raises(UsageError, match="predictions"):
        SimulatedContext(Scenario(), 0).spend(-1)


class CountingSource:
    """The real local-directory source (an empty folder: nothing to install), counting checks."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.inner = LocalDirectorySource(directory)
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        return self.inner.check()

    def fetch(self, offer: object, dest_dir: Path) -> Path:  # pragma: no cover - never offered anything
        raise AssertionError("nothing was offered")


def test_a_real_agent_polls_exactly_when_the_simulated_network_is_up(tmp_path: Path) -> None:
    net = NetworkScenario(weights=(("wifi", 1.0), ("cellular", 1.0), ("offline", 2.0)), mean_period_s=2.0)
    clock = ManualClock()
    ctx = SimulatedContext(Scenario(network=net), seed=5, clock=clock)
    source = CountingSource(tmp_path / "offers")
    trusted = [generate_signing_key().public_key().public_bytes_raw()]
    agent = Agent(tmp_path / "data", source, DeviceKeys.generate(), trusted, config=AgentConfig(), context=ctx)
    offline_cycles = 0
    with agent:
        for _ in range(200):
            clock.t += 0.25
            before = source.checks
            cycle = agent.run_once()
            offline = ctx.network_at(clock.t - 1000.0) == "offline"
            assert (cycle.action == "offline") == offline
            assert source.checks == before + (0 if offline else 1)
            offline_cycles += offline
    assert 40 < offline_cycles < 160


@settings(max_examples=15, deadline=None)
@given(battery_scenarios(), st.integers(0, 2**32 - 1))
def test_the_battery_integral_matches_a_fine_step_simulation(battery: BatteryScenario | None, seed: int) -> None:
    if battery is None:
        return
    clock = ManualClock()
    ctx = SimulatedContext(Scenario(battery=battery), seed, clock=clock)
    level, flat, h = ctx().battery, 0.0, 0.002
    for i in range(10_000):  # 20 s, stepped by hand
        charging = ctx.charging.at(i * h)
        if not charging and level <= 0.0:
            flat += h
        level = min(1.0, max(0.0, level + ((battery.charge_per_s if charging else 0.0) - battery.drain_per_s) * h))
    clock.t += 20.0
    totals = ctx.totals()
    assert totals["battery"] == pytest.approx(level, abs=0.01)
    assert totals["flat_s"] == pytest.approx(flat, abs=0.05)
