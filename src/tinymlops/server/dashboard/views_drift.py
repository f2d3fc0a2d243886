"""What the telemetry and drift pages show, from the services the API uses (no HTML here).

* :func:`drift_view` — one model's fleet drift report
  (:meth:`~tinymlops.observe.fleet_drift.DriftService.report`, rendered from its ``to_dict()``: the
  numbers ``GET /v1/models/{name}/drift`` returns), the heatmap's cells (:func:`heat_cell`: coloured
  by the deciding statistic relative to its threshold), and for one selected cohort and feature the
  reference and live CDFs (:func:`feature_cdf`) and the predicted-class histograms;
  :class:`DriftEmpty` when there is nothing to compare yet (no reference profile — with how to make
  one — or no telemetry in the window).
* :func:`feature_cdf` — quantiles of a feature from the reference's sketch and from the cohort's
  input profile as the report merged it (:attr:`~tinymlops.observe.fleet_drift.CohortDrift.profile`):
  exactly the windows the tests saw, none the report set aside, nothing read again.
* :func:`telemetry_view` — per device class (profile × variant ref) requests, errors, merged latency
  percentiles, energy per inference with its method and peak memory
  (:meth:`~tinymlops.observe.performance.PerformanceViews.fleet`), the devices whose last reported
  upload store is ``full`` or ``unwritable``, and the models with telemetry (links to their drift pages).

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import distinct, func, select
from sqlalchemy.engine import Engine

from tinymlops.devices.schema import DeviceRow
from tinymlops.errors import InvalidInputError, NotFoundError, UsageError
from tinymlops.observe.drift import distribution_of
from tinymlops.observe.drift_inputs import FeatureDistribution
from tinymlops.observe.fleet_drift import GROUPINGS, CohortDrift, DriftService, FleetDriftReport, parse_window
from tinymlops.observe.ingest import batch_record
from tinymlops.observe.performance import FLAGGED_STORE, ClassPerformance, PerformanceViews
from tinymlops.observe.references import ReferenceService, how_to_build
from tinymlops.observe.schema import TelemetryBatchRow, TelemetryWindowRow
from tinymlops.registry.db import session_factory
from tinymlops.server.dashboard.charts import HeatCell
from tinymlops.server.dashboard.views import WINDOWS, check_window
from tinymlops.workspace import Workspace

#: the windows the drift page links to (any ``parse_window`` text is accepted); ``all``: no limit
DRIFT_WINDOWS = ("1h", "24h", "7d", "30d", "all")
DEFAULT_DRIFT_WINDOW = "all"
#: ranks the CDF chart draws (0.01 … 1)
CDF_RANKS = np.linspace(0.01, 1.0, 100)
#: quantiles the CDF table shows
TABLE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_FEATURE = re.compile(r"^[a-z]{1,16}:[0-9]{1,10}$")
MAX_FEATURE_CHARS = 32
MAX_COHORT_CHARS = 140
VERDICT_TEXT = {"drift": "drift", "no_drift": "no drift", "not_enough_data": "not enough data"}


# --- the drift page's query ---------------------------------------------------------------------
@dataclass(frozen=True)
class DriftQuery:
    window: str  # a parse_window text, or "all"
    by: str
    version: int | None
    feature: str | None  # "<kind>:<index>"
    cohort: str | None  # a cohort's label ("*", "tag=site-b")

    @classmethod
    def parse(
        cls,
        *,
        window: str | None = None,
        by: str | None = None,
        version: int | str | None = None,
        feature: str | None = None,
        cohort: str | None = None,
    ) -> DriftQuery:
        """The page's query, checked; anything wrong is an :class:`InvalidInputError` naming it."""
        w = DEFAULT_DRIFT_WINDOW if window is None or window == "" else window
        if w != "all":
            try:
                parse_window(w)
            except UsageError as exc:
                raise InvalidInputError(f"{exc.message} (or 'all')") from None
        b = "tag" if by is None or by == "" else by
        if b not in GROUPINGS:
            raise InvalidInputError(f"by must be one of {', '.join(GROUPINGS)}, got {b[:40]!r}")
        v = None if version is None or version == "" else version
        if isinstance(v, str):
            v = int(v) if v.isascii() and v.isdigit() and len(v) <= 10 else -1
        if v is not None and not 1 <= v <= 2**31 - 1:
            raise InvalidInputError(f"version must be a whole number from 1 to {2**31 - 1}, got {str(version)[:20]!r}")
        f = feature or None
        if f is not None and (len(f) > MAX_FEATURE_CHARS or not _FEATURE.match(f)):
            raise InvalidInputError(f"feature must look like element:12 or projection:3, got {f[:40]!r}")
        c = cohort or None
        if c is not None and len(c) > MAX_COHORT_CHARS:
            raise InvalidInputError(f"cohort is longer than {MAX_COHORT_CHARS} characters")
        return cls(w, b, v, f, c)

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string's parameters (the defaults left out), with ``changes``."""
        values = {
            "window": self.window,
            "by": self.by,
            "version": self.version,
            "cohort": self.cohort,
            "feature": self.feature,
            **changes,
        }
        defaults = {"window": DEFAULT_DRIFT_WINDOW, "by": "tag"}
        return {k: str(v) for k, v in values.items() if v is not None and defaults.get(k) != v}


# --- heatmap cells ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecidingStatistic:
    """What colours a cell: one deciding test's statistic against its threshold."""

    test: str
    statistic: float | None
    level: float | None  # 0..1 on the colour scale; the threshold at 0.5


def deciding_statistic(feature: dict[str, Any]) -> DecidingStatistic | None:
    """The first deciding test that judges a statistic (else the first deciding one, by its p-value)."""
    tests: dict[str, Any] = feature.get("tests") or {}
    deciding = [t for t in feature.get("deciding_tests") or [] if t in tests]
    if not deciding:
        return None
    name = next((t for t in deciding if tests[t].get("threshold_on") == "statistic"), deciding[0])
    t = tests[name]
    stat, p, thr = t.get("statistic"), t.get("p_value"), float(t.get("threshold") or 0.0)
    level: float | None = None
    if t.get("threshold_on") == "statistic" and stat is not None:
        level = min(stat / (2 * thr), 1.0) if thr > 0 else (1.0 if stat > 0 else 0.0)
    elif p is not None and 0 < thr < 1:
        level = min(-math.log10(max(p, 1e-300)) / (2 * -math.log10(thr)), 1.0)
    return DecidingStatistic(name, stat, level)


def _short(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def describe_feature(cohort_label: str, feature: dict[str, Any]) -> str:
    """One sentence: cohort · feature: verdict — each test's statistic, p-value and threshold."""
    verdict = VERDICT_TEXT.get(feature["verdict"], feature["verdict"])
    bits = []
    for name, t in (feature.get("tests") or {}).items():
        decides = "*" if t.get("decides") else ""
        p = f", p {_short(t.get('p_value'))}" if t.get("p_value") is not None else ""
        on = "p" if t.get("threshold_on") == "p_value" else "threshold"
        bits.append(f"{name}{decides} {_short(t.get('statistic'))}{p} ({on} {_short(t.get('threshold'))})")
    derived = " (derived)" if feature.get("derived") else ""
    return f"{cohort_label} · {feature['name']}{derived}: {verdict} — " + "; ".join(bits)


def heat_cell(cohort_label: str, feature: dict[str, Any], href: str | None = None) -> HeatCell:
    d = deciding_statistic(feature)
    judged = d is not None and feature["verdict"] != "not_enough_data"  # too few values: no colour, the title says
    return HeatCell(
        level=d.level if judged and d is not None else None,
        marked=feature["verdict"] == "drift",
        verdict=feature["verdict"],
        title=describe_feature(cohort_label, feature),
        href=href,
    )


# --- CDFs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CdfSide:
    n: int  # values the sketch stands for
    rank_error: float
    points: tuple[tuple[float, float], ...]  # (value, cumulative probability)
    quantiles: tuple[float, ...]  # at TABLE_QUANTILES

    @classmethod
    def of(cls, dist: FeatureDistribution) -> CdfSide | None:
        if dist.empty:
            return None
        values = dist.quantiles(CDF_RANKS)
        table = dist.quantiles(np.asarray(TABLE_QUANTILES))
        points = tuple((float(v), float(r)) for v, r in zip(values, CDF_RANKS, strict=True))
        return cls(dist.n, dist.rank_error, points, tuple(float(v) for v in table))


@dataclass(frozen=True)
class FeatureCdf:
    feature: str
    cohort: str  # the cohort's label
    reference: CdfSide | None
    live: CdfSide | None
    windows: int  # live windows merged


def feature_cdf(report: FleetDriftReport, cohort: CohortDrift, feature: str) -> FeatureCdf:
    """Reference and live quantiles of ``feature`` for ``cohort``: the reference's sketch and the
    cohort's profile the report merged (see the module doc). An unknown feature: :class:`NotFoundError`."""
    kind, _, index_text = feature.partition(":")
    try:
        ref_feature = report.reference.profile.inputs.feature(kind, int(index_text))
    except (KeyError, ValueError):
        raise NotFoundError(f"the reference of {report.model}:{report.version} has no feature {feature!r}") from None
    reference = CdfSide.of(
        distribution_of(ref_feature.sketch, ref_feature.count, what=f"reference feature {feature!r}")
    )
    live = None
    profile = cohort.profile
    if profile is not None:
        sketch = profile.sketch(profile.feature_keys().index((kind, int(index_text))))
        live = CdfSide.of(distribution_of(sketch, what=f"cohort {cohort.label} feature {feature!r}"))
    return FeatureCdf(feature, cohort.label, reference, live, cohort.windows)


# --- predicted classes --------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassesView:
    """Predicted-class proportions, reference vs live (de-biased when local DP was applied)."""

    cohort: str
    reference: tuple[float, ...]  # proportions
    live: tuple[float, ...]  # de-biased, negative estimates clipped to 0, proportions
    live_predictions: float
    debiased: bool
    mechanisms: dict[str, int]  # mechanism label -> windows (e.g. "randomized_response(epsilon=2)")
    epsilons: tuple[float, ...]
    design_effect: float | None
    finding: dict[str, Any] | None  # the report's predictions entry


_EPSILON = re.compile(r"epsilon=([0-9.eE+-]+)")


def classes_view(report: FleetDriftReport, cohort: dict[str, Any]) -> ClassesView | None:
    ref = report.reference.profile.inputs.classes
    predictions = cohort.get("predictions")
    if ref is None or predictions is None:
        return None
    live_doc = predictions["live"]
    estimate = np.maximum(np.asarray(live_doc["estimate"], dtype=np.float64), 0.0)
    size = max(len(ref), estimate.size)
    r = np.zeros(size)
    r[: len(ref)] = ref
    live = np.zeros(size)
    live[: estimate.size] = estimate
    r_total, l_total = r.sum(), live.sum()
    epsilons = sorted({float(m) for label in live_doc["windows_by_mechanism"] for m in _EPSILON.findall(label)})
    return ClassesView(
        cohort=cohort["label"],
        reference=tuple(float(v) for v in (r / r_total if r_total > 0 else r)),
        live=tuple(float(v) for v in (live / l_total if l_total > 0 else live)),
        live_predictions=float(live_doc["predictions"]),
        debiased=bool(live_doc["debiased"]),
        mechanisms=dict(live_doc["windows_by_mechanism"]),
        epsilons=tuple(epsilons),
        design_effect=live_doc["design_effect"],
        finding=predictions,
    )


# --- the drift page -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftEmpty:
    """Nothing to compare: ``reason`` is ``no_reference`` or ``no_telemetry``; ``hint`` what to do."""

    model: str
    query: DriftQuery
    reason: str
    message: str
    hint: str | None


@dataclass(frozen=True)
class DriftView:
    model: str
    query: DriftQuery
    report: FleetDriftReport
    doc: dict[str, Any]  # report.to_dict(): what GET /v1/models/{name}/drift returns
    features: tuple[str, ...]  # input features, in the reference's order
    derived: tuple[str, ...]  # projection features
    cohort: dict[str, Any]  # the selected cohort's entry of doc["cohorts"]
    feature: str | None  # the selected feature
    cdf: FeatureCdf | None
    classes: ClassesView | None


def _pick_cohort(doc: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    cohorts = doc["cohorts"]
    if wanted is not None:
        for c in cohorts:
            if c["label"] == wanted:
                return c
        known = ", ".join(c["label"] for c in cohorts[:20])
        raise NotFoundError(f"no cohort {wanted[:60]!r} in this report (cohorts: {known})")
    drifted = [c for c in cohorts if c["verdict"] == "drift" and c["by"] != "fleet"]
    return drifted[0] if drifted else cohorts[0]


def _pick_feature(cohort: dict[str, Any], features: tuple[str, ...], wanted: str | None) -> str | None:
    if wanted is not None:
        return wanted
    if cohort["drifted_features"]:
        return str(cohort["drifted_features"][0])
    judged = [f for f in cohort["features"] if f["name"] in features and f["verdict"] != "not_enough_data"]
    if judged:  # the largest shift that did not make it
        return str(max(judged, key=lambda f: f["strength"] or 0.0)["name"])
    return features[0] if features else None


def drift_view(
    ws: Workspace, name: str, query: DriftQuery, *, clock: Callable[[], float] = time.time
) -> DriftView | DriftEmpty:
    """The drift page of model ``name`` (see the module doc). An unknown model, version, cohort or
    feature: :class:`NotFoundError`."""
    model = ws.registry.resolve(name).model  # ModelNotFoundError for an unknown one
    references = ReferenceService(ws.engine, ws.registry)
    service = DriftService(ws.engine, ws.registry, references=references, clock=clock)
    window = None if query.window == "all" else query.window
    try:
        report = service.report(model, version=query.version, window=window, by=query.by)
    except NotFoundError as exc:
        return _empty(ws, references, model, query, exc)
    doc = report.to_dict()
    names = [f"{f.kind}:{f.index}" for f in report.reference.profile.inputs.features]
    features = tuple(n for n in names if not n.startswith("projection:"))
    derived = tuple(n for n in names if n.startswith("projection:"))
    cohort = _pick_cohort(doc, query.cohort)
    feature = _pick_feature(cohort, features, query.feature)
    if feature is not None and feature not in names:
        raise NotFoundError(f"model '{model}' version {report.version} has no feature {feature!r}")
    drift = next(c for c in report.cohorts if c.label == cohort["label"])
    cdf = None if feature is None else feature_cdf(report, drift, feature)
    return DriftView(model, query, report, doc, features, derived, cohort, feature, cdf, classes_view(report, cohort))


def _empty(
    ws: Workspace, references: ReferenceService, model: str, query: DriftQuery, exc: NotFoundError
) -> DriftEmpty:
    if query.version is not None:
        ws.registry.resolve(f"{model}:{query.version}")  # an unknown version is a 404, not an empty state
    version = exc.details.get("version")
    base = ws.registry.resolve(model if not isinstance(version, int) else f"{model}:{version}")
    if references.get(model, base.version) is None:
        return DriftEmpty(
            model,
            query,
            "no_reference",
            f"model '{model}' version {base.version} has no reference profile: drift is measured against one.",
            how_to_build(model, ws.registry.datasets(model)),
        )
    return DriftEmpty(
        model,
        query,
        "no_telemetry",
        exc.message,
        "devices upload telemetry when their bundle's manifest has a [policies.telemetry] table",
    )


# --- the telemetry page -------------------------------------------------------------------------
@dataclass(frozen=True)
class FlaggedDevice:
    device_id: str
    profile: str
    status: str  # full | unwritable
    pending_windows: int
    merged_windows: int
    dropped_windows: int
    error: str | None
    received_at: datetime


@dataclass(frozen=True)
class ModelTelemetry:
    model: str
    windows: int
    devices: int
    last_window_end: datetime | None


@dataclass(frozen=True)
class TelemetryView:
    window: str
    classes: list[ClassPerformance]
    flagged: list[FlaggedDevice]
    models: list[ModelTelemetry]

    @property
    def by_profile(self) -> list[tuple[str, list[ClassPerformance]]]:
        groups: dict[str, list[ClassPerformance]] = {}
        for c in self.classes:
            groups.setdefault(c.profile, []).append(c)
        return list(groups.items())


def flagged_devices(engine: Engine) -> list[FlaggedDevice]:
    """Devices whose newest batch with an upload-store status says ``full`` or ``unwritable``."""
    B = TelemetryBatchRow
    newest = (
        select(B.device_id, func.max(B.id).label("id"))
        .where(B.store_status.is_not(None))
        .group_by(B.device_id)
        .subquery()
    )
    stmt = (
        select(B, DeviceRow.profile_name)
        .join(newest, B.id == newest.c.id)
        .join(DeviceRow, DeviceRow.id == B.device_id)
        .where(B.store_status.in_(FLAGGED_STORE))
        .order_by(B.device_id)
    )
    out = []
    with session_factory(engine)() as session:
        for row, profile in session.execute(stmt):
            record = batch_record(row)
            assert record.store is not None
            s = record.store
            out.append(
                FlaggedDevice(
                    row.device_id,
                    profile or "",
                    s.status,
                    s.pending_windows,
                    s.merged_windows,
                    s.dropped_windows,
                    s.error,
                    record.received_at,
                )
            )
    return out


def models_with_telemetry(engine: Engine) -> list[ModelTelemetry]:
    W = TelemetryWindowRow
    stmt = (
        select(W.model, func.count(), func.count(distinct(W.device_id)), func.max(W.window_end))
        .where(W.model.is_not(None))
        .group_by(W.model)
        .order_by(W.model)
    )
    with engine.connect() as conn:
        return [
            ModelTelemetry(m, n, d, None if last is None else datetime.fromtimestamp(last, UTC))
            for m, n, d, last in conn.execute(stmt)
        ]


def telemetry_view(engine: Engine, window: str | None, *, now: float | None = None) -> TelemetryView:
    """Per device class over the windows ending in the last ``window`` (one of :data:`WINDOWS`)."""
    window = check_window(window)
    span = WINDOWS[window]
    since = None if span is None else (time.time() if now is None else now) - span.total_seconds()
    return TelemetryView(
        window,
        PerformanceViews(engine).fleet(since=since),
        flagged_devices(engine),
        models_with_telemetry(engine),
    )


__all__ = [
    "CDF_RANKS",
    "DEFAULT_DRIFT_WINDOW",
    "DRIFT_WINDOWS",
    "TABLE_QUANTILES",
    "CdfSide",
    "ClassesView",
    "DecidingStatistic",
    "DriftEmpty",
    "DriftQuery",
    "DriftView",
    "FeatureCdf",
    "FlaggedDevice",
    "ModelTelemetry",
    "TelemetryView",
    "classes_view",
    "deciding_statistic",
    "describe_feature",
    "drift_view",
    "feature_cdf",
    "flagged_devices",
    "heat_cell",
    "models_with_telemetry",
    "telemetry_view",
]
