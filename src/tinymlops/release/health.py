"""Device health reports on the server: store what agents report about the bundle they run, and
aggregate it — per rollout stage (the numbers a health gate judges) and per device class (the
dashboard's latency charts).

A report (:class:`~tinymlops.spec.health_report.HealthReport`) is stored append-only with the
device's profile and, when the bundle was published by a release, that release and variant ref.
Aggregates:

* :meth:`HealthReports.bundle_stats` — predictions, errors and the median latency of a set of
  (device, bundle) pairs: the median is the prediction-weighted median of the reports' p50s (each
  report's p50 stands for its predictions; exact when every report covers the same distribution,
  and the usual way to merge per-window medians without the raw latencies);
* :meth:`HealthReports.latency_by_class` — the same per (device profile, variant ref), with the
  weighted p95 as well, over a time window of reports received.

Server side (SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.engine import Engine

from tinymlops.devices.schema import DeviceRow
from tinymlops.devices.service import aware
from tinymlops.errors import NotFoundError, UsageError
from tinymlops.registry.db import session_factory
from tinymlops.release.schema import HealthReportRow, ReleaseAssignmentRow
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport

Clock = Callable[[], datetime]
MAX_LIST = 1000


@dataclass(frozen=True)
class HealthReportRecord:
    id: int
    device_id: str
    profile: str
    release_id: str | None
    ref: str | None
    report: HealthReport
    received_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "profile": self.profile,
            "release_id": self.release_id,
            "ref": self.ref,
            "received_at": self.received_at.isoformat(),
            **self.report.to_dict(),
        }


@dataclass(frozen=True)
class BundleStats:
    """What a set of devices reported about a set of bundles."""

    reports: int
    devices: int
    predictions: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.predictions if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "devices": self.devices,
            "predictions": self.predictions,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
        }


@dataclass(frozen=True)
class ClassLatency:
    """One device class (profile) on one variant: the chart's bar."""

    profile: str
    ref: str | None
    stats: BundleStats

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "ref": self.ref, **self.stats.to_dict()}


def weighted_median(pairs: Iterable[tuple[float, int]]) -> float | None:
    """The value at half of the total weight (the lower one on an exact tie); None without weight."""
    return weighted_quantile(pairs, 0.5)


def weighted_quantile(pairs: Iterable[tuple[float, int]], q: float) -> float | None:
    """The smallest value whose cumulative weight reaches ``q`` of the total; None without weight."""
    items = sorted((v, w) for v, w in pairs if w > 0)
    total = sum(w for _, w in items)
    if total == 0:
        return None
    seen = 0
    for value, weight in items:
        seen += weight
        if seen >= q * total:
            return value
    return items[-1][0]


def _stats(rows: Iterable[HealthReportRow]) -> BundleStats:
    rows = list(rows)
    ok = [(r.p50_ms, r.predictions - r.errors) for r in rows if r.p50_ms is not None]
    tail = [(r.p95_ms, r.predictions - r.errors) for r in rows if r.p95_ms is not None]
    return BundleStats(
        reports=len(rows),
        devices=len({r.device_id for r in rows}),
        predictions=sum(r.predictions for r in rows),
        errors=sum(r.errors for r in rows),
        p50_ms=weighted_median(ok),
        p95_ms=weighted_quantile(tail, 0.95),
    )


def _record(row: HealthReportRow) -> HealthReportRecord:
    latency = None
    if row.p50_ms is not None:
        latency = {"p50": row.p50_ms, "p95": row.p95_ms, "p99": row.p99_ms, "max": row.max_ms}
    report = HealthReport(
        bundle_id=row.bundle_id,
        window_start=row.window_start,
        window_end=row.window_end,
        predictions=row.predictions,
        errors=row.errors,
        latency_ms=latency,
        context=None if row.context is None else DeviceContext.from_dict(row.context),
        at=row.reported_at,
    )
    received = aware(row.received_at)
    assert received is not None
    return HealthReportRecord(row.id, row.device_id, row.profile_name, row.release_id, row.ref, report, received)


class HealthReports:
    """The health reports of one metadata database."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._sessions = session_factory(engine)
        self._clock = clock or (lambda: datetime.now(UTC))

    def record(self, device_id: str, report: HealthReport) -> HealthReportRecord:
        """Store one report, linked to the release (and variant) that published its bundle to the device."""
        if not isinstance(report, HealthReport):
            raise UsageError(f"record needs a HealthReport, got {type(report).__name__}")
        with self._sessions() as session:
            device = session.get(DeviceRow, device_id)
            if device is None:
                raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
            assignment = session.execute(
                select(ReleaseAssignmentRow.release_id, ReleaseAssignmentRow.ref)
                .where(
                    ReleaseAssignmentRow.device_id == device_id,
                    ReleaseAssignmentRow.bundle_id == report.bundle_id,
                )
                .limit(1)
            ).first()
            latency = report.latency_ms or {}
            row = HealthReportRow(
                device_id=device_id,
                profile_name=device.profile_name,
                release_id=None if assignment is None else assignment[0],
                ref=None if assignment is None else assignment[1],
                bundle_id=report.bundle_id,
                window_start=report.window_start,
                window_end=report.window_end,
                predictions=report.predictions,
                errors=report.errors,
                p50_ms=latency.get("p50"),
                p95_ms=latency.get("p95"),
                p99_ms=latency.get("p99"),
                max_ms=latency.get("max"),
                context=None if report.context is None else report.context.to_dict(),
                reported_at=report.at,
                received_at=self._clock(),
            )
            session.add(row)
            session.commit()
            return _record(row)

    def list(self, *, device_id: str | None = None, limit: int = 100) -> list[HealthReportRecord]:
        """The newest reports first (of one device, or of all)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise UsageError(f"limit must be an integer from 1 to {MAX_LIST}, got {limit!r}")
        query = select(HealthReportRow).order_by(HealthReportRow.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(HealthReportRow.device_id == device_id)
        with self._sessions() as session:
            return [_record(r) for r in session.scalars(query).all()]

    def latest_context(self, device_id: str) -> DeviceContext | None:
        """The context the device last reported (None if it never did)."""
        with self._sessions() as session:
            raw = session.scalar(
                select(HealthReportRow.context)
                .where(HealthReportRow.device_id == device_id, HealthReportRow.context.is_not(None))
                .order_by(HealthReportRow.id.desc())
                .limit(1)
            )
        return None if raw is None else DeviceContext.from_dict(raw)

    def bundle_stats(self, pairs: Iterable[tuple[str, str]], *, session: Any = None) -> BundleStats:
        """Aggregate the reports about these (device id, bundle id) pairs."""
        wanted = sorted(set(pairs))
        if not wanted:
            return _stats([])
        rows: list[HealthReportRow] = []

        def fetch(s: Any) -> None:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows.extend(
                    s.scalars(
                        select(HealthReportRow).where(
                            tuple_(HealthReportRow.device_id, HealthReportRow.bundle_id).in_(chunk)
                        )
                    ).all()
                )

        if session is not None:
            fetch(session)
        else:
            with self._sessions() as s:
                fetch(s)
        return _stats(rows)

    def latency_by_class(self, *, since: timedelta | None = None) -> list[ClassLatency]:
        """Per (profile, variant ref): the weighted p50/p95 latency and error counts of the reports
        received in the last ``since`` (all of them when None), sorted by profile then ref."""
        query = select(HealthReportRow)
        if since is not None:
            query = query.where(HealthReportRow.received_at >= self._clock() - since)
        groups: dict[tuple[str, str | None], list[HealthReportRow]] = {}
        with self._sessions() as session:
            for row in session.scalars(query).all():
                groups.setdefault((row.profile_name, row.ref), []).append(row)
        return [
            ClassLatency(profile, ref, _stats(rows))
            for (profile, ref), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        ]


__all__ = [
    "BundleStats",
    "ClassLatency",
    "HealthReportRecord",
    "HealthReports",
    "weighted_median",
    "weighted_quantile",
]
