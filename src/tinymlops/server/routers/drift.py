"""Drift of a model's inputs and predictions across the fleet, its reference profile and its drift policy.

* ``GET  /models/{name}/drift`` (scope ``read``): the drift report per cohort
  (:class:`~tinymlops.observe.fleet_drift.FleetDriftReport`), for a version (default: the newest
  with telemetry), a time range (``since``/``until`` or ``window=1h``) and a grouping (``by``).
* ``GET  /models/{name}/reference`` (scope ``read``): the version's reference profile summary — 404
  saying how to make one when there is none; ``POST`` (scope ``release``) builds it from a
  registered dataset (idempotent).
* ``GET|PUT /models/{name}/drift/policy``: the thresholds, tests and rules drift is judged by
  (``read`` / ``release``); a body with unknown fields is a 422, unknown tests or bad thresholds a 400
  (``SpecError``: a rule JSON Schema cannot state) naming them — as are a bad ``window`` or a
  ``since`` after ``until``.

The router is a thin shell over :class:`~tinymlops.observe.fleet_drift.DriftService` and
:class:`~tinymlops.observe.references.ReferenceService`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tinymlops.errors import NotFoundError, SpecError, UsageError
from tinymlops.observe.drift import DriftPolicy
from tinymlops.observe.fleet_drift import MAX_COHORT_CHARS, DriftService, StoredPolicy
from tinymlops.observe.references import ReferenceService
from tinymlops.registry.refs import NAME, SEGMENT
from tinymlops.server.deps import ReadKey, ReleaseKey, Services, ServicesDep
from tinymlops.server.error_responses import error_responses

router = APIRouter(prefix="/models", tags=["drift"], responses=error_responses(400, 401, 403, 404, 422))

ModelName = Annotated[str, Path(pattern=NAME.pattern, description="A model name.")]
VersionQuery = Annotated[
    int | None, Query(ge=1, le=2**31 - 1, description="Base version (default: the newest with telemetry).")
]
MAX_TESTS = 16


def _drift(services: Services) -> DriftService:
    ws = services.workspace
    return DriftService(ws.engine, ws.registry)


def _references(services: Services) -> ReferenceService:
    ws = services.workspace
    return ReferenceService(ws.engine, ws.registry)


# --- response models ---------------------------------------------------------------------------
class TestResultOut(BaseModel):
    statistic: float | None
    p_value: float | None
    threshold: float
    threshold_on: str
    verdict: str
    decides: bool
    details: dict[str, Any]
    reason: str | None


class FeatureDriftOut(BaseModel):
    name: str
    kind: str
    index: int | None
    derived: bool = Field(description="A projection feature: a combination of all inputs, not an input of its own.")
    verdict: str
    strength: float = Field(description="Wasserstein-1 in reference SDs (else the KS statistic).")
    n_reference: float
    n_live: float
    reason: str | None
    deciding_tests: list[str]
    tests: dict[str, TestResultOut]


class LiveHistogramOut(BaseModel):
    predictions: float
    windows_by_mechanism: dict[str, int]
    debiased: bool
    design_effect: float | None
    effective_predictions: float
    estimate: list[float]


class HistogramDriftOut(BaseModel):
    verdict: str
    n_reference: float
    n_live: float
    reason: str | None
    deciding_tests: list[str]
    tests: dict[str, TestResultOut]
    live: LiveHistogramOut


class CohortDriftOut(BaseModel):
    by: str
    name: str
    label: str
    verdict: str
    devices: int
    windows: int
    rows: int
    windows_without_profile: int
    excluded: dict[str, int]
    first_window_end: str | None
    last_window_end: str | None
    drifted_features: list[str]
    drifted_derived: list[str]
    prediction_drift: list[str]
    features: list[FeatureDriftOut]
    predictions: HistogramDriftOut | None
    confidence: HistogramDriftOut | None


class TimeRangeOut(BaseModel):
    since: str | None
    until: str | None


class ReferenceBriefOut(BaseModel):
    dataset: str
    dataset_sha256: str
    rows: int
    created_at: str
    settings: dict[str, Any]


class DriftPolicyDoc(BaseModel):
    thresholds: dict[str, float]
    feature_tests: list[str]
    deciding_feature_tests: list[str]
    prediction_tests: list[str]
    deciding_prediction_tests: list[str]
    require: str
    min_samples: int
    correction: str
    ks_rank_error: str
    bins: int
    psi_epsilon: float


class DriftReportOut(BaseModel):
    report_version: str
    model: str
    version: int
    by: str
    time_range: TimeRangeOut
    versions_with_telemetry: list[int]
    reference: ReferenceBriefOut
    policy: DriftPolicyDoc
    policy_source: Literal["stored", "default"]
    drifted: bool
    drifted_cohorts: list[str]
    excluded: dict[str, int]
    summary: str
    notes: list[str]
    cohorts: list[CohortDriftOut]


class ReferenceFeatureOut(BaseModel):
    name: str
    kind: str
    derived: bool
    count: int
    mean: float | None
    variance: float | None
    min: float | None
    max: float | None


class ReferenceOut(BaseModel):
    model: str
    version: int
    dataset: str
    dataset_sha256: str
    settings: dict[str, Any]
    created_at: str
    rows: int
    predictions: int
    projection: dict[str, int] | None
    features: list[ReferenceFeatureOut]
    classes: list[int] | None
    confidence: list[int] | None


class DriftPolicyOut(BaseModel):
    model: str
    source: Literal["stored", "default"]
    updated_by: str | None
    updated_at: str | None
    policy: DriftPolicyDoc


# --- request bodies ------------------------------------------------------------------------------
TestName = Annotated[str, Field(min_length=1, max_length=64)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ReferenceBuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None,
        pattern=SEGMENT.pattern,
        description="A registered dataset of the model (default: its newest eval set, else calibration set).",
    )
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="Base version (default: the latest).")
    force: StrictBool = Field(False, description="Recompute even when the stored one came from the same data.")


class DriftPolicyIn(BaseModel):
    """The whole policy (fields left out take their defaults). Test names and thresholds are checked
    against the registered drift tests (400 naming what is wrong)."""

    model_config = ConfigDict(extra="forbid")

    thresholds: dict[TestName, Finite] | None = Field(
        None, max_length=MAX_TESTS, description="Per test: a p-value level (ks, chi_square) or a statistic."
    )
    feature_tests: list[TestName] | None = Field(None, max_length=MAX_TESTS)
    deciding_feature_tests: list[TestName] | None = Field(None, max_length=MAX_TESTS)
    prediction_tests: list[TestName] | None = Field(None, max_length=MAX_TESTS)
    deciding_prediction_tests: list[TestName] | None = Field(None, max_length=MAX_TESTS)
    require: Literal["all", "any"] | None = None
    min_samples: int | None = Field(None, ge=1, le=10**12)
    correction: Literal["bonferroni", "none"] | None = None
    ks_rank_error: Literal["conservative", "point", "worst_case"] | None = None
    bins: int | None = Field(None, ge=2, le=1000)
    psi_epsilon: Finite | None = Field(None, gt=0, lt=1)


def _policy_out(stored: StoredPolicy) -> DriftPolicyOut:
    return DriftPolicyOut(**stored.to_dict())


# --- routes --------------------------------------------------------------------------------------
@router.get("/{name}/drift", response_model=DriftReportOut)
def drift_report(
    name: ModelName,
    services: ServicesDep,
    _key: ReadKey,
    version: VersionQuery = None,
    since: Annotated[datetime | None, Query(description="Windows ending at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Windows ending at or before (ISO 8601).")] = None,
    window: Annotated[
        str | None, Query(max_length=16, description="The last 30m, 1h, 7d … (instead of since/until).")
    ] = None,
    by: Annotated[Literal["tag", "profile", "device"], Query(description="What makes a cohort.")] = "tag",
    cohort: Annotated[
        str | None, Query(min_length=1, max_length=MAX_COHORT_CHARS, description="Only this cohort ('*': the fleet).")
    ] = None,
) -> dict[str, Any]:
    """Per cohort: windows, devices and rows covered, each feature's verdict with every test's
    statistic, p-value and threshold, prediction and confidence drift (privatized histograms
    de-biased), a verdict. 404 for an unknown model or version, no reference profile, no telemetry in
    the time range or an unknown cohort; 400 for a bad window or range."""
    try:
        report = _drift(services).report(
            name, version=version, window=window, since=since, until=until, by=by, cohort=cohort
        )
    except NotFoundError:  # no model, version, reference, telemetry or cohort: a 404
        raise
    except UsageError as exc:  # a bad window, or a window and a range: the query's rules across fields
        raise SpecError(exc.message) from exc
    return report.to_dict()


@router.get("/{name}/reference", response_model=ReferenceOut)
def show_reference(
    name: ModelName, services: ServicesDep, _key: ReadKey, version: VersionQuery = None
) -> dict[str, Any]:
    """The reference profile of a base version (default: the latest): where it came from, its
    features' moments and its prediction histograms. 404 (saying how to make one) when it has none."""
    return _references(services).require(name, version).to_dict()


@router.post("/{name}/reference", response_model=ReferenceOut)
def build_reference(name: ModelName, body: ReferenceBuildIn, services: ServicesDep, _key: ReleaseKey) -> dict[str, Any]:
    """Compute the reference profile from a registered dataset by running the base version on it
    (idempotent: the same dataset and settings keep the stored one). 404 for an unknown model,
    version or dataset."""
    record = _references(services).build(name, body.version, dataset=body.dataset, force=body.force)
    return record.to_dict()


@router.get("/{name}/drift/policy", response_model=DriftPolicyOut)
def show_policy(name: ModelName, services: ServicesDep, _key: ReadKey) -> DriftPolicyOut:
    """The model's drift policy (the defaults when none was set)."""
    return _policy_out(_drift(services).policy(name))


@router.put("/{name}/drift/policy", response_model=DriftPolicyOut)
def set_policy(name: ModelName, body: DriftPolicyIn, services: ServicesDep, key: ReleaseKey) -> DriftPolicyOut:
    """Replace the model's drift policy (recorded with the API key that set it)."""
    try:
        policy = DriftPolicy.from_dict(body.model_dump(exclude_none=True))
    except UsageError as exc:  # unknown tests, thresholds out of range, rules across fields
        raise SpecError(exc.message) from exc
    return _policy_out(_drift(services).set_policy(name, policy, updated_by=f"api-key:{key.id}"))
