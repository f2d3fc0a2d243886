"""One simulated device, and a group of them on threads.

A :class:`SimulatedDevice` is the real device software over its own data directory: it connects
with :func:`tinymlops.edge.agent.remote.connect` (its own keys, enrolment with its one-time token,
TUF trust bootstrap — each once per data directory, so a re-run reuses the enrolment), then runs
the real :class:`~tinymlops.edge.agent.loop.Agent` with a
:class:`~tinymlops.fleet.context.SimulatedContext` as its context provider. One thread per device
interleaves the agent's polls (``run_once``, then its delay) with a prediction workload at the
entry's rate through :meth:`Agent.predict` on the installed bundle
(:mod:`tinymlops.fleet.workload`), and counts everything in a
:class:`~tinymlops.fleet.stats.DeviceStats`.

The device lives through its scenario: while the network is ``offline`` the agent skips its polls
(and enrolment waits) but predictions go on — on-device inference needs no network; while the
battery is flat the device is off. An unreachable or restarting server is what the agent already
survives (it backs off and converges); a first enrolment the server cannot take now (unreachable,
5xx) is retried with back-off, one it refuses (4xx: a spent or expired token, an unknown profile)
stops that device with the reason.

:class:`DeviceGroup` runs many devices on threads in one process — the ``threads`` backend, and
what each Ray actor runs for its share of the fleet.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.edge.agent.backoff import Backoff
from tinymlops.edge.agent.loop import AgentConfig
from tinymlops.edge.agent.remote import Connection, connect
from tinymlops.errors import ServerRequestError, ServerUnreachableError, TinyMLOpsError, UsageError
from tinymlops.fleet.context import Scenario, SimulatedContext
from tinymlops.fleet.stats import DeviceStats
from tinymlops.fleet.workload import InputShift, Workload, workload_for
from tinymlops.observe.upload_policy import UploadPolicy

log = logging.getLogger("tinymlops.fleet")

#: the longest a device thread sleeps before looking at its context (and the stop event) again
TICK_S = 0.25


@dataclass(frozen=True)
class DevicePlan:
    """Everything one simulated device needs (plain data: it crosses process boundaries on Ray)."""

    index: int
    name: str
    entry: str
    profile: str
    data_dir: str
    server_url: str
    seed: int
    rate: float
    scenario: Scenario
    agent: AgentConfig
    token: str | None = None
    tags: tuple[str, ...] = ()
    start_delay_s: float = 0.0
    timeout_s: float = 10.0
    upload: UploadPolicy | None = None  # None: no consent (telemetry waits on the device)
    shift: InputShift | None = None


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:300]


class SimulatedDevice:
    def __init__(self, plan: DevicePlan, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self.clock = clock
        self.context = SimulatedContext(plan.scenario, plan.seed, clock=clock)
        self.stats = DeviceStats(plan.name, plan.entry, plan.profile)
        self.connection: Connection | None = None
        self._workload: Workload | None = None
        self._no_input = np.zeros((1, 1), np.float32)

    # --- the device's life -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Live until ``stop`` is set (never raises: a crash is recorded in the stats)."""
        try:
            self._run(stop)
        except BaseException as exc:  # a simulator bug must not take the fleet down
            log.exception("simulated device %s crashed", self.plan.name)
            with self.stats as st:
                st.state = "crashed"
                st.last_error = _describe(exc)

    def _run(self, stop: threading.Event) -> None:
        if stop.wait(self.plan.start_delay_s):
            self._set_state("stopped")
            return
        conn = self._connect(stop)
        if conn is None:
            return
        self.connection = conn
        with self.stats as st:
            st.device_id = conn.device_id
        agent = conn.agent(config=self.plan.agent, context=self.context, rng=random.Random(self.plan.seed))
        try:
            agent.start()
            self._sync_bundle(agent)
            self._loop(agent, stop)
        finally:
            agent.close()
            pending = len(conn.reporter.pending())
            sent = self._reports_sent()
            with self.stats as st:
                st.reports_pending = pending
                st.reports_sent = sent
                if st.state not in ("crashed", "failed"):
                    st.state = "stopped"

    def _connect(self, stop: threading.Event) -> Connection | None:
        p = self.plan
        backoff = Backoff(
            base=p.agent.backoff_base,
            cap=p.agent.backoff_cap,
            jitter=p.agent.backoff_jitter,
            rng=random.Random(p.seed),
        )
        while not stop.is_set():
            ctx = self.context()
            self._record_context()
            if ctx.network == "offline" or (ctx.battery <= 0.0 and not ctx.charging):
                self._set_state("flat" if ctx.network != "offline" else "offline")
                stop.wait(TICK_S)
                continue
            self._set_state("connecting")
            with self.stats as st:
                st.connect_attempts += 1
            try:
                return connect(
                    p.server_url,
                    p.data_dir,
                    enrolment_token=p.token,
                    profile=p.profile,
                    timeout_s=p.timeout_s,
                    upload_policy=p.upload,
                )
            except ServerRequestError as exc:
                with self.stats as st:
                    st.last_error = _describe(exc)
                if not (isinstance(exc, ServerUnreachableError) or exc.status >= 500):
                    self._set_state("failed")
                    return None
                stop.wait(backoff.failure())
            except (TinyMLOpsError, OSError) as exc:
                with self.stats as st:
                    st.last_error = _describe(exc)
                    st.state = "failed"
                return None
        self._set_state("stopped")
        return None

    def _loop(self, agent: Any, stop: threading.Event) -> None:
        rate = self.plan.rate
        next_poll = self.clock()
        last = self.clock()
        owed = 0.0
        while not stop.is_set():
            now = self.clock()
            ctx = self.context()
            if ctx.battery <= 0.0 and not ctx.charging:  # flat: the device is off
                self._set_state("flat")
                self._record_context()
                owed, last = 0.0, now
                next_poll = max(next_poll, now)  # polls again as soon as it is back on
                stop.wait(TICK_S)
                continue
            offline = ctx.network == "offline"
            self._set_state("offline" if offline else "online")
            if now >= next_poll:
                next_poll = self._poll(agent)
            owed = min(owed + rate * (now - last), max(1.0, rate))  # at most a second's worth at once
            last = now
            n = int(owed)
            owed -= n
            for _ in range(n):
                self._predict(agent, offline)
            if n:
                self.context.spend(n)
            self._record_context()
            delay = min(TICK_S, max(0.0, next_poll - self.clock()))
            if rate > 0:
                delay = min(delay, max(0.0, (1.0 - owed) / rate))
            stop.wait(delay)

    def _poll(self, agent: Any) -> float:
        try:
            cycle = agent.run_once()
            action, delay, error = cycle.action, cycle.delay, cycle.error
        except Exception as exc:  # run_once does not raise for the server's faults; a local one is counted
            action, delay, error = "error", self.plan.agent.poll_interval, _describe(exc)
        sent = self._reports_sent()
        with self.stats as st:
            st.cycles[action] = st.cycles.get(action, 0) + 1
            st.reports_sent = sent
            if error:
                st.last_error = error
        self._sync_bundle(agent)
        return self.clock() + delay

    def _sync_bundle(self, agent: Any) -> None:
        """Follow the active bundle: a new one gets its workload."""
        active = agent.state.active_bundle
        bundle_id = None if active is None else active.bundle_id
        if bundle_id == self.stats.bundle_id and (bundle_id is None or self._workload is not None):
            return
        runtime = agent.runtime
        workload = None if runtime is None else workload_for(runtime, self.plan.seed, shift=self.plan.shift)
        ref = None
        if runtime is not None:
            model = getattr(runtime.manifest, "model", None)
            ref = getattr(model, "ref", None)
        self._workload = workload
        with self.stats as st:
            st.bundle_id = bundle_id
            st.ref = ref
            st.workload = None if workload is None else workload.kind

    def _predict(self, agent: Any, offline: bool) -> None:
        workload = self._workload
        if workload is None or workload.kind == "none":
            x, label = self._no_input, None
        else:
            x, label = workload.next()
        t0 = time.perf_counter()
        try:
            response = agent.predict(x)
        except UsageError:  # no bundle yet, or the device refused this call: counted, not an error
            with self.stats as st:
                st.refused += 1
            return
        except Exception as exc:
            with self.stats as st:
                st.errors += 1
                st.last_error = _describe(exc)
            return
        ms = (time.perf_counter() - t0) * 1e3
        right = None if workload is None else workload.score(response.outputs, label)
        with self.stats as st:
            st.predictions += 1
            st.offline_predictions += offline
            st.latency.add(ms)
            if right is not None:
                st.labelled += 1
                st.correct += right

    # --- bookkeeping ----------------------------------------------------------------------------
    def _reports_sent(self) -> dict[str, int]:
        conn = self.connection
        if conn is None:
            return {"install": 0, "health": 0}
        health = getattr(conn, "health_reporter", None)
        return {"install": conn.reporter.sent, "health": 0 if health is None else health.sent}

    def _set_state(self, state: str) -> None:
        with self.stats as st:
            st.state = state

    def _record_context(self) -> None:
        totals = self.context.totals()
        with self.stats as st:
            st.context = totals


class DeviceGroup:
    """Simulated devices on threads in this process (one thread each)."""

    def __init__(self, plans: Sequence[DevicePlan]) -> None:
        names = [p.name for p in plans]
        if len(set(names)) != len(names):
            raise UsageError("device names in a group must be unique")
        for p in plans:
            Path(p.data_dir).mkdir(parents=True, exist_ok=True)
        self.devices = [SimulatedDevice(p) for p in plans]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=d.run, args=(self._stop,), name=f"fleet-{d.plan.name}", daemon=True)
            for d in self.devices
        ]
        self._started = False

    def start(self) -> int:
        if self._started:
            raise UsageError("this device group has already started")
        self._started = True
        for t in self._threads:
            t.start()
        return len(self._threads)

    def snapshot(self) -> list[dict[str, Any]]:
        return [d.stats.to_dict() for d in self.devices]

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Stop every device (each finishes what it is doing) and return the final stats."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        out = self.snapshot()
        for d, t in zip(out, self._threads, strict=True):
            if t.is_alive():
                d["state"] = "stuck"
        return out


__all__ = ["TICK_S", "DeviceGroup", "DevicePlan", "SimulatedDevice"]
