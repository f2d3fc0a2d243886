"""Rollouts as a pure state machine: cohorts, health verdicts and transitions, with no I/O.

Nothing here reads a clock, a file or a database: the caller passes ``now`` and a
:class:`HealthSnapshot` aggregated from what the current stage's devices reported, and persists
the :class:`RolloutState` and every :class:`Transition` it gets back (like python-tuf's trusted
metadata set, the release service wraps this with I/O).

States::

    pending ─start─► running(k) ─promote/auto pass─► running(k+1) … ─► completed
                       │  ▲                                              │
                 pause │  │ resume                                       │ rollback
                       ▼  │                                              ▼
                      paused ─rollback─► rolling_back ─finish─► rolled_back (terminal)
    running(k) ─auto fail─► halted ─(plan.on_failure == "rollback": auto)─► rolling_back
    halted ─resume─► running(k)   (a human overrides the verdict; soak restarts)

A device's cohort position is a stable hash of (release id, device id) in [0, 1); it is in stage
``k`` iff its position is below the stage's fraction, so restarts never reshuffle and adding
devices never moves existing ones. (The release service, whose releases have a fixed set of
devices, ranks them by this position instead and gives stage ``k`` the first
``max(1, ceil(fraction * N))`` — :func:`tinymlops.release.rollouts.assign_stages` — so that a small
fleet's 5% canary is one device, not none.) A rolled-back release stays rolled back; the way forward is a
new release (a new ``release_id``, hence new positions).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tinymlops.errors import RolloutTransitionError, SpecError, UsageError
from tinymlops.spec.rollout import HealthCriteria, RolloutPlan

STATUSES = ("pending", "running", "paused", "halted", "rolling_back", "rolled_back", "completed")
TERMINAL = frozenset({"rolled_back"})
AUTO = "auto"
VERDICTS = ("pass", "fail", "wait")

_GATES = frozenset({"min_reports", "min_soak_s", "min_predictions", "min_class_samples"})
_POSITION_DOMAIN = b"tinymlops/rollout-cohort/v1\x00"


# --- cohorts -------------------------------------------------------------------------------
def cohort_position(release_id: str, device_id: str) -> float:
    """The device's stable place in the release's rollout, uniform in [0, 1).

    SHA-256 over a domain tag and the two length-prefixed ids (so ``("ab", "c")`` and
    ``("a", "bc")`` differ); the top 53 bits make an exactly representable float.
    """
    if not isinstance(release_id, str) or not release_id:
        raise UsageError(f"cohort_position: release_id must be a non-empty string, got {release_id!r:.40}")
    if not isinstance(device_id, str) or not device_id:
        raise UsageError(f"cohort_position: device_id must be a non-empty string, got {device_id!r:.40}")
    rel, dev = release_id.encode(), device_id.encode()
    digest = hashlib.sha256(
        _POSITION_DOMAIN + len(rel).to_bytes(4, "big") + rel + len(dev).to_bytes(4, "big") + dev
    ).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def in_stage(plan: RolloutPlan, stage: int, release_id: str, device_id: str) -> bool:
    """Whether the device gets the release once the rollout has reached ``stage`` (0-based)."""
    _check_stage_index(plan, stage)
    return cohort_position(release_id, device_id) < plan.stages[stage].fraction


def first_stage(plan: RolloutPlan, release_id: str, device_id: str) -> int:
    """The first stage (0-based) that includes the device; the last stage includes every device."""
    position = cohort_position(release_id, device_id)
    for index, stage in enumerate(plan.stages):
        if position < stage.fraction:
            return index
    return len(plan.stages) - 1  # unreachable: the last fraction is 1.0 and positions are < 1


def _check_stage_index(plan: RolloutPlan, stage: int) -> None:
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(plan.stages):
        raise UsageError(f"rollout: stage must be an index in 0..{len(plan.stages) - 1}, got {stage!r:.20}")


# --- health --------------------------------------------------------------------------------
def _opt_number(where: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{where} must be None or a finite number >= 0, got {value!r:.40}")


_CLASS_COUNTS = ("devices", "new_latency_samples", "base_latency_samples", "new_energy_samples", "base_energy_samples")
_CLASS_VALUES = ("new_p50_ms", "base_p50_ms", "new_p95_ms", "base_p95_ms", "new_energy_j", "base_energy_j")


@dataclass(frozen=True)
class ClassComparison:
    """One device class (profile) of a release, from telemetry: the new bundle against the same
    devices' previous bundle. Only devices with telemetry on both bundles count for a metric (the
    ``*_samples``: successful calls in the latency histograms, measured inferences for energy, whose
    ``energy_method`` is one method for both sides); ``*_baseline`` says whether any device of the
    class has telemetry from its previous bundle at all. The caller aggregates
    (:mod:`tinymlops.observe.performance`)."""

    profile: str
    devices: int = 0
    latency_baseline: bool = False
    new_latency_samples: int = 0
    base_latency_samples: int = 0
    new_p50_ms: float | None = None
    base_p50_ms: float | None = None
    new_p95_ms: float | None = None
    base_p95_ms: float | None = None
    energy_baseline: bool = False
    energy_method: str | None = None
    new_energy_samples: int = 0
    base_energy_samples: int = 0
    new_energy_j: float | None = None
    base_energy_j: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.profile, str):
            raise UsageError(f"class comparison: profile must be a string, got {self.profile!r:.40}")
        for name in _CLASS_COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"class comparison: '{name}' must be a non-negative integer, got {value!r:.40}")
        for name in _CLASS_VALUES:
            _opt_number(f"class comparison: '{name}'", getattr(self, name))

    @staticmethod
    def _ratio(new: float | None, base: float | None) -> float | None:
        return None if new is None or not base else new / base

    @property
    def p50_ratio(self) -> float | None:
        return self._ratio(self.new_p50_ms, self.base_p50_ms)

    @property
    def p95_ratio(self) -> float | None:
        return self._ratio(self.new_p95_ms, self.base_p95_ms)

    @property
    def energy_ratio(self) -> float | None:
        return self._ratio(self.new_energy_j, self.base_energy_j)

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "p50_ratio": self.p50_ratio,
            "p95_ratio": self.p95_ratio,
            "energy_ratio": self.energy_ratio,
        }


@dataclass(frozen=True)
class HealthSnapshot:
    """What the devices of one stage reported since the stage started (the caller aggregates).

    ``installs_ok``/``installs_failed`` count install reports; ``smoke_failures`` counts installs
    whose smoke test failed (a subset of the reports); ``prediction_errors`` of ``predictions``
    failed; ``latency_p50_ms`` is the stage's median latency and ``baseline_p50_ms`` the previous
    release's on the same devices (``None`` when unknown, e.g. a first release). ``classes`` are the
    per-device-class telemetry comparisons the telemetry gates judge (empty when no gate is set).
    """

    stage: int
    installs_ok: int = 0
    installs_failed: int = 0
    smoke_failures: int = 0
    predictions: int = 0
    prediction_errors: int = 0
    latency_p50_ms: float | None = None
    baseline_p50_ms: float | None = None
    classes: tuple[ClassComparison, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if not all(isinstance(c, ClassComparison) for c in self.classes):
            raise UsageError("health snapshot: 'classes' must hold ClassComparison objects")
        for name in ("stage", "installs_ok", "installs_failed", "smoke_failures", "predictions", "prediction_errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"health snapshot: '{name}' must be a non-negative integer, got {value!r:.40}")
        if self.smoke_failures > self.reports:
            raise UsageError(
                f"health snapshot: smoke_failures ({self.smoke_failures}) exceeds the install reports ({self.reports})"
            )
        if self.prediction_errors > self.predictions:
            raise UsageError(
                f"health snapshot: prediction_errors ({self.prediction_errors}) exceeds "
                f"predictions ({self.predictions})"
            )
        for name in ("latency_p50_ms", "baseline_p50_ms"):
            _opt_number(f"health snapshot: '{name}'", getattr(self, name))

    @property
    def reports(self) -> int:
        return self.installs_ok + self.installs_failed


@dataclass(frozen=True)
class CriterionCheck:
    """One criterion judged: ``ok`` is None when it could not be measured (no data)."""

    criterion: str
    measured: float | None
    threshold: float
    ok: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "measured": self.measured,
            "threshold": self.threshold,
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Verdict:
    """``pass`` (promote), ``fail`` (halt) or ``wait``, with every check and a one-line reason."""

    decision: str
    reason: str
    checks: tuple[CriterionCheck, ...]

    @property
    def failed(self) -> tuple[CriterionCheck, ...]:
        """The health criteria measured and violated (not the gates: reports and soak time)."""
        return tuple(c for c in self.checks if c.ok is False and c.criterion not in _GATES)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "checks": [c.to_dict() for c in self.checks]}


def _rate_check(name: str, measured: float | None, threshold: float, *, at_least: bool, what: str) -> CriterionCheck:
    if measured is None:
        return CriterionCheck(name, None, threshold, None, f"{what}: no data yet")
    ok = measured >= threshold if at_least else measured <= threshold
    op = (">=" if ok else "<") if at_least else ("<=" if ok else ">")
    return CriterionCheck(name, measured, threshold, ok, f"{what} {measured:.4g} {op} {threshold:.4g}")


def judge(criteria: HealthCriteria, snapshot: HealthSnapshot, elapsed_s: float) -> Verdict:
    """Judge one stage's health after ``elapsed_s`` seconds in it.

    * ``fail`` as soon as at least ``min_reports`` installs were reported and any measured
      criterion is violated (no need to wait for the soak time: the evidence is there);
    * ``pass`` when ``min_reports`` arrived, ``min_soak_s`` elapsed, at least ``min_predictions``
      predictions were reported (checked only when it is above 0) and no measured criterion is
      violated (a criterion with no data — no predictions yet, no baseline latency — does not
      block and is named in the checks) and no telemetry gate holds (a device class with fewer than
      ``min_class_samples`` telemetry samples on either bundle holds, like ``min_predictions``);
    * otherwise ``wait``.
    """
    if not isinstance(criteria, HealthCriteria) or not isinstance(snapshot, HealthSnapshot):
        raise UsageError("judge: needs a HealthCriteria and a HealthSnapshot")
    if isinstance(elapsed_s, bool) or not isinstance(elapsed_s, int | float) or math.isnan(elapsed_s):
        raise UsageError(f"judge: elapsed_s must be a number of seconds, got {elapsed_s!r:.40}")
    elapsed = max(0.0, float(elapsed_s))
    reports = snapshot.reports
    checks = [
        _rate_check(
            "min_install_success_rate",
            snapshot.installs_ok / reports if reports else None,
            criteria.min_install_success_rate,
            at_least=True,
            what="install success rate",
        ),
        _rate_check(
            "max_smoke_failure_rate",
            snapshot.smoke_failures / reports if reports else None,
            criteria.max_smoke_failure_rate,
            at_least=False,
            what="smoke-test failure rate",
        ),
        _rate_check(
            "max_error_rate",
            snapshot.prediction_errors / snapshot.predictions if snapshot.predictions else None,
            criteria.max_error_rate,
            at_least=False,
            what="prediction error rate",
        ),
    ]
    if snapshot.latency_p50_ms is None or not snapshot.baseline_p50_ms:
        missing = "no baseline from the previous release" if not snapshot.baseline_p50_ms else "no latency reported"
        checks.append(
            CriterionCheck("max_latency_ratio", None, criteria.max_latency_ratio, None, f"latency ratio: {missing}")
        )
    else:
        checks.append(
            _rate_check(
                "max_latency_ratio",
                snapshot.latency_p50_ms / snapshot.baseline_p50_ms,
                criteria.max_latency_ratio,
                at_least=False,
                what="p50 latency / previous release",
            )
        )
    checks.extend(_class_checks(criteria, snapshot.classes))
    enough = reports >= criteria.min_reports
    soaked = elapsed >= criteria.min_soak_s
    checks.append(
        CriterionCheck(
            "min_reports",
            float(reports),
            float(criteria.min_reports),
            enough,
            f"install reports {reports} {'>=' if enough else '<'} {criteria.min_reports}",
        )
    )
    checks.append(
        CriterionCheck(
            "min_soak_s",
            elapsed,
            criteria.min_soak_s,
            soaked,
            f"soak {elapsed:.4g} s {'>=' if soaked else '<'} {criteria.min_soak_s:.4g} s",
        )
    )
    used = True
    if criteria.min_predictions > 0:
        used = snapshot.predictions >= criteria.min_predictions
        checks.append(
            CriterionCheck(
                "min_predictions",
                float(snapshot.predictions),
                float(criteria.min_predictions),
                used,
                f"predictions {snapshot.predictions} {'>=' if used else '<'} {criteria.min_predictions}",
            )
        )
    violated = [c for c in checks if c.ok is False and c.criterion not in _GATES]
    holding = [c.detail for c in checks if c.ok is False and c.criterion in _GATES]
    if enough and violated:
        return Verdict("fail", "; ".join(c.detail for c in violated), tuple(checks))
    if not holding:
        return Verdict("pass", "healthy: " + "; ".join(c.detail for c in checks), tuple(checks))
    waiting = holding
    if violated:
        waiting.append("violated but too few reports to judge: " + "; ".join(c.detail for c in violated))
    return Verdict("wait", "waiting: " + "; ".join(waiting), tuple(checks))


#: the telemetry gates: (criterion, what is compared, which samples)
_CLASS_GATES = (
    ("max_p95_latency_ratio", "p95 latency / previous bundle", "latency"),
    ("max_energy_ratio", "energy per inference / previous bundle", "energy"),
)


def _class_checks(criteria: HealthCriteria, classes: tuple[ClassComparison, ...]) -> list[CriterionCheck]:
    """The telemetry gates, per device class: a ratio check where both bundles have enough samples,
    a ``min_class_samples`` hold where they do not, nothing judged without a baseline."""
    out: list[CriterionCheck] = []
    need = criteria.min_class_samples
    for criterion, what, kind in _CLASS_GATES:
        threshold: float | None = getattr(criteria, criterion)
        if threshold is None:
            continue
        if not classes:
            out.append(CriterionCheck(criterion, None, threshold, None, f"{what}: no device with a previous bundle"))
            continue
        for c in sorted(classes, key=lambda c: c.profile):
            if kind == "latency":
                baseline, ratio = c.latency_baseline, c.p95_ratio
                new_n, base_n = c.new_latency_samples, c.base_latency_samples
            else:
                baseline, ratio = c.energy_baseline, c.energy_ratio
                new_n, base_n = c.new_energy_samples, c.base_energy_samples
            label = f"{what} on {c.profile}"
            if not baseline:
                detail = f"{label}: no telemetry from the previous bundle"
                out.append(CriterionCheck(criterion, None, threshold, None, detail))
            elif new_n < need or base_n < need:
                detail = (
                    f"{kind} samples on {c.profile}: {new_n} new, {base_n} previous, {need} needed on each "
                    "(from the devices with telemetry on both bundles)"
                )
                out.append(CriterionCheck("min_class_samples", float(min(new_n, base_n)), float(need), False, detail))
            elif ratio is None:
                out.append(CriterionCheck(criterion, None, threshold, None, f"{label}: the previous bundle measured 0"))
            else:
                method = f" ({c.energy_method})" if kind == "energy" and c.energy_method else ""
                out.append(_rate_check(criterion, ratio, threshold, at_least=False, what=label + method))
    return out


# --- state and transitions -----------------------------------------------------------------
@dataclass(frozen=True)
class Transition:
    """One recorded step: the caller persists it next to the new state."""

    release_id: str
    from_status: str
    from_stage: int
    to_status: str
    to_stage: int
    reason: str
    actor: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "from_status": self.from_status,
            "from_stage": self.from_stage,
            "to_status": self.to_status,
            "to_stage": self.to_stage,
            "reason": self.reason,
            "actor": self.actor,
            "at": self.at,
        }


@dataclass(frozen=True)
class RolloutState:
    """Where a release's rollout stands. ``stage`` is the current stage index (0 while pending);
    ``stage_started_at`` is when the soak of the current stage began (None while pending)."""

    release_id: str
    plan: RolloutPlan
    status: str = "pending"
    stage: int = 0
    stage_started_at: float | None = None
    updated_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.release_id, str) or not self.release_id:
            raise UsageError(f"rollout state: release_id must be a non-empty string, got {self.release_id!r:.40}")
        if not isinstance(self.plan, RolloutPlan):
            raise UsageError("rollout state: plan must be a RolloutPlan")
        if self.status not in STATUSES:
            raise UsageError(f"rollout state: status must be one of {', '.join(STATUSES)}, got {self.status!r:.40}")
        _check_stage_index(self.plan, self.stage)
        if self.status == "pending" and (self.stage != 0 or self.stage_started_at is not None):
            raise UsageError("rollout state: a pending rollout has no stage started")
        if self.status in ("running", "paused", "halted") and self.stage_started_at is None:
            raise UsageError(f"rollout state: a {self.status} rollout needs stage_started_at")
        if self.status == "completed" and self.stage != len(self.plan.stages) - 1:
            raise UsageError("rollout state: a completed rollout is at its last stage")

    @property
    def current_stage(self) -> str:
        return self.plan.stages[self.stage].name

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def serves(self, device_id: str) -> bool:
        """Whether the device should be offered this release now (running/paused/halted keep the
        stage reached so far; rolling back or rolled back offer it to nobody)."""
        if self.status in ("pending", "rolling_back", "rolled_back"):
            return False
        return in_stage(self.plan, self.stage, self.release_id, device_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "plan": self.plan.to_dict(),
            "status": self.status,
            "stage": self.stage,
            "stage_started_at": self.stage_started_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RolloutState:
        """Read back a persisted state (the caller's own record; errors say what is wrong)."""
        if not isinstance(data, Mapping):
            raise SpecError(f"rollout state: must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"release_id", "plan", "status", "stage", "stage_started_at", "updated_at"})
        if unknown:
            raise SpecError(f"rollout state: unknown field(s) {', '.join(unknown)}")
        for key in ("stage_started_at", "updated_at"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise SpecError(f"rollout state: field '{key}' must be null or a number, got {value!r:.40}")
        try:
            return cls(
                release_id=data.get("release_id"),  # type: ignore[arg-type]
                plan=RolloutPlan.from_dict(data.get("plan")),
                status=data.get("status"),  # type: ignore[arg-type]
                stage=data.get("stage"),  # type: ignore[arg-type]
                stage_started_at=data.get("stage_started_at"),
                updated_at=data.get("updated_at"),
            )
        except UsageError as exc:
            raise SpecError(exc.message) from exc


@dataclass(frozen=True)
class Step:
    """A transition's outcome: the new state and the record to persist."""

    state: RolloutState
    transition: Transition


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` decided: the final state, the transitions taken (0, 1 or 2, in order)
    and the verdict behind them (None when the rollout is not running)."""

    state: RolloutState
    transitions: tuple[Transition, ...]
    verdict: Verdict | None


def new_rollout(release_id: str, plan: RolloutPlan) -> RolloutState:
    return RolloutState(release_id=release_id, plan=plan)


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise UsageError(f"rollout: now must be a finite number of seconds, got {now!r:.40}")
    return float(now)


def _check_actor(actor: str, *, manual: bool) -> None:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 128:
        raise UsageError(f"rollout: actor must be a user name of 1-128 characters, got {actor!r:.40}")
    if manual and actor == AUTO:
        raise UsageError(f"rollout: actor '{AUTO}' is reserved for automatic transitions")


def _move(
    state: RolloutState,
    action: str,
    allowed: tuple[str, ...],
    to_status: str,
    to_stage: int,
    *,
    reason: str,
    actor: str,
    now: float,
    restart_soak: bool,
) -> Step:
    if state.status not in allowed:
        raise RolloutTransitionError(
            f"rollout {state.release_id}: cannot {action} a {state.status} rollout"
            f" (allowed from: {', '.join(allowed)})",
            action=action,
            status=state.status,
        )
    at = _check_now(now)
    new = replace(
        state,
        status=to_status,
        stage=to_stage,
        stage_started_at=at if restart_soak else state.stage_started_at,
        updated_at=at,
    )
    record = Transition(state.release_id, state.status, state.stage, to_status, to_stage, reason, actor, at)
    return Step(new, record)


def start(state: RolloutState, *, actor: str, now: float, reason: str = "started") -> Step:
    """pending → running(stage 0)."""
    _check_actor(actor, manual=False)
    return _move(state, "start", ("pending",), "running", 0, reason=reason, actor=actor, now=now, restart_soak=True)


def promote(state: RolloutState, *, actor: str, now: float, reason: str = "promoted by hand") -> Step:
    """running(k) → running(k+1), or → completed from the last stage. A human may promote
    without waiting for a verdict; the automatic path is :func:`evaluate`."""
    _check_actor(actor, manual=True)
    return _promote(state, actor=actor, now=now, reason=reason)


def _promote(state: RolloutState, *, actor: str, now: float, reason: str) -> Step:
    last = state.stage == len(state.plan.stages) - 1
    if last:
        return _move(
            state,
            "promote",
            ("running",),
            "completed",
            state.stage,
            reason=reason,
            actor=actor,
            now=now,
            restart_soak=False,
        )
    return _move(
        state,
        "promote",
        ("running",),
        "running",
        state.stage + 1,
        reason=reason,
        actor=actor,
        now=now,
        restart_soak=True,
    )


def pause(state: RolloutState, *, actor: str, now: float, reason: str = "paused by hand") -> Step:
    """running(k) → paused(k): no promotion and no automatic verdicts until resumed."""
    _check_actor(actor, manual=True)
    return _move(
        state, "pause", ("running",), "paused", state.stage, reason=reason, actor=actor, now=now, restart_soak=False
    )


def resume(state: RolloutState, *, actor: str, now: float, reason: str = "resumed by hand") -> Step:
    """paused(k) or halted(k) → running(k); the stage's soak time starts again."""
    _check_actor(actor, manual=True)
    return _move(
        state,
        "resume",
        ("paused", "halted"),
        "running",
        state.stage,
        reason=reason,
        actor=actor,
        now=now,
        restart_soak=True,
    )


def rollback(state: RolloutState, *, actor: str, now: float, reason: str = "rolled back by hand") -> Step:
    """running/paused/halted/completed → rolling_back: devices go back to the previous bundle."""
    _check_actor(actor, manual=False)
    return _move(
        state,
        "rollback",
        ("running", "paused", "halted", "completed"),
        "rolling_back",
        state.stage,
        reason=reason,
        actor=actor,
        now=now,
        restart_soak=False,
    )


def finish_rollback(
    state: RolloutState, *, actor: str, now: float, reason: str = "devices back on the previous release"
) -> Step:
    """rolling_back → rolled_back (terminal), once the caller knows the devices are back."""
    _check_actor(actor, manual=False)
    return _move(
        state,
        "finish rollback",
        ("rolling_back",),
        "rolled_back",
        state.stage,
        reason=reason,
        actor=actor,
        now=now,
        restart_soak=False,
    )


def evaluate(state: RolloutState, snapshot: HealthSnapshot, now: float) -> Evaluation:
    """The automatic transitions. Only a running rollout is judged (any other status returns it
    unchanged with no verdict). ``pass`` promotes (or completes); ``fail`` halts, and with
    ``on_failure == "rollback"`` also starts rolling back; ``wait`` changes nothing."""
    at = _check_now(now)
    if not isinstance(snapshot, HealthSnapshot):
        raise UsageError("evaluate: snapshot must be a HealthSnapshot")
    if state.status != "running":
        return Evaluation(state, (), None)
    if snapshot.stage != state.stage:
        raise UsageError(
            f"evaluate: the snapshot is for stage {snapshot.stage} but rollout {state.release_id} is at stage "
            f"{state.stage} ('{state.current_stage}')"
        )
    assert state.stage_started_at is not None
    stage = state.plan.stages[state.stage]
    verdict = judge(stage.health, snapshot, at - state.stage_started_at)
    if verdict.decision == "wait":
        return Evaluation(state, (), verdict)
    if verdict.decision == "pass":
        step = _promote(state, actor=AUTO, now=at, reason=f"stage '{stage.name}' {verdict.reason}")
        return Evaluation(step.state, (step.transition,), verdict)
    halted = _move(
        state,
        "halt",
        ("running",),
        "halted",
        state.stage,
        reason=f"stage '{stage.name}' failed: {verdict.reason}",
        actor=AUTO,
        now=at,
        restart_soak=False,
    )
    if state.plan.on_failure != "rollback":
        return Evaluation(halted.state, (halted.transition,), verdict)
    back = rollback(halted.state, actor=AUTO, now=at, reason=f"automatic rollback: stage '{stage.name}' failed")
    return Evaluation(back.state, (halted.transition, back.transition), verdict)


__all__ = [
    "AUTO",
    "STATUSES",
    "ClassComparison",
    "CriterionCheck",
    "Evaluation",
    "HealthSnapshot",
    "RolloutState",
    "Step",
    "Transition",
    "Verdict",
    "cohort_position",
    "evaluate",
    "finish_rollback",
    "first_stage",
    "in_stage",
    "judge",
    "new_rollout",
    "pause",
    "promote",
    "resume",
    "rollback",
    "start",
]
