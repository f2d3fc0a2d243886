"""Performance from telemetry (server half): what the stored windows say about requests, errors,
latency, energy and memory — per device class and variant, per device, and per release against the
bundles it replaced.

Pure aggregation first (functions over :class:`WindowPerf`, the numbers of one stored window):

* latency is merged **exactly**: the windows' log buckets (1% relative error, the scheme of
  :class:`~tinymlops.edge.agent.serving_stats.LatencyHistogram`) are summed bucket by bucket and the
  percentiles read from the sum — never an average of per-window percentiles;
* energy per inference is the inference-weighted mean, **per method** (``rapl`` measured, ``model``
  estimated): the two are never silently mixed; the overall figure says ``mixed`` when they were;
* peak memory is the largest peak of the windows.

:func:`compare_classes` is what the telemetry rollout gates judge
(:class:`~tinymlops.release.rollout.ClassComparison`): per device class, the new bundle against the
same devices' previous bundle — only devices with telemetry on both sides count for a metric, and
energy is compared on one method per class (the one with the most paired samples, RAPL on a tie).

:class:`PerformanceViews` reads the ``telemetry_windows``/``telemetry_batches`` tables for the API:
the fleet by (profile, variant ref), one device's batches and upload-store status, one release's
per-class comparison.

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.engine import Engine

from tinymlops.devices.schema import DeviceRow
from tinymlops.edge.agent.serving_stats import LatencyHistogram
from tinymlops.errors import NotFoundError, UsageError
from tinymlops.observe.ingest import TelemetryBatchRecord, batch_record
from tinymlops.observe.schema import TelemetryBatchRow, TelemetryWindowRow
from tinymlops.registry.db import session_factory
from tinymlops.release.rollout import ClassComparison
from tinymlops.release.schema import ReleaseAssignmentRow, ReleaseRow
from tinymlops.spec.telemetry import ENERGY_METHODS

#: store statuses that are a condition to show (predictions go on, telemetry may be merged or lost)
FLAGGED_STORE = ("full", "unwritable")
_CHUNK = 500


# --- one window's numbers -----------------------------------------------------------------------
@dataclass(frozen=True)
class WindowPerf:
    """The numbers of one stored window that aggregation needs."""

    device_id: str
    profile: str
    bundle_id: str
    ref: str | None
    requests: int
    errors: int
    latency: dict[str, Any] | None = None  # the spec's latency buckets (LatencyBuckets.to_dict())
    energy_j: float | None = None
    energy_method: str | None = None
    energy_inferences: int | None = None
    peak_memory_bytes: int | None = None

    @classmethod
    def of(cls, row: Any) -> WindowPerf:
        performance = row.performance or {}
        return cls(
            device_id=row.device_id,
            profile=row.profile_name,
            bundle_id=row.bundle_id,
            ref=row.ref,
            requests=row.requests,
            errors=row.errors,
            latency=performance.get("latency"),
            energy_j=row.energy_j,
            energy_method=row.energy_method,
            energy_inferences=row.energy_inferences,
            peak_memory_bytes=row.peak_memory_bytes,
        )


@dataclass(frozen=True)
class EnergyStat:
    method: str
    joules_per_inference: float
    inferences: int

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "joules_per_inference": self.joules_per_inference, "inferences": self.inferences}


@dataclass(frozen=True)
class PerformanceStats:
    """What a set of windows adds up to."""

    windows: int = 0
    devices: int = 0
    requests: int = 0
    errors: int = 0
    latency_samples: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    energy: tuple[EnergyStat, ...] = ()
    peak_memory_bytes: int | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def energy_j_per_inference(self) -> float | None:
        """Over every method (check :attr:`energy_method`: ``mixed`` adds measured and estimated)."""
        n = sum(e.inferences for e in self.energy)
        return sum(e.joules_per_inference * e.inferences for e in self.energy) / n if n else None

    @property
    def energy_method(self) -> str | None:
        if not self.energy:
            return None
        return self.energy[0].method if len(self.energy) == 1 else "mixed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "devices": self.devices,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_samples": self.latency_samples,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "energy_j_per_inference": self.energy_j_per_inference,
            "energy_method": self.energy_method,
            "energy": [e.to_dict() for e in self.energy],
            "peak_memory_bytes": self.peak_memory_bytes,
        }


# --- merging ------------------------------------------------------------------------------------
# latency: LatencyHistogram.merge sums buckets exactly (the sum of histograms is the histogram of the union)
def _quantiles_ms(latency: LatencyHistogram, qs: Sequence[float]) -> list[float | None]:
    if not latency.count:
        return [None for _ in qs]
    return [v * 1e3 for v in latency.quantiles(qs)]


@dataclass
class _Energy:
    joules: float = 0.0
    inferences: int = 0


@dataclass
class _Totals:
    windows: int = 0
    devices: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    energy: dict[str, _Energy] = field(default_factory=dict)
    peak: int | None = None

    def add(self, w: WindowPerf) -> None:
        self.windows += 1
        self.devices.add(w.device_id)
        self.requests += w.requests
        self.errors += w.errors
        if w.latency is not None:
            doc = w.latency
            self.latency.merge(LatencyHistogram.from_buckets(doc["buckets"], float(doc["min_s"]), float(doc["max_s"])))
        if w.energy_method is not None and w.energy_j is not None and w.energy_inferences:
            e = self.energy.setdefault(w.energy_method, _Energy())
            e.joules += w.energy_j * w.energy_inferences
            e.inferences += w.energy_inferences
        if w.peak_memory_bytes is not None:
            self.peak = w.peak_memory_bytes if self.peak is None else max(self.peak, w.peak_memory_bytes)

    def stats(self) -> PerformanceStats:
        p50, p95, p99 = _quantiles_ms(self.latency, [0.5, 0.95, 0.99])
        energy = tuple(
            EnergyStat(method, e.joules / e.inferences, e.inferences)
            for method, e in sorted(self.energy.items())
            if e.inferences
        )
        return PerformanceStats(
            windows=self.windows,
            devices=len(self.devices),
            requests=self.requests,
            errors=self.errors,
            latency_samples=self.latency.count,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            energy=energy,
            peak_memory_bytes=self.peak,
        )


def aggregate(windows: Iterable[WindowPerf]) -> PerformanceStats:
    """Requests, errors, exact merged latency percentiles, energy per method and peak memory."""
    totals = _Totals()
    for w in windows:
        totals.add(w)
    return totals.stats()


@dataclass(frozen=True)
class ClassPerformance:
    """One device class (profile) on one variant: a row of the fleet view."""

    profile: str
    ref: str | None
    stats: PerformanceStats

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "ref": self.ref, **self.stats.to_dict()}


def by_class(windows: Iterable[WindowPerf]) -> list[ClassPerformance]:
    """Per (profile, variant ref), sorted by profile then ref."""
    groups: dict[tuple[str, str | None], _Totals] = {}
    for w in windows:
        groups.setdefault((w.profile, w.ref), _Totals()).add(w)
    return [
        ClassPerformance(profile, ref, totals.stats())
        for (profile, ref), totals in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]


# --- a release against the bundles it replaced -------------------------------------------------
@dataclass(frozen=True)
class Member:
    """A device of a release: its class, the release's bundle and the bundle it had before."""

    device_id: str
    profile: str
    bundle_id: str
    prev_bundle_id: str | None


def compare_classes(members: Iterable[Member], windows: Iterable[WindowPerf]) -> tuple[ClassComparison, ...]:
    """Per device class of ``members`` with a previous bundle: the new bundle's p50/p95 latency and
    energy per inference against the previous bundle's, on the same devices (see the module doc)."""
    per: dict[tuple[str, str], _Totals] = {}
    for w in windows:
        per.setdefault((w.device_id, w.bundle_id), _Totals()).add(w)
    classes: dict[str, list[Member]] = {}
    for m in members:
        if m.prev_bundle_id and m.prev_bundle_id != m.bundle_id:
            classes.setdefault(m.profile, []).append(m)
    empty = _Totals()
    out: list[ClassComparison] = []
    for profile, devices in sorted(classes.items()):
        new_lat, base_lat = LatencyHistogram(), LatencyHistogram()
        latency_baseline = energy_baseline = False
        by_method: dict[str, tuple[_Energy, _Energy]] = {}
        for m in devices:
            new = per.get((m.device_id, m.bundle_id), empty)
            base = per.get((m.device_id, m.prev_bundle_id or ""), empty)
            latency_baseline |= base.latency.count > 0
            energy_baseline |= any(e.inferences for e in base.energy.values())
            if new.latency.count and base.latency.count:
                new_lat.merge(new.latency)
                base_lat.merge(base.latency)
            for method in set(new.energy) & set(base.energy):
                n, b = new.energy[method], base.energy[method]
                if n.inferences and b.inferences:
                    acc = by_method.setdefault(method, (_Energy(), _Energy()))
                    acc[0].joules += n.joules
                    acc[0].inferences += n.inferences
                    acc[1].joules += b.joules
                    acc[1].inferences += b.inferences
        method = None
        if by_method:
            method = max(
                by_method,
                key=lambda k: (
                    min(by_method[k][0].inferences, by_method[k][1].inferences),
                    -ENERGY_METHODS.index(k),  # on a tie, the first (rapl); ingestion stores no other method
                ),
            )
        n_e, b_e = by_method[method] if method is not None else (_Energy(), _Energy())
        new_p50, new_p95 = _quantiles_ms(new_lat, [0.5, 0.95])
        base_p50, base_p95 = _quantiles_ms(base_lat, [0.5, 0.95])
        out.append(
            ClassComparison(
                profile=profile,
                devices=len(devices),
                latency_baseline=latency_baseline,
                new_latency_samples=new_lat.count,
                base_latency_samples=base_lat.count,
                new_p50_ms=new_p50,
                base_p50_ms=base_p50,
                new_p95_ms=new_p95,
                base_p95_ms=base_p95,
                energy_baseline=energy_baseline,
                energy_method=method,
                new_energy_samples=n_e.inferences,
                base_energy_samples=b_e.inferences,
                new_energy_j=n_e.joules / n_e.inferences if n_e.inferences else None,
                base_energy_j=b_e.joules / b_e.inferences if b_e.inferences else None,
            )
        )
    return tuple(out)


# --- reading the tables -------------------------------------------------------------------------
_WINDOW_COLUMNS = (
    TelemetryWindowRow.device_id,
    TelemetryWindowRow.profile_name,
    TelemetryWindowRow.bundle_id,
    TelemetryWindowRow.ref,
    TelemetryWindowRow.requests,
    TelemetryWindowRow.errors,
    TelemetryWindowRow.performance,
    TelemetryWindowRow.energy_j,
    TelemetryWindowRow.energy_method,
    TelemetryWindowRow.energy_inferences,
    TelemetryWindowRow.peak_memory_bytes,
)


def windows_of(session: Any, pairs: Iterable[tuple[str, str]]) -> Iterator[WindowPerf]:
    """The stored windows of these (device id, bundle id) pairs."""
    wanted = sorted(set(pairs))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        query = select(*_WINDOW_COLUMNS).where(
            tuple_(TelemetryWindowRow.device_id, TelemetryWindowRow.bundle_id).in_(chunk)
        )
        for row in session.execute(query):
            yield WindowPerf.of(row)


def compare_members(session: Any, members: Sequence[Member]) -> tuple[ClassComparison, ...]:
    """:func:`compare_classes` over the windows stored for ``members`` (inside the caller's session)."""
    pairs = [(m.device_id, m.bundle_id) for m in members]
    pairs += [(m.device_id, m.prev_bundle_id) for m in members if m.prev_bundle_id]
    return compare_classes(members, windows_of(session, pairs))


def members_of(rows: Iterable[ReleaseAssignmentRow]) -> list[Member]:
    """The published, reached devices among a release's assignment rows."""
    return [
        Member(r.device_id, r.profile_name, r.bundle_id, r.prev_bundle_id)
        for r in rows
        if r.status == "published" and r.bundle_id and r.published_at is not None
    ]


@dataclass(frozen=True)
class BundlePerformance:
    """One bundle a device ran: a row of the device view."""

    bundle_id: str
    ref: str | None
    stats: PerformanceStats

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "ref": self.ref, **self.stats.to_dict()}


@dataclass(frozen=True)
class DeviceTelemetry:
    """One device: its newest batches, the upload-store status it last reported, its bundles' numbers."""

    device_id: str
    batches: tuple[TelemetryBatchRecord, ...]
    store: dict[str, Any] | None
    bundles: tuple[BundlePerformance, ...]

    @property
    def flagged(self) -> bool:
        return self.store is not None and self.store["status"] in FLAGGED_STORE

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "store": self.store,
            "store_flagged": self.flagged,
            "batches": [b.to_dict() for b in self.batches],
            "bundles": [b.to_dict() for b in self.bundles],
        }


@dataclass(frozen=True)
class ReleasePerformance:
    release_id: str
    classes: tuple[ClassComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "classes": [c.to_dict() for c in self.classes]}


class PerformanceViews:
    """Read-side views over the telemetry tables of one metadata database."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def fleet(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        model: str | None = None,
        release_id: str | None = None,
    ) -> list[ClassPerformance]:
        """Per (profile, variant ref) over the windows that intersect [since, until] (the devices'
        clocks, seconds), of one model and/or one release (an empty range: nothing)."""
        W = TelemetryWindowRow
        query = select(*_WINDOW_COLUMNS)
        if since is not None:
            query = query.where(W.window_end >= since)
        if until is not None:
            query = query.where(W.window_start <= until)
        if model is not None:
            query = query.where(W.model == model)
        if release_id is not None:
            query = query.where(W.release_id == release_id)
        with self._sessions() as session:
            return by_class(WindowPerf.of(r) for r in session.execute(query.execution_options(yield_per=1000)))

    def device(self, device_id: str, *, limit: int = 20) -> DeviceTelemetry:
        """The device's newest ``limit`` batches, its latest upload-store status, numbers per bundle."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise UsageError(f"limit must be an integer from 1 to 1000, got {limit!r}")
        B = TelemetryBatchRow
        with self._sessions() as session:
            if session.get(DeviceRow, device_id) is None:
                raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
            batches = [
                batch_record(r)
                for r in session.scalars(select(B).where(B.device_id == device_id).order_by(B.id.desc()).limit(limit))
            ]
            latest = session.scalars(
                select(B).where(B.device_id == device_id, B.store_status.is_not(None)).order_by(B.id.desc()).limit(1)
            ).first()
            store = None
            if latest is not None:
                record = batch_record(latest)
                assert record.store is not None
                store = {**record.store.to_dict(), "batch_id": record.id, "received_at": record.received_at.isoformat()}
            groups: dict[tuple[str, str | None], _Totals] = {}
            query = select(*_WINDOW_COLUMNS).where(TelemetryWindowRow.device_id == device_id)
            for row in session.execute(query):
                w = WindowPerf.of(row)
                groups.setdefault((w.bundle_id, w.ref), _Totals()).add(w)
        bundles = tuple(
            BundlePerformance(b, ref, t.stats())
            for (b, ref), t in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        )
        return DeviceTelemetry(device_id, tuple(batches), store, bundles)

    def release(self, release_id: str) -> ReleasePerformance:
        """Per device class: the release's bundles against the ones they replaced, on the devices published to."""
        with self._sessions() as session:
            if session.get(ReleaseRow, release_id) is None:
                raise NotFoundError(f"no release with id {release_id!r}", release_id=release_id)
            rows = session.scalars(
                select(ReleaseAssignmentRow).where(ReleaseAssignmentRow.release_id == release_id)
            ).all()
            return ReleasePerformance(release_id, compare_members(session, members_of(rows)))


__all__ = [
    "FLAGGED_STORE",
    "BundlePerformance",
    "ClassPerformance",
    "DeviceTelemetry",
    "EnergyStat",
    "Member",
    "PerformanceStats",
    "PerformanceViews",
    "ReleasePerformance",
    "WindowPerf",
    "aggregate",
    "by_class",
    "compare_classes",
    "compare_members",
    "members_of",
    "windows_of",
]
