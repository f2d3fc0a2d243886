"""The device agent: poll an update source, install into A/B slots, watch health, roll back.

One cycle (:meth:`Agent.run_once`):

1. ask the context provider for the device's moment; offline -> skip this poll;
2. ``source.check()`` -> an :class:`~tinymlops.edge.agent.source.Offer` or None;
3. if the offer revokes the active bundle (the control plane rolled its release back), roll back;
   if it is the active bundle, or one refused before, there is nothing to do; if it is the bundle
   still in the other slot, switch back to it (re-verified and smoke-tested, no download);
4. the :class:`~tinymlops.edge.agent.policy.DownloadPolicy` decides whether the context allows
   the download now (large bundles wait for Wi-Fi unless urgent) -> ``deferred``;
5. ``source.fetch()`` into ``incoming/``, then :meth:`Installer.install
   <tinymlops.edge.agent.install.Installer.install>`; the new runtime replaces the old one;
6. the :class:`~tinymlops.edge.agent.install.InstallResult` goes to the reporter;
7. health: whatever the check's outcome (but not when offline), at most once per
   ``AgentConfig.health_interval`` seconds — and at once after the active bundle changed — the
   active bundle's serving window is closed and every pending window goes to the health reporter
   (:meth:`Agent.flush_health`).

Errors from the context provider, the source or the disk make the agent back off (jittered,
capped, exponential; reset by the next good cycle); a bundle that is refused or fails its smoke
test is a *result*, not an error, and is not retried. The returned :class:`Cycle` carries the
delay before the next poll, which :meth:`Agent.run_forever` waits on its stop event.

The agent also serves predictions (:meth:`Agent.predict`) through the active runtime, whose
middleware chain ends with a :class:`~tinymlops.edge.agent.health.HealthWatch`: ``N`` failures in
a row roll back to the previous slot (and refuse the bundle that failed).

Health reports: with a ``health_reporter``, each activation of a bundle gets a
:class:`~tinymlops.edge.agent.serving_stats.ServingStats` that its HealthWatch records every call
into (predictions, errors, latency of the successful ones). When the active bundle changes
(install, rollback, a rollback the server asks for, a restart), the old bundle's window is closed
and queued at once — so the control plane gets the previous release's numbers on the same device
as a baseline — and sent at the next cycle. A report the reporter does not take (it raised) stays
queued (:class:`~tinymlops.edge.agent.serving_stats.PendingWindows`: one window per bundle, merged,
at most ``MAX_PENDING_BUNDLES`` bundles) and is sent with the next one; a window is removed only
once the reporter took it, so nothing is counted twice. Windows not yet handed to the reporter are
in memory only: call :meth:`Agent.flush_health` before :meth:`Agent.close` to keep them. No network
I/O ever happens on the prediction path. ``health_reporter=None`` turns reporting (and recording) off.

Telemetry: when the active bundle's manifest enables the telemetry policy, its runtime carries a
:class:`~tinymlops.observe.recorder.TelemetryRecorder` (given the agent's ``energy_meter``, if
any). With a ``telemetry_store`` (:class:`~tinymlops.observe.upload_store.UploadStore`), at most once
per ``AgentConfig.telemetry_interval`` seconds — offline too — and at once when the active bundle
changes (the retiring bundle's window closes at the switch, as for health reports), the recorder's
window is closed **exact** (``privatize_histograms=False``: the store merges, and privatizes at
upload) and put in the store; then, when the device is online, the ``telemetry_uploader`` (a
:class:`~tinymlops.edge.agent.remote.TelemetryUploader`) is called with the device's context and
decides by its upload policy what to send (:meth:`Agent.flush_telemetry`). The store never raises
into the agent, and the recorder never into a prediction.

Metering: the agent holds the device's :class:`~tinymlops.metering.meter.MeteringHost` (its usage
ledgers under ``<data_dir>/metering``, usage reports signed with the device key, licenses verified
with the trusted release keys — the issuer signs with the release key) and opens every runtime with
it bound (:func:`~tinymlops.metering.meter.metering_bound`, for the opening thread only: several
agents may share a process), so a bundle whose manifest enables the metering policy opens and debits
its ledger on every prediction; a refusal (no license, quota used, expired, revoked, a ledger that
cannot be used) is that prediction's error, never the agent's, and never rolls the bundle back. With a
``metering_sync`` (a :class:`~tinymlops.edge.agent.metering.MeteringSync`), when the device is online
the agent fetches licenses and revocations and sends usage reports (:meth:`Agent.sync_metering`) at
the first online cycle, then at most every ``AgentConfig.metering_interval`` seconds — but at the next
online cycle whatever the interval when a metered call was refused since the last sync (a device out of
queries wants its top-up now) or when an open ledger holds more unacknowledged entries than one report
carries (:meth:`MeteringSync.backlogged <tinymlops.edge.agent.metering.MeteringSync.backlogged>`). Its
outcome is :attr:`Agent.metering_outcome`. Bundles without the policy never touch the host.

Clock, timer, RNG, wait, context provider and reporter are injectable, so tests are deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.crypto.signing import TrustedKey
from tinymlops.edge.agent.backoff import Backoff
from tinymlops.edge.agent.health import HealthWatch
from tinymlops.edge.agent.install import Installer, InstallResult, with_timing
from tinymlops.edge.agent.metering import METERING_DIR, MeteringSync
from tinymlops.edge.agent.policy import DEFAULT_LARGE_BUNDLE_BYTES, DownloadPolicy
from tinymlops.edge.agent.serving_stats import PendingWindows, ServingStats
from tinymlops.edge.agent.slots import SlotState
from tinymlops.edge.agent.source import UpdateSource, check_offer, revoked_by
from tinymlops.edge.agent.store import Recovery, SlotStore
from tinymlops.edge.middleware import Middleware, Response
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import OperationError, SlotTransitionError, TinyMLOpsError, UsageError
from tinymlops.metering.meter import MeteringHost, metering_bound
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport

if TYPE_CHECKING:
    from tinymlops.observe.energy import EnergyMeter
    from tinymlops.observe.recorder import TelemetryRecorder
    from tinymlops.observe.upload_store import UploadStore

log = logging.getLogger("tinymlops.edge.agent")

#: how many refused offers (by file SHA-256) the agent remembers in memory
MAX_REMEMBERED_OFFERS = 256
#: replaced bundles whose stats are still read (at each flush) for calls that were in flight when
#: they were replaced
MAX_RETIRED_STATS = 4

Reporter = Callable[[InstallResult], None]
#: takes one health report durably (sent, or queued to be sent); raising means it did not take it
HealthSink = Callable[[HealthReport], None]
ContextProvider = Callable[[], DeviceContext]
#: sends what the upload store holds, as the upload policy allows with this context
TelemetryUploaderFn = Callable[[DeviceContext], Any]
#: syncs licenses and usage reports with the control plane; returns its outcome, never raises by design
MeteringSyncFn = Callable[[], Any]
Wait = Callable[[threading.Event, float], bool]


@dataclass(frozen=True)
class AgentConfig:
    """``poll_interval`` seconds between healthy polls (jittered by ``poll_jitter``); back-off
    ``backoff_base`` doubling (``backoff_factor``) up to ``backoff_cap`` with ``backoff_jitter``;
    ``health_threshold`` consecutive failed predictions roll back; health reports go out at most
    every ``health_interval`` seconds (0: every cycle), and at once after the active bundle changed;
    telemetry windows close (and uploads are tried) at most every ``telemetry_interval`` seconds
    (0: every cycle), and at once after the active bundle changed; licenses and usage reports are
    synced at most every ``metering_interval`` seconds when online (0: every online cycle), and at the
    next online cycle after a metered call was refused or when the usage backlog outgrows one report."""

    poll_interval: float = 60.0
    poll_jitter: float = 0.1
    backoff_base: float = 2.0
    backoff_factor: float = 2.0
    backoff_cap: float = 600.0
    backoff_jitter: float = 0.5
    large_bundle_bytes: int = DEFAULT_LARGE_BUNDLE_BYTES
    health_threshold: int = 3
    require_check_vector: bool = True
    threads: int = 1
    copy_chunk_bytes: int = 64 * 1024
    health_interval: float = 30.0
    telemetry_interval: float = 60.0
    metering_interval: float = 300.0

    def __post_init__(self) -> None:
        if not (isinstance(self.poll_interval, int | float) and self.poll_interval > 0):
            raise UsageError(f"poll_interval must be a positive number of seconds, got {self.poll_interval!r}")
        if isinstance(self.health_threshold, bool) or not (
            isinstance(self.health_threshold, int) and self.health_threshold >= 1
        ):
            raise UsageError(f"health_threshold must be a positive integer, got {self.health_threshold!r}")
        if isinstance(self.threads, bool) or not (isinstance(self.threads, int) and self.threads >= 1):
            raise UsageError(f"threads must be a positive integer, got {self.threads!r}")
        if (
            isinstance(self.health_interval, bool)
            or not isinstance(self.health_interval, int | float)
            or not 0 <= self.health_interval < math.inf
        ):
            raise UsageError(f"health_interval must be a finite number of seconds >= 0, got {self.health_interval!r}")
        for name in ("telemetry_interval", "metering_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise UsageError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@dataclass(frozen=True)
class Cycle:
    """What one :meth:`Agent.run_once` did. ``action`` is ``idle``, ``offline``, ``error``,
    ``deferred``, ``skipped`` (offer refused before) or an install status; ``delay`` is the
    seconds to wait before the next poll."""

    action: str
    delay: float
    result: InstallResult | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "cycle",
            "action": self.action,
            "delay": round(self.delay, 3),
            "error": self.error,
            "status": None if self.result is None else self.result.status,
        }


def _default_wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


def _describe(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"


class Agent:
    """The device agent over one data directory. Call :meth:`start` (or let the first
    :meth:`run_once` do it), then :meth:`run_once` / :meth:`run_forever`; :meth:`close` at the end.
    """

    def __init__(
        self,
        data_dir: Path | str,
        source: UpdateSource[Any],
        device_key: DeviceKeys | X25519PrivateKey,
        trusted_release_keys: Iterable[TrustedKey],
        *,
        config: AgentConfig | None = None,
        context: ContextProvider | None = None,
        reporter: Reporter | None = None,
        health_reporter: HealthSink | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        wait: Wait = _default_wait,
        extra_middleware: Callable[[], list[Middleware]] | None = None,
        telemetry_store: UploadStore | None = None,
        telemetry_uploader: TelemetryUploaderFn | None = None,
        energy_meter: EnergyMeter | None = None,
        metering: MeteringHost | None = None,
        metering_sync: MeteringSyncFn | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        trusted = list(trusted_release_keys)
        if metering is None and isinstance(device_key, DeviceKeys):
            metering = MeteringHost(
                Path(data_dir) / METERING_DIR, device_key=device_key.signing, trusted_issuer_keys=trusted, clock=clock
            )
        #: this device's usage ledgers (None: no signing key, so metered bundles do not open)
        self.metering = metering
        self.metering_sync = metering_sync
        self.metering_outcome: Any = None
        self._metering_at: float | None = None  # the timer at the last sync (None: not yet)
        self._metering_refusals = 0  # the host's refusals then
        self.telemetry_store = telemetry_store
        self.telemetry_uploader = telemetry_uploader
        self.energy_meter = energy_meter
        self._recorder: TelemetryRecorder | None = None
        self._retired_recorders: list[tuple[TelemetryRecorder, float]] = []
        self._telemetry_lock = threading.Lock()
        self._telemetry_at: float | None = None
        self._telemetry_now = False
        self.telemetry_outcome: Any = None
        self.source = source
        self.store = SlotStore(data_dir, copy_chunk=self.config.copy_chunk_bytes)
        self._extra_middleware = extra_middleware
        self.installer = Installer(
            self.store,
            device_key,
            trusted,
            require_check_vector=self.config.require_check_vector,
            threads=self.config.threads,
            middleware=self._runtime_middleware,
            meter="auto" if energy_meter is None else energy_meter,  # each runtime opens with it
            timer=timer,
            clock=clock,
        )
        self.context = context or DeviceContext
        self.reporter = reporter
        self.health_reporter = health_reporter
        self.policy = DownloadPolicy(self.config.large_bundle_bytes)
        c = self.config
        self.backoff = Backoff(
            base=c.backoff_base,
            factor=c.backoff_factor,
            cap=c.backoff_cap,
            jitter=c.backoff_jitter,
            poll_jitter=c.poll_jitter,
            rng=rng or random.Random(),
        )
        self.clock = clock
        self.timer = timer
        self._wait = wait
        self._lock = threading.RLock()
        self._runtime: Runtime | None = None
        self._watch: HealthWatch | None = None
        self._started = False
        self._refused_offers: OrderedDict[str, str] = OrderedDict()
        self._deferred: str | None = None
        self.recovery: Recovery | None = None
        self.health_pending = PendingWindows()
        self._retired: list[ServingStats] = []
        self._health_lock = threading.Lock()
        self._health_at: float | None = None  # the timer when health was last flushed
        self._health_now = False  # the active bundle changed: flush at the next cycle

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> Recovery:
        """Take the data directory, recover it, and open the active bundle (re-verified and
        smoke-tested; a bundle that fails falls back to the other slot)."""
        with self._lock, self._metering_bound():
            recovery = self.store.recover(self.installer)
            self._open_active(recovery.actions)
            self.recovery = recovery
            self._started = True
            return recovery

    def close(self) -> None:
        with self._lock:
            self._set_runtime(None)  # its window joins the pending ones (flush_health() sends them)
            self.store.close()
            if self.metering is not None:
                self.metering.close()  # the ledgers reopen (verified again) on their next use
            self._started = False

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metering_bound(self) -> contextlib.AbstractContextManager[Any]:
        """Runtimes opened inside meter with this agent's host (this thread only)."""
        return metering_bound(self.metering) if self.metering is not None else contextlib.nullcontext()

    def _open_active(self, notes: list[str]) -> None:
        while True:
            state = self.store.state
            bundle = state.active_bundle
            if state.active is None or bundle is None:
                self._set_runtime(None)
                return
            try:
                self._set_runtime(self.installer.open_active(state.active, bundle))
                return
            except Exception as exc:  # never crash on start: fall back, or run without a bundle
                slot = state.active
                if state.fallback is not None:
                    self.store.apply(state.rollback(refuse=True))
                else:
                    self.store.apply(state.invalidate(slot))
                    self.store.clear_slot(slot)
                notes.append(
                    f"active slot {slot} (bundle {bundle.bundle_id}) does not open or fails its smoke test "
                    f"({_describe(exc)}); active slot is now {self.store.state.active or 'none'}"
                )

    # --- serving ---------------------------------------------------------------------------
    @property
    def state(self) -> SlotState:
        return self.store.state

    @property
    def runtime(self) -> Runtime | None:
        """The runtime of the active bundle (None before the first install)."""
        return self._runtime

    def predict(self, x: Any, **metadata: Any) -> Response:
        runtime = self._runtime
        if runtime is None:
            raise UsageError("no bundle is installed on this device yet")
        return runtime.predict(x, **metadata)

    def _runtime_middleware(self) -> list[Middleware]:
        watch = HealthWatch(self.config.health_threshold, self._on_unhealthy)
        extra = self._extra_middleware() if self._extra_middleware is not None else []
        return [watch, *extra]

    @property
    def serving(self) -> ServingStats | None:
        """The open serving window of the active bundle (None when reporting is off or nothing is active)."""
        watch = self._watch
        return None if watch is None else watch.stats

    def _set_runtime(self, runtime: Runtime | None) -> None:
        old = self._watch
        watch = None
        if runtime is not None:
            watch = next((m for m in runtime.middleware if isinstance(m, HealthWatch)), None)
            if watch is not None and self.health_reporter is not None:
                bundle_id = runtime.manifest.bundle_id
                watch.stats = ServingStats(bundle_id, clock=self.clock, timer=self.timer)
        recorder = None if runtime is None else runtime.telemetry
        old_recorder = self._recorder
        self._runtime = runtime
        self._watch = watch
        self._recorder = recorder
        if old is not None and old.stats is not None:
            self._retire(old.stats)
        if old_recorder is not None and old_recorder is not recorder:
            self._retire_recorder(old_recorder)

    # --- telemetry ----------------------------------------------------------------------------
    @property
    def telemetry(self) -> TelemetryRecorder | None:
        """The active bundle's telemetry recorder (None when its manifest does not enable telemetry)."""
        return self._recorder

    def _retire_recorder(self, recorder: TelemetryRecorder) -> None:
        """The bundle of ``recorder`` is no longer active: its window closes now, into the store."""
        at = self.clock()
        with self._telemetry_lock:
            self._store_window(recorder, at)
            self._retired_recorders.append((recorder, at))
            del self._retired_recorders[:-MAX_RETIRED_STATS]
            self._telemetry_now = True

    def _store_window(self, recorder: TelemetryRecorder, at: float | None = None) -> None:
        store = self.telemetry_store
        if store is None:
            return
        try:
            window = recorder.take_window(at, privatize_histograms=False)
            if window is not None:
                store.add(window, recorder.policy.privacy)
        except Exception:  # telemetry never stops the agent
            log.exception("storing a telemetry window of bundle %s failed", recorder.bundle_id)

    def flush_telemetry(self, context: DeviceContext | None = None, *, upload: bool = True) -> Any:
        """Close the active bundle's telemetry window into the store (and the stragglers of replaced
        bundles, stamped at their switch), then — with ``upload`` and an uploader, unless the device
        is offline — upload as the policy allows with ``context`` (default: the provider's).
        Returns the uploader's outcome (None when nothing was tried)."""
        if self.telemetry_store is None:
            return None
        with self._telemetry_lock:
            recorder = self._recorder
            if recorder is not None:
                self._store_window(recorder)
            for old, at in self._retired_recorders:  # calls that were in flight at the switch
                self._store_window(old, at)
        uploader = self.telemetry_uploader
        if not upload or uploader is None:
            return None
        if context is None:
            try:
                context = self.context()
            except Exception:  # without a context the policy cannot say yes: wait for the next cycle
                return None
        if context.network == "offline":
            return None
        try:
            outcome = uploader(context)
        except Exception:  # uploading must never stop updates
            log.exception("uploading telemetry failed")
            return None
        self.telemetry_outcome = outcome
        return outcome

    def _telemetry_tick(self, context: DeviceContext) -> None:
        if self.telemetry_store is None:
            return
        now = self.timer()
        due = self._telemetry_at is None or now - self._telemetry_at >= self.config.telemetry_interval
        if not (due or self._telemetry_now):
            return
        self._telemetry_at = now
        self._telemetry_now = False
        try:
            self.flush_telemetry(context)
        except Exception:
            log.exception("telemetry failed")

    # --- metering --------------------------------------------------------------------------------
    def sync_metering(self) -> Any:
        """Run the metering sync now (licenses in, usage reports out); its outcome (None without a
        sync, or when it failed) is also kept in :attr:`metering_outcome`. Never raises: the agent
        calls it from its cycles when due (:meth:`metering_due`)."""
        sync = self.metering_sync
        if sync is None:
            return None
        self._metering_at = self.timer()
        self._metering_refusals = self.metering.refusals if self.metering is not None else 0
        try:
            outcome = sync()
        except Exception:  # metering must never stop updates; the ledgers keep everything for next time
            log.exception("the metering sync failed")
            return None
        self.metering_outcome = outcome
        return outcome

    def metering_due(self) -> str | None:
        """Why the metering sync should run at this (online) cycle, or None: ``first`` (not since the
        agent was made), ``interval`` (``metering_interval`` seconds since the last), ``refused`` (a
        metered call was refused since), ``backlog`` (a ledger outgrew one report). Cheap: memory only."""
        if self.metering_sync is None:
            return None
        if self._metering_at is None:
            return "first"
        if self.timer() - self._metering_at >= self.config.metering_interval:
            return "interval"
        if self.metering is not None and self.metering.refusals != self._metering_refusals:
            return "refused"
        sync = self.metering_sync
        if isinstance(sync, MeteringSync) and sync.backlogged():
            return "backlog"
        return None

    def _metering_tick(self) -> None:
        reason = self.metering_due()
        if reason is not None:
            log.debug("metering sync (%s)", reason)
            self.sync_metering()

    # --- health reports ----------------------------------------------------------------------
    def _retire(self, stats: ServingStats) -> None:
        """The bundle of ``stats`` is no longer active: close its window now and queue it."""
        with self._health_lock:
            window = stats.close()
            if window is not None:
                self.health_pending.add(window)
            self._retired.append(stats)
            del self._retired[:-MAX_RETIRED_STATS]
            self._health_now = True

    def _collect(self) -> None:
        """Close the active window and the retired ones (calls in flight at the switch) into the queue."""
        watch = self._watch
        if watch is not None and watch.stats is not None:
            window = watch.stats.close()
            if window is not None:
                self.health_pending.add(window)
        for stats in self._retired:  # the last few replaced bundles, for calls that were in flight
            window = stats.close()
            if window is not None:
                self.health_pending.add(window)

    def flush_health(self, context: DeviceContext | None = None) -> int:
        """Close the active bundle's window and hand every pending window to the health reporter,
        oldest first, with ``context`` (default: the context provider's). Returns how many the
        reporter took; stops at the first it does not take (that one and the rest stay queued)."""
        reporter = self.health_reporter
        if reporter is None:
            return 0
        if context is None:
            try:
                context = self.context()
            except Exception:  # the report goes out without it
                context = None
        context = _reportable(context)
        with self._health_lock:
            self._collect()
            windows = self.health_pending.drain()
        sent = 0
        for i, window in enumerate(windows):
            try:
                report = window.report(context, at=self.clock())
            except TinyMLOpsError:  # cannot become valid by waiting: do not let it block the queue
                log.exception("dropping a serving window of bundle %s that makes no valid report", window.bundle_id)
                continue
            try:
                reporter(report)
            except Exception as exc:  # kept: merged with what comes next, sent at the next flush
                log.warning("health report not taken (kept for the next flush): %s", _describe(exc))
                self.health_pending.put_back(windows[i:])
                break
            sent += 1
        return sent

    def _health_tick(self, context: DeviceContext) -> None:
        if self.health_reporter is None:
            return
        now = self.timer()
        due = self._health_at is None or now - self._health_at >= self.config.health_interval
        if not (due or self._health_now):
            return
        self._health_at = now
        self._health_now = False
        try:
            self.flush_health(context)
        except Exception:  # reporting must never stop updates
            log.exception("sending health reports failed")

    def _on_unhealthy(self, watch: HealthWatch, reason: str) -> None:
        """Called from inside a failing prediction: roll back; never let this replace that error."""
        with self._lock:
            if watch is not self._watch:  # a runtime that is no longer active
                return
            try:
                result = self._rollback(reason, refuse=True)
            except Exception:
                log.exception("rolling back an unhealthy bundle failed")
                return
            self._report(result)

    # --- rollback ----------------------------------------------------------------------------
    def rollback(self, reason: str, *, refuse: bool = True) -> InstallResult:
        """Switch back to the other slot now (``refuse``: never install the current bundle again)."""
        with self._lock:
            result = self._rollback(reason, refuse=refuse)
            self._report(result)
            return result

    def _rollback(self, reason: str, *, refuse: bool) -> InstallResult:
        t0 = self.timer()
        state = self.store.state
        bad = state.active_bundle
        target = state.fallback
        ids: dict[str, Any] = {} if bad is None else {"bundle_id": bad.bundle_id, "sha256": bad.sha256}
        if state.active is None or target is None:
            return self._made(
                "failed",
                f"{reason}; cannot roll back: no previous verified, smoke-tested bundle",
                t0,
                slot=state.active,
                error="SlotTransitionError",
                **ids,
            )
        entry = state.slots[target]
        assert entry is not None
        try:
            with self._metering_bound():
                runtime = self.installer.open_active(target, entry.bundle)
        except Exception as exc:  # the fallback no longer verifies: drop it, stay where we are
            self.store.apply(state.invalidate(target))
            self.store.clear_slot(target)
            return self._made(
                "failed",
                f"{reason}; cannot roll back: slot {target} no longer verifies ({_describe(exc)})",
                t0,
                slot=state.active,
                error=type(exc).__name__,
                **ids,
            )
        self.store.apply(state.rollback(refuse=refuse))
        self._set_runtime(runtime)
        return self._made(
            "rolled_back",
            f"{reason}; rolled back from bundle {bad.bundle_id if bad else '?'} to bundle "
            f"{entry.bundle.bundle_id} in slot {target}",
            t0,
            slot=target,
            **ids,
        )

    def _made(self, status: str, reason: str, t0: float, **kw: Any) -> InstallResult:
        active = self.store.state.active_bundle
        return InstallResult(
            status,
            reason,
            timings={"total_s": self.timer() - t0},
            at=self.clock(),
            active_bundle_id=None if active is None else active.bundle_id,
            **kw,
        )

    # --- the loop ----------------------------------------------------------------------------
    def _report(self, result: InstallResult) -> None:
        log.info("%s: %s", result.status, result.reason)
        if self.reporter is None:
            return
        try:
            self.reporter(result)
        except Exception:  # a broken reporter must not stop updates
            log.exception("the install-status reporter failed")

    def _error(self, where: str, exc: BaseException) -> Cycle:
        delay = self.backoff.failure()
        message = f"{where}: {_describe(exc)}"
        log.warning("%s (retry in %.1fs, failure %d)", message, delay, self.backoff.failures)
        return Cycle("error", delay, error=message)

    def _ok(self, action: str, result: InstallResult | None = None) -> Cycle:
        self.backoff.reset()
        return Cycle(action, self.backoff.poll_delay(self.config.poll_interval), result)

    def _remember_refused(self, sha256: str, reason: str) -> None:
        self._refused_offers[sha256] = reason
        self._refused_offers.move_to_end(sha256)
        while len(self._refused_offers) > MAX_REMEMBERED_OFFERS:
            self._refused_offers.popitem(last=False)

    def run_once(self) -> Cycle:
        """One poll (see the module docstring). Never raises for the other side's faults."""
        if not self._started or self.store.state.pending is not None:
            self.start()  # first cycle, or an earlier install died half-way (a disk error): recover
        try:
            context = self.context()
        except Exception as exc:
            return self._error("device context", exc)
        if context.network == "offline":
            self._telemetry_tick(context)  # windows still close into the store; nothing is sent
            return Cycle("offline", self.backoff.poll_delay(self.config.poll_interval))
        try:
            return self._poll(context)
        finally:
            self._metering_tick()
            self._health_tick(context)
            self._telemetry_tick(context)

    def _poll(self, context: DeviceContext) -> Cycle:
        try:
            offer = self.source.check()
        except Exception as exc:
            return self._error("checking for updates", exc)
        if offer is None:
            return self._ok("idle")
        try:
            check_offer(offer)
            revoked = revoked_by(offer)
        except TinyMLOpsError as exc:
            return self._error("checking for updates", exc)

        with self._lock:
            state = self.store.state
            active = state.active_bundle
            if active is not None and {active.bundle_id, active.sha256} & revoked and state.fallback is not None:
                result = self._rollback(f"the control plane rolled back bundle {active.bundle_id}", refuse=True)
                self._report(result)
                return self._ok(result.status, result)
            # revoked with nothing to roll back to: keep serving it until the offered bundle replaces it
            if active is not None and active.sha256 == offer.sha256:
                return self._ok("idle")
            if state.is_refused(offer.sha256) or offer.sha256 in self._refused_offers:
                return self._ok("skipped")
            fallback = state.fallback
            if fallback is not None:
                entry = state.slots[fallback]
                if entry is not None and entry.bundle.sha256 == offer.sha256:
                    result = self._rollback("the control plane offers the previous bundle again", refuse=False)
                    self._report(result)
                    if result.status == "rolled_back":
                        return self._ok(result.status, result)
                    # the old slot no longer verifies: download the bundle again below

        decision = self.policy.decide(offer, context)
        if not decision.allowed:
            if self._deferred != offer.sha256:
                self._deferred = offer.sha256
                self._report(self._made("deferred", decision.reason, self.timer(), sha256=offer.sha256))
            return self._ok("deferred")
        self._deferred = None

        t = self.timer()
        try:
            path = self.source.fetch(offer, self.store.incoming_dir)
        except Exception as exc:
            with contextlib.suppress(OSError):
                self.store.clear_incoming()
            return self._error(f"fetching {offer.target_path}", exc)
        download_s = self.timer() - t

        try:
            with self._lock, self._metering_bound():
                result = self.installer.install(path, expected_sha256=offer.sha256)
                if result.status == "installed":
                    self._set_runtime(result.runtime)
        except (OperationError, SlotTransitionError, OSError) as exc:
            return self._error(f"installing {offer.target_path}", exc)
        finally:
            with contextlib.suppress(OSError):
                self.store.clear_incoming()
        result = with_timing(result, download_s=download_s)
        if result.status == "refused":
            self._remember_refused(offer.sha256, result.reason)
        self._report(result)
        return self._ok(result.status, result)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Poll until ``stop_event`` is set, waiting each cycle's delay on it."""
        if not self._started:
            self.start()
        while not stop_event.is_set():
            try:
                cycle = self.run_once()
            except TinyMLOpsError as exc:  # a bug or a local misuse: keep the device alive, back off
                cycle = self._error("agent cycle", exc)
            if self._wait(stop_event, cycle.delay):
                break


def _reportable(context: DeviceContext | None) -> DeviceContext | None:
    """``context`` as a report can carry it (JSON has no infinity: an unbounded bandwidth is unknown)."""
    if context is None or context.bandwidth_kbps is None or math.isfinite(context.bandwidth_kbps):
        return context
    return dataclasses.replace(context, bandwidth_kbps=None)


__all__ = [
    "Agent",
    "AgentConfig",
    "ContextProvider",
    "Cycle",
    "HealthSink",
    "MeteringSyncFn",
    "Reporter",
    "TelemetryUploaderFn",
]
