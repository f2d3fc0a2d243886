"""Drift across a fleet: live profiles merged per cohort from ``telemetry_windows``, compared with the
model version's reference profile, under the model's drift policy.

:meth:`DriftService.report` answers "did what the devices see move away from what the model was
evaluated on — where, and in which features?":

1. **Which windows.** Those of one model base version (default: the newest version with telemetry
   in the time range) whose ``window_end`` (the device's clock) lies in ``[since, until]`` —
   or in the last ``window`` (``30m``, ``1h``, ``7d``: :func:`parse_window`) before now.
2. **Cohorts.** ``by="tag"`` makes each device tag a cohort (a device with two tags is in both),
   ``by="profile"`` each device profile, ``by="device"`` each device; the whole fleet is always
   cohort ``*``. Tags and profile are the device's *at ingestion* (the row's columns).
3. **Merging.** Per cohort, the windows' input profiles are merged exactly
   (:meth:`InputProfile.from_window_dict` + :meth:`InputProfile.merge`, as
   :mod:`tinymlops.observe.windows` does): KLL sketches merged, moments by Chan's formula. A window
   whose profile does not describe the reference's input — another projection (seed, dimensions,
   input size) or other features (a variant with another input layout, a telemetry policy with
   other settings) — is **set aside and reported** (``excluded``), never mixed in; so is one whose
   stored profile no longer parses.
4. **Histograms under local DP.** Privatized histograms are de-biased before any test, never used
   as they were reported: randomized-response class counts with
   :func:`~tinymlops.observe.privacy.rr_estimate`, discrete-Laplace counts as they are (the noise
   has mean 0); exact counts add as they are. The de-biased estimates are noisier than counts: the
   privacy noise's variance (:func:`~tinymlops.observe.privacy.rr_variance`,
   :func:`~tinymlops.observe.privacy.laplace_variance`, summed over windows) is turned into a
   *design effect* ``d = 1 + Σ noise variance / Σ n·π(1−π)`` (the first-order Rao–Scott
   correction), and the live histogram enters the tests with the de-biased proportions (negative
   estimates clipped to 0) and an *effective* size ``n / d`` — so chi-square's p-value is not
   fooled by noise the devices added on purpose. Exact windows only: ``d = 1``, the counts as sent.
5. **Tests.** :func:`~tinymlops.observe.drift.detect_drift` between the reference and each
   cohort's merged profile, with the model's stored :class:`~tinymlops.observe.drift.DriftPolicy`
   (``drift_policies``; :class:`~tinymlops.observe.drift.DriftPolicy` defaults when none is set).

**Derived features.** ``projection:j`` features are fixed random combinations of *all* input
values (:mod:`tinymlops.observe.sketches`): one shifted input moves most of them. They are
reported apart (``derived``) — evidence that the input moved, not a place where it did.

**Repeatability.** KLL compaction is randomized (each merge keeps one of two halves at random), so
two reports over the same windows agree up to the sketches' rank error, not bit for bit: same
windows, devices, rows and counts; statistics within the error bounds the KS test already allows for.

**Cost.** Linear in windows × features. Measured on this project's shared 2-core development
machine: a report over 1,000 windows × 72 features (64 pixels + 8 projections, ~100 rows per
window) takes ~10 s, whatever the number of cohorts (measured again after the sketch check was made
~3× faster: 10.0–11.2 s with the machine shared); ~70% of it is parsing every stored window's
summary with the spec's strict parser (~20% of that the structural check of each sketch before the
library reads it, :mod:`tinymlops.spec.kll_format`), ~10% the merging, ~10% the tests. Reports over
long ranges of a large fleet want a rollup of merged profiles per hour and cohort (not built yet).

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tinymlops.errors import NotFoundError, SpecError, TinyMLOpsError, UsageError
from tinymlops.observe.drift import DriftFinding, DriftPolicy, DriftReport, Histogram, Verdict, detect_drift
from tinymlops.observe.privacy import laplace_variance, rr_estimate, rr_variance
from tinymlops.observe.reference import summary_features
from tinymlops.observe.references import ReferenceRecord, ReferenceService
from tinymlops.observe.schema import DriftPolicyRow, TelemetryWindowRow
from tinymlops.observe.sketches import InputProfile
from tinymlops.registry.db import session_factory
from tinymlops.registry.store import Registry
from tinymlops.spec.telemetry import HistogramPrivacy, InputsSummary, Privacy

Grouping = Literal["tag", "profile", "device"]
GROUPINGS: tuple[str, ...] = ("tag", "profile", "device")
FLEET = "*"
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
#: the longest ``--window`` accepted (a year and a day)
MAX_WINDOW_S = 366 * 86_400
_WINDOW = re.compile(r"^([1-9][0-9]{0,11})([smhdw])$")
MAX_COHORT_CHARS = 128
REPORT_VERSION = "1.0"
DERIVED_NOTE = (
    "projection features are derived: each is a fixed random combination of all input values, so a shift in "
    "any input moves them; they show that the input moved, the element/channel features show where"
)


# --- time ----------------------------------------------------------------------------------------
def parse_window(text: str) -> float:
    """``"30m"`` → 1800.0: a positive integer and one unit of s, m, h, d, w (at most 366 days)."""
    if not isinstance(text, str):
        raise UsageError(f"window must be a string like 30m, 1h or 7d, got {type(text).__name__}")
    match = _WINDOW.match(text.strip())
    if match is None:
        raise UsageError(
            f"bad window {text!r:.40}: expected a positive whole number and a unit, e.g. 30m, 1h, 7d "
            "(units: s, m, h, d, w)"
        )
    seconds = int(match.group(1)) * WINDOW_UNITS[match.group(2)]
    if seconds > MAX_WINDOW_S:
        raise UsageError(f"window {text!r} is longer than the {MAX_WINDOW_S // 86_400} days a report covers at most")
    return float(seconds)


def parse_instant(text: str, what: str = "time") -> datetime:
    """An ISO 8601 date or time (UTC when it names no offset)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise UsageError(f"{what}: {text!r:.60} is not an ISO 8601 time (e.g. 2025-06-01T12:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _seconds(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"a time must be a datetime or seconds since the epoch, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True)
class TimeRange:
    """``[since, until]`` on the windows' ``window_end`` (seconds since the epoch; None: open)."""

    since: float | None = None
    until: float | None = None

    @classmethod
    def of(
        cls,
        *,
        window: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        now: float,
    ) -> TimeRange:
        if window is not None and (since is not None or until is not None):
            raise UsageError("give either a window (e.g. 1h) or since/until, not both")
        if window is not None:
            return cls(now - parse_window(window), now)
        lo, hi = _seconds(since), _seconds(until)
        if lo is not None and hi is not None and lo > hi:
            raise UsageError(f"since ({_iso(lo)}) is after until ({_iso(hi)})")
        return cls(lo, hi)

    def describe(self) -> str:
        if self.since is None and self.until is None:
            return "all time"
        return f"{_iso(self.since) if self.since is not None else '…'} to {_iso(self.until) if self.until else '…'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": None if self.since is None else _iso(self.since),
            "until": None if self.until is None else _iso(self.until),
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


# --- histograms under local DP -------------------------------------------------------------------
@dataclass
class HistogramEstimate:
    """De-biased counts summed over windows, the privacy noise's variance, and what was used."""

    estimate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    noise_variance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reported: float = 0.0  # predictions the histograms stand for
    windows: Counter[str] = field(default_factory=Counter)  # mechanism -> windows

    def _grow(self, size: int) -> None:
        if size > self.estimate.size:
            self.estimate = np.pad(self.estimate, (0, size - self.estimate.size))
            self.noise_variance = np.pad(self.noise_variance, (0, size - self.noise_variance.size))

    def add(self, counts: tuple[int, ...], mechanism: HistogramPrivacy, predictions: int) -> None:
        c = np.asarray(counts, np.int64)
        self._grow(c.size)
        if mechanism.mechanism == "randomized_response" and c.size >= 2:
            assert mechanism.epsilon is not None
            est = rr_estimate(c, mechanism.epsilon)
            noise = rr_variance(np.clip(np.rint(est), 0, c.sum()).astype(np.int64), mechanism.epsilon)
            label = f"randomized_response(epsilon={mechanism.epsilon:g})"
        elif mechanism.mechanism == "laplace":
            assert mechanism.epsilon is not None and mechanism.sensitivity is not None
            est = c.astype(np.float64)  # zero-mean noise: the counts are the unbiased estimate
            noise = np.full(c.size, laplace_variance(mechanism.epsilon, mechanism.sensitivity))
            label = f"laplace(epsilon={mechanism.epsilon:g})"
        else:
            est, noise, label = c.astype(np.float64), np.zeros(c.size), "none"
        self.estimate[: c.size] += est
        self.noise_variance[: c.size] += noise
        self.reported += predictions
        self.windows[label] += 1

    def merge(self, other: HistogramEstimate) -> None:
        self._grow(other.estimate.size)
        self.estimate[: other.estimate.size] += other.estimate
        self.noise_variance[: other.noise_variance.size] += other.noise_variance
        self.reported += other.reported
        self.windows.update(other.windows)

    @property
    def empty(self) -> bool:
        return self.reported <= 0

    def design_effect(self) -> float:
        """``1 + Σ noise variance / Σ n·π(1−π)`` with π the clipped de-biased proportions."""
        clipped = np.maximum(self.estimate, 0.0)
        n = float(clipped.sum())
        if n <= 0:
            return 1.0
        pi = clipped / n
        sampling = float(np.sum(n * pi * (1 - pi)))
        noise = float(self.noise_variance.sum())
        if noise <= 0:
            return 1.0
        return 1.0 + noise / sampling if sampling > 0 else math.inf

    def histogram(self, what: str) -> Histogram | None:
        """The counts the tests see: de-biased proportions × the effective size (module doc, step 4)."""
        if self.empty:
            return None
        clipped = np.maximum(self.estimate, 0.0)
        total = float(clipped.sum())
        if total <= 0:
            return Histogram.of(np.zeros_like(clipped), what=what)
        d = self.design_effect()
        effective = self.reported / d if math.isfinite(d) else 0.0
        return Histogram.of(clipped / total * effective, what=what)

    def to_dict(self) -> dict[str, Any]:
        d = self.design_effect()
        private = any(label != "none" for label in self.windows)
        return {
            "predictions": self.reported,
            "windows_by_mechanism": dict(sorted(self.windows.items())),
            "debiased": private,
            "design_effect": d if math.isfinite(d) else None,
            "effective_predictions": self.reported / d if math.isfinite(d) else 0.0,
            "estimate": [float(v) for v in self.estimate],
        }


# --- cohorts ------------------------------------------------------------------------------------
@dataclass
class _Cohort:
    by: str
    name: str
    profile: InputProfile | None = None
    devices: set[str] = field(default_factory=set)
    windows: int = 0
    rows: int = 0
    without_profile: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    classes: HistogramEstimate = field(default_factory=HistogramEstimate)
    confidence: HistogramEstimate = field(default_factory=HistogramEstimate)
    first: float = math.inf
    last: float = -math.inf


@dataclass(frozen=True)
class FeatureVerdict:
    """One feature of one cohort: the finding plus what the report adds (kind, derived, strength)."""

    finding: DriftFinding

    @property
    def name(self) -> str:
        return self.finding.name

    @property
    def derived(self) -> bool:
        return self.name.startswith("projection:")

    @property
    def strength(self) -> float:
        """The shift's size: Wasserstein-1 in reference SDs when defined, else the KS statistic."""
        for test in ("wasserstein", "ks"):
            try:
                value = self.finding.result(test).statistic
            except UsageError:
                continue
            if value is not None and math.isfinite(value):
                return float(value)
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        doc = _finding_doc(self.finding)
        kind, _, index = self.name.partition(":")
        return {
            "name": self.name,
            "kind": kind,
            "index": int(index) if index.isdigit() else None,
            "derived": self.derived,
            "verdict": doc.pop("verdict"),
            "strength": self.strength,
            **doc,
        }


def _finding_doc(finding: DriftFinding) -> dict[str, Any]:
    """A finding's verdict, sizes, reason, deciding tests and every test's numbers (by test name)."""
    doc = finding.to_dict()
    return {
        "verdict": doc["verdict"],
        "n_reference": doc["n_reference"],
        "n_live": doc["n_live"],
        "reason": doc["reason"],
        "deciding_tests": [r["test"] for r in doc["results"] if r["decides"]],
        "tests": {r["test"]: {k: v for k, v in r.items() if k != "test"} for r in doc["results"]},
    }


@dataclass(frozen=True)
class CohortDrift:
    """The drift of one cohort against the reference."""

    by: str
    name: str
    devices: int
    windows: int
    rows: int
    windows_without_profile: int
    excluded: Mapping[str, int]
    first_window_end: float | None
    last_window_end: float | None
    report: DriftReport | None
    classes: HistogramEstimate
    confidence: HistogramEstimate
    #: the cohort's windows' input profiles merged (what the tests compared; not in to_dict)
    profile: InputProfile | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return FLEET if self.by == "fleet" else f"{self.by}={self.name}"

    @property
    def features(self) -> list[FeatureVerdict]:
        return [] if self.report is None else [FeatureVerdict(f) for f in self.report.features.values()]

    def _flagged(self, derived: bool) -> list[str]:
        hits = [f for f in self.features if f.finding.verdict is Verdict.DRIFT and f.derived == derived]
        return [f.name for f in sorted(hits, key=lambda f: (-f.strength, f.name))]

    @property
    def drifted_features(self) -> list[str]:
        """Element/channel features that drifted, strongest first."""
        return self._flagged(False)

    @property
    def drifted_derived(self) -> list[str]:
        """Projection features that drifted, strongest first (see the module doc: derived)."""
        return self._flagged(True)

    @property
    def prediction_drift(self) -> list[str]:
        if self.report is None:
            return []
        return [
            f.name
            for f in (self.report.predictions, self.report.confidence)
            if f is not None and f.verdict is Verdict.DRIFT
        ]

    @property
    def verdict(self) -> Verdict:
        if self.report is None:
            return Verdict.NOT_ENOUGH_DATA
        if self.report.drifted:
            return Verdict.DRIFT
        parts = [*self.report.features.values(), self.report.predictions, self.report.confidence]
        if all(p is None or p.verdict is Verdict.NOT_ENOUGH_DATA for p in parts):
            return Verdict.NOT_ENOUGH_DATA
        return Verdict.NO_DRIFT

    def to_dict(self) -> dict[str, Any]:
        report = self.report

        def histogram(finding: DriftFinding | None, estimate: HistogramEstimate) -> dict[str, Any] | None:
            return None if finding is None else {**_finding_doc(finding), "live": estimate.to_dict()}

        return {
            "by": self.by,
            "name": self.name,
            "label": self.label,
            "verdict": self.verdict.value,
            "devices": self.devices,
            "windows": self.windows,
            "rows": self.rows,
            "windows_without_profile": self.windows_without_profile,
            "excluded": dict(sorted(self.excluded.items())),
            "first_window_end": None if self.first_window_end is None else _iso(self.first_window_end),
            "last_window_end": None if self.last_window_end is None else _iso(self.last_window_end),
            "drifted_features": self.drifted_features,
            "drifted_derived": self.drifted_derived,
            "prediction_drift": self.prediction_drift,
            "features": [f.to_dict() for f in self.features],
            "predictions": None if report is None else histogram(report.predictions, self.classes),
            "confidence": None if report is None else histogram(report.confidence, self.confidence),
        }


@dataclass(frozen=True)
class FleetDriftReport:
    """The drift report of one model version over a time range, per cohort."""

    model: str
    version: int
    by: str
    time_range: TimeRange
    reference: ReferenceRecord
    policy: DriftPolicy
    policy_source: str  # "stored" | "default"
    cohorts: tuple[CohortDrift, ...]
    versions_with_telemetry: tuple[int, ...] = ()

    @property
    def fleet(self) -> CohortDrift | None:
        return next((c for c in self.cohorts if c.by == "fleet"), None)

    @property
    def drifted_cohorts(self) -> list[CohortDrift]:
        return [c for c in self.cohorts if c.verdict is Verdict.DRIFT]

    @property
    def excluded(self) -> dict[str, int]:
        fleet = self.fleet
        if fleet is not None:
            return dict(fleet.excluded)
        total: Counter[str] = Counter()
        for c in self.cohorts:
            total.update(c.excluded)
        return dict(total)

    def summary(self) -> str:
        """One line naming the drifted cohorts and their features."""
        drifted = self.drifted_cohorts
        head = f"{self.model}:{self.version}, {len(self.cohorts)} cohort(s), {self.time_range.describe()}"
        if not drifted:
            undecided = [c.label for c in self.cohorts if c.verdict is Verdict.NOT_ENOUGH_DATA]
            tail = f" (not enough data: {', '.join(undecided)})" if undecided else ""
            return f"no drift — {head}{tail}"
        parts = []
        for c in sorted(drifted, key=lambda c: (c.by == "fleet", c.label)):
            what = c.drifted_features[:8] + (["…"] if len(c.drifted_features) > 8 else [])
            bits = [", ".join(what)] if what else []
            if c.drifted_derived:
                bits.append(f"{len(c.drifted_derived)} derived projection feature(s)")
            if c.prediction_drift:
                bits.append("prediction drift: " + ", ".join(c.prediction_drift))
            parts.append(f"{c.label} [{'; '.join(bits) or 'drift'}]")
        return f"DRIFT in {len(drifted)} of {len(self.cohorts)} cohort(s): {' | '.join(parts)} — {head}"

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "report_version": REPORT_VERSION,
            "model": self.model,
            "version": self.version,
            "by": self.by,
            "time_range": self.time_range.to_dict(),
            "versions_with_telemetry": list(self.versions_with_telemetry),
            "reference": {
                "dataset": self.reference.dataset,
                "dataset_sha256": self.reference.dataset_sha256,
                "rows": self.reference.rows,
                "created_at": self.reference.created_at.isoformat(),
                "settings": dict(self.reference.settings),
            },
            "policy": self.policy.to_dict(),
            "policy_source": self.policy_source,
            "drifted": bool(self.drifted_cohorts),
            "drifted_cohorts": [c.label for c in self.drifted_cohorts],
            "excluded": dict(sorted(self.excluded.items())),
            "summary": self.summary(),
            "notes": [DERIVED_NOTE],
            "cohorts": [c.to_dict() for c in self.cohorts],
        }
        return _finite(doc)


def _finite(value: Any) -> Any:
    """JSON-safe: a non-finite float becomes None (stable, strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _finite(value.item())
    return value


# --- stored policies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredPolicy:
    model: str
    policy: DriftPolicy
    stored: bool
    updated_by: str = ""
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": "stored" if self.stored else "default",
            "updated_by": self.updated_by or None,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "policy": self.policy.to_dict(),
        }


# --- the service -------------------------------------------------------------------------------
class DriftService:
    """Fleet drift reports and per-model drift policies over the workspace database."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        *,
        references: ReferenceService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.references = references or ReferenceService(engine, registry)
        self._sessions = session_factory(engine)
        self._clock = clock

    # --- policies ----------------------------------------------------------------------------
    def policy(self, model: str) -> StoredPolicy:
        """The model's drift policy (``DriftPolicy()`` when none was set)."""
        name = self.registry.resolve(model).model
        with self._sessions() as session:
            row = session.get(DriftPolicyRow, name)
            if row is None:
                return StoredPolicy(name, DriftPolicy(), stored=False)
            try:
                policy = DriftPolicy.from_dict(row.policy)
            except UsageError as exc:
                raise SpecError(
                    f"the stored drift policy of model '{name}' no longer validates ({exc.message}); set it again"
                ) from exc
            at = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
            return StoredPolicy(name, policy, stored=True, updated_by=row.updated_by, updated_at=at)

    def set_policy(self, model: str, policy: DriftPolicy | Mapping[str, Any], *, updated_by: str = "") -> StoredPolicy:
        """Store ``policy`` for ``model`` (a mapping is validated by :meth:`DriftPolicy.from_dict`)."""
        name = self.registry.resolve(model).model
        checked = policy if isinstance(policy, DriftPolicy) else DriftPolicy.from_dict(policy)
        now = datetime.fromtimestamp(self._clock(), UTC)
        with self._sessions() as session:
            row = session.get(DriftPolicyRow, name, with_for_update=True)
            if row is None:
                row = DriftPolicyRow(model=name)
                session.add(row)
            row.policy = checked.to_dict()
            row.updated_by = updated_by[:128]
            row.updated_at = now
            session.commit()
        return StoredPolicy(name, checked, stored=True, updated_by=updated_by[:128], updated_at=now)

    def reset_policy(self, model: str) -> StoredPolicy:
        """Forget the stored policy (the defaults apply again)."""
        name = self.registry.resolve(model).model
        with self._sessions() as session:
            row = session.get(DriftPolicyRow, name)
            if row is not None:
                session.delete(row)
                session.commit()
        return StoredPolicy(name, DriftPolicy(), stored=False)

    # --- reports -----------------------------------------------------------------------------
    def _versions(self, model: str, span: TimeRange) -> list[int]:
        stmt = select(TelemetryWindowRow.version).where(
            TelemetryWindowRow.model == model, TelemetryWindowRow.version.is_not(None)
        )
        stmt = _in_range(stmt, span).group_by(TelemetryWindowRow.version)
        with self.engine.connect() as conn:
            return sorted(v for v in conn.scalars(stmt) if v is not None)

    def report(
        self,
        model: str,
        *,
        version: int | None = None,
        window: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        by: str = "tag",
        cohort: str | None = None,
    ) -> FleetDriftReport:
        """The drift report (module doc). Unknown model or version, no reference, no telemetry in
        the range, an unknown cohort: :class:`NotFoundError`; a bad window/range/grouping: :class:`UsageError`."""
        if by not in GROUPINGS:
            raise UsageError(f"by must be one of {', '.join(GROUPINGS)}, got {by!r:.40}")
        if cohort is not None and (not isinstance(cohort, str) or not 0 < len(cohort) <= MAX_COHORT_CHARS):
            raise UsageError(f"cohort must be a name of 1 to {MAX_COHORT_CHARS} characters")
        span = TimeRange.of(window=window, since=since, until=until, now=self._clock())
        name = self.registry.resolve(model).model
        if version is not None:
            self.registry.resolve(f"{name}:{version}")
        versions = self._versions(name, span)
        if version is None:
            if not versions:
                raise NotFoundError(
                    f"no telemetry from model '{name}' in {span.describe()}: no device has uploaded windows "
                    "for it in that time (try a longer --window)",
                    model=name,
                )
            version = versions[-1]
        reference = self.references.require(name, version)
        stored = self.policy(name)
        cohorts = self._cohorts(name, version, span, by, cohort, reference)
        if not cohorts or all(c.windows + sum(c.excluded.values()) + c.without_profile == 0 for c in cohorts):
            raise NotFoundError(
                f"no telemetry from model '{name}' version {version} in {span.describe()}"
                + (f" (versions with telemetry then: {', '.join(map(str, versions))})" if versions else ""),
                model=name,
                version=version,
            )
        ref_features = summary_features(reference.profile.inputs, what="reference")
        ref_inputs = reference.profile.inputs
        ref_classes = None if ref_inputs.classes is None else Histogram.of(ref_inputs.classes, what="reference classes")
        ref_confidence = (
            None if ref_inputs.confidence is None else Histogram.of(ref_inputs.confidence, what="reference confidence")
        )
        results = []
        for c in cohorts:
            drift = None
            if c.profile is not None or not c.classes.empty or not c.confidence.empty:
                live = {} if c.profile is None else summary_features(c.profile.summary(), what=f"cohort {c.name}")
                drift = detect_drift(
                    ref_features,
                    live,
                    reference_classes=ref_classes,
                    live_classes=c.classes.histogram("live class histogram"),
                    reference_confidence=ref_confidence,
                    live_confidence=c.confidence.histogram("live confidence histogram"),
                    policy=stored.policy,
                )
            results.append(
                CohortDrift(
                    by=c.by,
                    name=c.name,
                    devices=len(c.devices),
                    windows=c.windows,
                    rows=c.rows,
                    windows_without_profile=c.without_profile,
                    excluded=dict(c.excluded),
                    first_window_end=None if c.first == math.inf else c.first,
                    last_window_end=None if c.last == -math.inf else c.last,
                    report=drift,
                    classes=c.classes,
                    confidence=c.confidence,
                    profile=c.profile,
                )
            )
        return FleetDriftReport(
            model=name,
            version=version,
            by=by,
            time_range=span,
            reference=reference,
            policy=stored.policy,
            policy_source="stored" if stored.stored else "default",
            cohorts=tuple(results),
            versions_with_telemetry=tuple(versions),
        )

    def _cohorts(
        self, model: str, version: int, span: TimeRange, by: str, only: str | None, reference: ReferenceRecord
    ) -> list[_Cohort]:
        ref = reference.profile.inputs
        ref_keys = [(f.kind, f.index) for f in ref.features]
        cohorts: dict[tuple[str, str], _Cohort] = {}
        if only is None or only == FLEET:
            cohorts[("fleet", FLEET)] = _Cohort("fleet", FLEET)
        stmt = select(
            TelemetryWindowRow.device_id,
            TelemetryWindowRow.profile_name,
            TelemetryWindowRow.tags,
            TelemetryWindowRow.window_end,
            TelemetryWindowRow.inputs,
            TelemetryWindowRow.privacy,
        ).where(TelemetryWindowRow.model == model, TelemetryWindowRow.version == version)
        stmt = _in_range(stmt, span).order_by(TelemetryWindowRow.window_end, TelemetryWindowRow.id)
        seen: set[str] = set()
        with self.engine.connect() as conn:
            for device_id, profile_name, tags, window_end, inputs, privacy in conn.execution_options(
                yield_per=256
            ).execute(stmt):
                keys = [(by, str(k)) for k in _groups(by, device_id, profile_name, tags)]
                seen.update(k for _, k in keys)
                if only is not None and only != FLEET:
                    keys = [k for k in keys if k[1] == only]
                targets = [cohorts.setdefault(k, _Cohort(*k)) for k in keys]
                if ("fleet", FLEET) in cohorts:
                    targets.append(cohorts[("fleet", FLEET)])
                if not targets:
                    continue
                window = _window(inputs, privacy, ref_keys, ref, reference.profile.k)
                for c in targets:
                    c.first, c.last = min(c.first, window_end), max(c.last, window_end)
                    if isinstance(window, str):
                        c.excluded[window] += 1
                        continue
                    if window is None:
                        c.without_profile += 1
                        c.devices.add(device_id)
                        continue
                    summary, profile, hist = window
                    c.devices.add(device_id)
                    c.windows += 1
                    c.rows += summary.rows
                    if c.profile is None:
                        c.profile = InputProfile.from_window_dict(summary, k=reference.profile.k)
                    else:
                        c.profile.merge(profile)
                    for estimate, (counts, mechanism, predictions) in zip((c.classes, c.confidence), hist, strict=True):
                        if counts is not None and mechanism is not None:
                            estimate.add(counts, mechanism, predictions)
        if only is not None and only != FLEET and (by, only) not in cohorts:
            known = ", ".join(sorted(seen)[:20]) or "none"
            raise NotFoundError(
                f"no telemetry from {by} cohort {only!r} of model '{model}' version {version} in "
                f"{span.describe()} ({by} cohorts with telemetry: {known})",
                cohort=only,
            )
        fleet = cohorts.pop(("fleet", FLEET), None)
        ordered = [cohorts[k] for k in sorted(cohorts)]
        return ([fleet] if fleet is not None else []) + ordered


def _groups(by: str, device_id: str, profile_name: str, tags: Any) -> Iterable[str]:
    if by == "device":
        return [device_id]
    if by == "profile":
        return [profile_name or "(none)"]
    return sorted({str(t) for t in tags}) if isinstance(tags, list) else []


def _in_range(stmt: Any, span: TimeRange) -> Any:
    if span.since is not None:
        stmt = stmt.where(TelemetryWindowRow.window_end >= span.since)
    if span.until is not None:
        stmt = stmt.where(TelemetryWindowRow.window_end <= span.until)
    return stmt


#: (counts, how they were released, how many predictions they stand for)
_Hist = tuple[tuple[int, ...] | None, HistogramPrivacy | None, int]


def _window(
    inputs: Any, privacy: Any, ref_keys: list[tuple[str, int]], ref: InputsSummary, k: int
) -> str | tuple[InputsSummary, InputProfile, tuple[_Hist, _Hist]] | None:
    """A stored window as (profile summary without histograms, its profile, its histograms) — or
    None (no input profile), or the reason it is set aside."""
    if inputs is None:
        return None
    try:
        summary = InputsSummary.from_dict(inputs)
        released = Privacy.from_dict(privacy)
    except TinyMLOpsError as exc:
        return f"stored profile does not parse: {exc.message[:160]}"
    if summary.projection != ref.projection:
        return (
            f"another input: projection {_projection(summary)} is not the reference's {_projection(ref)} "
            "(a variant or telemetry policy with other settings)"
        )
    keys = [(f.kind, f.index) for f in summary.features]
    if keys != ref_keys:
        mine = Counter(k for k, _ in keys)
        theirs = Counter(k for k, _ in ref_keys)
        return (
            f"another input layout: features {dict(sorted(mine.items()))} are not the reference's "
            f"{dict(sorted(theirs.items()))}"
        )
    hists: list[_Hist] = []
    for name in ("classes", "confidence"):
        counts = getattr(summary, name)
        mechanism = getattr(released, name)
        if counts is None or mechanism is None:
            hists.append((None, None, 0))
        else:  # Laplace counts do not add up to the predictions they stand for
            hists.append((counts, mechanism, summary.predictions))
    stripped = replace(summary, classes=None, confidence=None, predictions=0)
    try:
        profile = InputProfile.from_window_dict(stripped, k=k)
    except TinyMLOpsError as exc:
        return f"stored profile does not read back: {exc.message[:160]}"
    return stripped, profile, (hists[0], hists[1])


def _projection(summary: InputsSummary) -> str:
    p = summary.projection
    return "none" if p is None else f"(seed {p.seed}, {p.dims} dims, input size {p.input_size})"


__all__ = [
    "FLEET",
    "GROUPINGS",
    "MAX_WINDOW_S",
    "CohortDrift",
    "DriftService",
    "FeatureVerdict",
    "FleetDriftReport",
    "HistogramEstimate",
    "StoredPolicy",
    "TimeRange",
    "parse_instant",
    "parse_window",
]
