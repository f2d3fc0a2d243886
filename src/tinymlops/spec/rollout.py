"""A release's rollout plan: stages as fractions of the target fleet, each with health criteria.

The document (written by an operator, stored with the release; unknown fields are refused)::

    {
      "spec_version": "1.0",
      "on_failure": "rollback",           # rollback (halt, then roll back) | halt (halt, wait for a human)
      "stages": [
        {"name": "canary", "fraction": 0.05,
         "health": {"min_install_success_rate": 0.95,   # installs ok / installs reported
                    "max_smoke_failure_rate": 0.0,      # smoke-test failures / installs reported
                    "max_error_rate": 0.01,             # prediction errors / predictions
                    "max_latency_ratio": 1.5,           # p50 latency / previous release's p50
                    "min_reports": 5,                   # install reports needed before judging
                    "min_predictions": 500,             # predictions reported before it may pass
                    "min_soak_s": 600,                  # seconds in the stage before it may pass
                    # telemetry gates, judged per device class (profile) on the stage's devices,
                    # new bundle vs the same devices' previous bundle; absent (or null) = off
                    "max_p95_latency_ratio": 1.3,       # p95 latency (merged telemetry histograms)
                    "max_energy_ratio": 1.2,            # energy per inference (one method per class)
                    "min_class_samples": 100}},         # samples per class and side before judging
        {"name": "wide", "fraction": 0.25},
        {"name": "all", "fraction": 1.0}
      ]
    }

Fractions are strictly increasing and the last one is 1.0; a stage without ``health`` gets the
defaults below. The state machine that runs a plan is :mod:`tinymlops.release.rollout`.

The telemetry gates (``max_p95_latency_ratio``, ``max_energy_ratio``) are off unless set; a device
class with fewer than ``min_class_samples`` telemetry samples on either bundle holds the stage
(like ``min_predictions``: it neither passes nor fails); a class with no telemetry from the previous
bundle (a first release, telemetry newly turned on) is not judged. ``to_dict`` writes the telemetry
fields only when a gate is set or ``min_class_samples`` is not the default, so a plan without them
reads and writes as it always did.
Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_choice, get_int, get_number, get_str, reject_unknown

ROLLOUT_PLAN_MAJOR = 1
ROLLOUT_PLAN_VERSION = "1.0"
ON_FAILURE = ("rollback", "halt")
MAX_STAGES = 16
MAX_SOAK_S = 30 * 24 * 3600.0
MAX_LATENCY_RATIO = 1000.0
DEFAULT_MIN_CLASS_SAMPLES = 100
MAX_CLASS_SAMPLES = 10**12
DOC = "rollout plan"

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_PLAN_FIELDS = {"spec_version", "on_failure", "stages"}
_STAGE_FIELDS = {"name", "fraction", "health"}
_HEALTH_FIELDS = {
    "min_install_success_rate",
    "max_smoke_failure_rate",
    "max_error_rate",
    "max_latency_ratio",
    "min_reports",
    "min_predictions",
    "min_soak_s",
    "max_p95_latency_ratio",
    "max_energy_ratio",
    "min_class_samples",
}
#: the telemetry gates (off when None)
TELEMETRY_GATES = ("max_p95_latency_ratio", "max_energy_ratio")


def _ratio(doc: str, data: Mapping[str, Any], key: str) -> float | None:
    if data.get(key) is None:
        return None
    value = _finite(doc, data, key, 0.0, 0.0, MAX_LATENCY_RATIO)
    if value <= 0:
        raise SpecError(f"{doc}: field '{key}' must be > 0 (or null: off), got {value}")
    return value


def _finite(doc: str, data: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = get_number(doc, data, key, default, minimum=lo, maximum=hi)
    if not math.isfinite(value):
        raise SpecError(f"{doc}: field '{key}' must be a finite number")
    return value


@dataclass(frozen=True)
class HealthCriteria:
    """What a stage must show before it may pass; each rate is in [0, 1]."""

    min_install_success_rate: float = 0.95
    max_smoke_failure_rate: float = 0.0
    max_error_rate: float = 0.05
    max_latency_ratio: float = 1.5
    min_reports: int = 1
    min_soak_s: float = 0.0
    #: predictions the reached devices must have reported before the stage may pass (a gate on
    #: passing only: a stage whose reports already break a criterion fails without waiting for it)
    min_predictions: int = 0
    #: per device class: the new bundle's p95 latency / the same devices' previous bundle's (telemetry)
    max_p95_latency_ratio: float | None = None
    #: per device class: energy per inference on the new bundle / on the previous one (telemetry)
    max_energy_ratio: float | None = None
    #: telemetry samples a class needs on each bundle before a telemetry gate judges it (fewer: hold)
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES

    @property
    def telemetry_gated(self) -> bool:
        """Whether any telemetry gate is set."""
        return any(getattr(self, key) is not None for key in TELEMETRY_GATES)

    def __post_init__(self) -> None:
        parsed = HealthCriteria.from_dict(self.to_dict())  # one set of rules; keeps the normalised values
        for key in _HEALTH_FIELDS:
            object.__setattr__(self, key, getattr(parsed, key))

    @classmethod
    def from_dict(cls, data: Any, *, doc: str = f"{DOC} health") -> HealthCriteria:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        reject_unknown(doc, data, _HEALTH_FIELDS)
        values = {
            "min_install_success_rate": _finite(doc, data, "min_install_success_rate", 0.95, 0.0, 1.0),
            "max_smoke_failure_rate": _finite(doc, data, "max_smoke_failure_rate", 0.0, 0.0, 1.0),
            "max_error_rate": _finite(doc, data, "max_error_rate", 0.05, 0.0, 1.0),
            "max_latency_ratio": _finite(doc, data, "max_latency_ratio", 1.5, 0.0, MAX_LATENCY_RATIO),
            "min_reports": get_int(doc, data, "min_reports", 1, minimum=1),
            "min_predictions": get_int(doc, data, "min_predictions", 0, minimum=0),
            "min_soak_s": _finite(doc, data, "min_soak_s", 0.0, 0.0, MAX_SOAK_S),
            "max_p95_latency_ratio": _ratio(doc, data, "max_p95_latency_ratio"),
            "max_energy_ratio": _ratio(doc, data, "max_energy_ratio"),
            "min_class_samples": get_int(doc, data, "min_class_samples", DEFAULT_MIN_CLASS_SAMPLES, minimum=1),
        }
        if values["min_class_samples"] > MAX_CLASS_SAMPLES:
            raise SpecError(f"{doc}: field 'min_class_samples' must be <= {MAX_CLASS_SAMPLES}")
        if values["max_latency_ratio"] <= 0:
            raise SpecError(f"{doc}: field 'max_latency_ratio' must be > 0, got {values['max_latency_ratio']}")
        criteria = object.__new__(cls)
        for key, value in values.items():
            object.__setattr__(criteria, key, value)
        return criteria

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "min_install_success_rate": self.min_install_success_rate,
            "max_smoke_failure_rate": self.max_smoke_failure_rate,
            "max_error_rate": self.max_error_rate,
            "max_latency_ratio": self.max_latency_ratio,
            "min_reports": self.min_reports,
            "min_predictions": self.min_predictions,
            "min_soak_s": self.min_soak_s,
        }
        if self.telemetry_gated or self.min_class_samples != DEFAULT_MIN_CLASS_SAMPLES:
            for key in TELEMETRY_GATES:
                if getattr(self, key) is not None:
                    out[key] = getattr(self, key)
            out["min_class_samples"] = self.min_class_samples
        return out


@dataclass(frozen=True)
class RolloutStage:
    """One stage: every device whose cohort position is below ``fraction`` is in it."""

    name: str
    fraction: float
    health: HealthCriteria = field(default_factory=HealthCriteria)

    def __post_init__(self) -> None:
        parsed = RolloutStage.from_dict(self.to_dict())  # one set of rules; keeps the normalised values
        for key in ("name", "fraction", "health"):
            object.__setattr__(self, key, getattr(parsed, key))

    @classmethod
    def from_dict(cls, data: Any, *, doc: str = f"{DOC} stage") -> RolloutStage:
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        reject_unknown(doc, data, _STAGE_FIELDS)
        name = get_str(doc, data, "name")
        if not _STAGE_NAME.match(name):
            raise SpecError(
                f"{doc}: field 'name' must be 1-32 lower-case letters, digits, '-' or '_', got {name!r:.40}"
            )
        fraction = _finite(doc, data, "fraction", math.nan, 0.0, 1.0) if "fraction" in data else None
        if fraction is None:
            raise SpecError(f"{doc}: missing required field 'fraction'")
        if fraction <= 0:
            raise SpecError(f"{doc}: field 'fraction' must be > 0, got {fraction}")
        health_doc = data.get("health", {})
        if isinstance(health_doc, HealthCriteria):
            health_doc = health_doc.to_dict()
        health = HealthCriteria.from_dict(health_doc, doc=f"{doc} '{name}' health")
        stage = object.__new__(cls)
        object.__setattr__(stage, "name", name)
        object.__setattr__(stage, "fraction", fraction)
        object.__setattr__(stage, "health", health)
        return stage

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fraction": self.fraction, "health": self.health.to_dict()}


@dataclass(frozen=True)
class RolloutPlan:
    stages: tuple[RolloutStage, ...]
    on_failure: str = "rollback"
    spec_version: str = ROLLOUT_PLAN_VERSION

    def __post_init__(self) -> None:
        parsed = RolloutPlan.from_dict(self.to_dict())  # one set of rules; keeps the normalised values
        for key in ("stages", "on_failure", "spec_version"):
            object.__setattr__(self, key, getattr(parsed, key))

    @classmethod
    def from_dict(cls, data: Any) -> RolloutPlan:
        if not isinstance(data, Mapping):
            raise SpecError(f"{DOC}: must be an object, got {type(data).__name__}")
        reject_unknown(DOC, data, _PLAN_FIELDS)
        version = check_version(DOC, data, ROLLOUT_PLAN_MAJOR)
        on_failure = get_choice(DOC, data, "on_failure", ON_FAILURE, "rollback")
        raw = data.get("stages")
        if raw is None:
            raise SpecError(f"{DOC}: missing required field 'stages'")
        if not isinstance(raw, list | tuple) or not raw:
            raise SpecError(f"{DOC}: field 'stages' must be a non-empty list of stages")
        if len(raw) > MAX_STAGES:
            raise SpecError(f"{DOC}: at most {MAX_STAGES} stages, got {len(raw)}")
        stages: list[RolloutStage] = []
        for index, item in enumerate(raw):
            if isinstance(item, RolloutStage):
                item = item.to_dict()
            stage = RolloutStage.from_dict(item, doc=f"{DOC} stage {index}")
            if stages and stage.fraction <= stages[-1].fraction:
                raise SpecError(
                    f"{DOC}: stage fractions must be strictly increasing; stage {index} '{stage.name}' has "
                    f"{stage.fraction} after '{stages[-1].name}' with {stages[-1].fraction}"
                )
            if any(s.name == stage.name for s in stages):
                raise SpecError(f"{DOC}: stage name '{stage.name}' is used twice")
            stages.append(stage)
        if stages[-1].fraction != 1.0:
            raise SpecError(
                f"{DOC}: the last stage must cover the whole fleet (fraction 1.0); "
                f"'{stages[-1].name}' has {stages[-1].fraction}"
            )
        plan = object.__new__(cls)
        object.__setattr__(plan, "stages", tuple(stages))
        object.__setattr__(plan, "on_failure", on_failure)
        object.__setattr__(plan, "spec_version", version)
        return plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "on_failure": self.on_failure,
            "stages": [s.to_dict() for s in self.stages],
        }


__all__ = [
    "DEFAULT_MIN_CLASS_SAMPLES",
    "MAX_CLASS_SAMPLES",
    "ON_FAILURE",
    "ROLLOUT_PLAN_VERSION",
    "TELEMETRY_GATES",
    "HealthCriteria",
    "RolloutPlan",
    "RolloutStage",
]
