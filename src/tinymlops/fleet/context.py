"""A simulated device context: battery and network that change over time, for the agent.

:class:`SimulatedContext` is a context provider like :class:`~tinymlops.edge.agent.context.FileContext`
(a ``Callable[[], DeviceContext]``, what :class:`~tinymlops.edge.agent.loop.Agent` takes as
``context=``), driven by a :class:`Scenario`, a seed and a clock:

* **network** — time is cut into periods; each period's state (``wifi``, ``cellular``,
  ``offline``) is drawn with the scenario's weights and its length from an exponential
  distribution with mean ``mean_period_s`` (at least ``min_period_s``). The schedule is a pure
  function of the seed: :meth:`SimulatedContext.network_at` answers for any time, in any order.
* **charging** — a fixed schedule: ``charge_for_s`` seconds of every ``charge_every_s`` (the
  phase drawn from the seed); a device without a battery is always on mains.
* **battery** — the state of charge in [0, 1]: it drains by ``drain_per_s`` every second and by
  ``drain_per_prediction`` for every prediction the device reports with :meth:`spend`, and
  charges by ``charge_per_s`` while charging. It is integrated exactly, piece by piece between
  the schedule's boundaries, whenever the context is asked (or spent). A battery at 0 that is not
  charging is *flat*: the device is off (no polls, no predictions) until it charges again.

Times are seconds since the context's start (its clock at creation). Two contexts with the same
scenario and seed, asked at the same clock readings with the same spends, answer the same.
The context also keeps how long it has spent in each network state and flat (:meth:`totals`).

Standard library only (plus :mod:`tinymlops.spec`), like the agent it feeds.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import UsageError
from tinymlops.spec.context import NETWORKS, PREFERENCES, DeviceContext

#: below this state of charge (and not charging) the device asks for energy-saving variants
LOW_BATTERY = 0.2


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class BatteryScenario:
    """How a battery-powered device drains and charges (fractions of a full charge)."""

    initial: tuple[float, float] = (1.0, 1.0)
    drain_per_s: float = 0.001
    drain_per_prediction: float = 0.0
    charge_per_s: float = 0.01
    charge_every_s: float | None = None
    charge_for_s: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.initial
        _check(_finite(lo) and _finite(hi) and 0.0 <= lo <= hi <= 1.0, f"battery initial must be in [0, 1]: {lo}..{hi}")
        for name in ("drain_per_s", "drain_per_prediction", "charge_per_s", "charge_for_s"):
            v = getattr(self, name)
            _check(_finite(v) and v >= 0, f"battery {name} must be a finite number >= 0, got {v!r}")
        if self.charge_every_s is not None:
            _check(
                _finite(self.charge_every_s) and self.charge_every_s > 0,
                f"battery charge_every_s must be > 0, got {self.charge_every_s!r}",
            )
            _check(
                self.charge_for_s <= self.charge_every_s,
                f"battery charge_for_s ({self.charge_for_s}) must not exceed charge_every_s ({self.charge_every_s})",
            )


@dataclass(frozen=True)
class NetworkScenario:
    """Weights of the network states and how long a period lasts (seconds)."""

    weights: tuple[tuple[str, float], ...] = (("wifi", 1.0),)
    mean_period_s: float = 30.0
    min_period_s: float = 1.0
    bandwidth_kbps: tuple[tuple[str, float], ...] = (("wifi", 20_000.0), ("cellular", 2_000.0))

    def __post_init__(self) -> None:
        _check(len(self.weights) > 0, "network: give a weight to at least one state")
        for state, w in self.weights:
            _check(state in NETWORKS, f"network: unknown state {state!r} (one of {', '.join(NETWORKS)})")
            _check(_finite(w) and w >= 0, f"network: weight of {state} must be a finite number >= 0, got {w!r}")
        _check(sum(w for _, w in self.weights) > 0, "network: the weights must not all be 0")
        _check(
            _finite(self.mean_period_s) and self.mean_period_s > 0,
            f"network mean_period_s must be > 0, got {self.mean_period_s!r}",
        )
        _check(
            _finite(self.min_period_s) and 0 < self.min_period_s <= self.mean_period_s,
            f"network min_period_s must be in (0, mean_period_s], got {self.min_period_s!r}",
        )
        for state, bw in self.bandwidth_kbps:
            _check(_finite(bw) and bw > 0, f"network: bandwidth of {state} must be > 0 kbps, got {bw!r}")

    def share(self, state: str) -> float:
        """The long-run share of time in ``state`` (periods are i.i.d.)."""
        total = sum(w for _, w in self.weights)
        return sum(w for s, w in self.weights if s == state) / total


@dataclass(frozen=True)
class Scenario:
    """A device's context scenario: its network, its battery (None: mains powered), its preference."""

    network: NetworkScenario = field(default_factory=NetworkScenario)
    battery: BatteryScenario | None = None
    prefer: str = "balanced"

    def __post_init__(self) -> None:
        _check(self.prefer in PREFERENCES, f"prefer must be one of {', '.join(PREFERENCES)}, got {self.prefer!r}")


class NetworkSchedule:
    """The seeded sequence of network periods, generated lazily and never changed once drawn."""

    def __init__(self, scenario: NetworkScenario, seed: int) -> None:
        self.scenario = scenario
        self._rng = random.Random(f"network:{seed}")
        self._states = [s for s, _ in scenario.weights]
        self._weights = [w for _, w in scenario.weights]
        self._starts: list[float] = [0.0]
        self._kinds: list[str] = []
        self._draw()

    def _draw(self) -> None:
        s = self.scenario
        kind = self._rng.choices(self._states, self._weights)[0]
        length = max(s.min_period_s, self._rng.expovariate(1.0 / s.mean_period_s))
        self._kinds.append(kind)
        self._starts.append(self._starts[-1] + length)

    def _cover(self, t: float) -> None:
        while self._starts[-1] <= t:
            self._draw()

    def at(self, t: float) -> str:
        """The network state at time ``t`` >= 0."""
        if t < 0:
            raise UsageError(f"time must be >= 0, got {t}")
        self._cover(t)
        return self._kinds[bisect.bisect_right(self._starts, t) - 1]

    def periods(self, until: float) -> list[tuple[float, float, str]]:
        """The periods ``(start, end, state)`` that overlap ``[0, until]``."""
        self._cover(until)
        n = bisect.bisect_right(self._starts, until)
        return [(self._starts[i], self._starts[i + 1], self._kinds[i]) for i in range(min(n, len(self._kinds)))]

    def next_change(self, t: float) -> float:
        """The first period boundary after ``t``."""
        self._cover(t)
        return self._starts[bisect.bisect_right(self._starts, t)]


class ChargeSchedule:
    """Charging ``charge_for_s`` of every ``charge_every_s`` seconds, from a seeded phase."""

    def __init__(self, battery: BatteryScenario | None, seed: int) -> None:
        self.every = None if battery is None else battery.charge_every_s
        self.length = 0.0 if battery is None else battery.charge_for_s
        self.phase = 0.0 if self.every is None else random.Random(f"charge:{seed}").uniform(0.0, self.every)

    def at(self, t: float) -> bool:
        if self.every is None or self.length <= 0:
            return False
        return (t + self.phase) % self.every < self.length

    def next_change(self, t: float) -> float:
        if self.every is None or self.length <= 0:
            return math.inf
        pos = (t + self.phase) % self.every
        step = self.length - pos if pos < self.length else self.every - pos
        nxt = t + step
        return nxt if nxt > t else math.nextafter(t, math.inf)  # always make progress


class SimulatedContext:
    """The agent's context provider for a simulated device (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.clock = clock
        self.network = NetworkSchedule(scenario.network, seed)
        self.charging = ChargeSchedule(scenario.battery, seed)
        b = scenario.battery
        self._level = 1.0 if b is None else random.Random(f"battery:{seed}").uniform(*b.initial)
        self._t0 = clock()
        self._t = 0.0
        self._pending_spend = 0
        self._time_in = dict.fromkeys(NETWORKS, 0.0)
        self._flat_s = 0.0
        self._lock = threading.Lock()

    # --- time ----------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the context started, by its clock (never before the last time seen)."""
        return max(self._t, self.clock() - self._t0)

    def _advance(self, t: float) -> None:
        """Integrate the battery (and the time spent per state) from the last time seen to ``t``."""
        b = self.scenario.battery
        if b is not None and self._pending_spend:
            self._level = max(0.0, self._level - b.drain_per_prediction * self._pending_spend)
        self._pending_spend = 0
        while self._t < t:
            end = min(t, self.network.next_change(self._t), self.charging.next_change(self._t))
            dt = end - self._t
            state = self.network.at(self._t)
            charging = self.charging.at(self._t)
            if b is not None:
                level0 = self._level
                rate = (b.charge_per_s if charging else 0.0) - b.drain_per_s
                if not charging:  # flat from the start of the piece, or from when it hits 0
                    if level0 <= 0.0:
                        self._flat_s += dt
                    elif rate < 0 and level0 / -rate < dt:
                        self._flat_s += dt - level0 / -rate
                self._level = min(1.0, max(0.0, level0 + rate * dt))
            self._time_in[state] += dt
            self._t = end

    # --- the provider ----------------------------------------------------------------------
    def __call__(self) -> DeviceContext:
        with self._lock:
            self._advance(self.now())
            return self._context()

    def _context(self) -> DeviceContext:
        state = self.network.at(self._t)
        charging = self.scenario.battery is None or self.charging.at(self._t)
        bandwidth = dict(self.scenario.network.bandwidth_kbps).get(state) if state != "offline" else None
        prefer = self.scenario.prefer
        if self.scenario.battery is not None and not charging and self._level < LOW_BATTERY:
            prefer = "energy"
        return DeviceContext(
            battery=round(self._level, 6),
            charging=charging,
            network=state,
            bandwidth_kbps=bandwidth,
            prefer=prefer,
        )

    def spend(self, predictions: int = 1) -> None:
        """The device made ``predictions`` predictions (drained at the next look at the battery)."""
        if predictions < 0:
            raise UsageError(f"predictions must be >= 0, got {predictions}")
        with self._lock:
            self._pending_spend += predictions

    def flat(self) -> bool:
        """Is the device off right now (battery at 0 and not charging)?"""
        with self._lock:
            self._advance(self.now())
            return self._flat_now()

    def _flat_now(self) -> bool:
        return self.scenario.battery is not None and self._level <= 0.0 and not self.charging.at(self._t)

    def network_at(self, t: float) -> str:
        return self.network.at(t)

    def totals(self) -> dict[str, Any]:
        """Seconds spent so far in each network state, flat, and the battery now."""
        with self._lock:
            self._advance(self.now())
            return {
                "network_s": {k: round(v, 3) for k, v in self._time_in.items()},
                "flat_s": round(self._flat_s, 3),
                "battery": round(self._level, 4),
                "charging": self.scenario.battery is None or self.charging.at(self._t),
                "network": self.network.at(self._t),
            }


__all__ = [
    "LOW_BATTERY",
    "BatteryScenario",
    "ChargeSchedule",
    "NetworkScenario",
    "NetworkSchedule",
    "Scenario",
    "SimulatedContext",
]
