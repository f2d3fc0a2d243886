"""Telemetry ingestion (server half): a device's sealed batch checked at the door, resolved against
what the server published to the device, and stored once — all of it or nothing.

:meth:`TelemetryIngest.ingest` takes the authenticated device, the raw (gzip) body and the
``X-Tinymlops-Batch-Signature`` header, and refuses, in this order:

1. what :func:`~tinymlops.observe.sealing.open_batch` refuses — a body over the limit or one that
   decompresses past the batch limit (:class:`~tinymlops.errors.PayloadTooLargeError`), a body that
   is not gzip, a payload that is not a valid, canonical batch — every KLL sketch is checked
   structurally by the spec parser before anything deserializes it — (:class:`~tinymlops.errors.SpecError`),
   a signature that does not verify with the key the device enrolled with
   (:class:`~tinymlops.errors.SignatureError`), a batch naming another device;
2. two windows of the batch about the same bundle whose spans intersect (:class:`SpecError`);
3. a digest already stored for this device: :class:`~tinymlops.errors.DuplicateBatchError` (409,
   ``digest`` in the body) — a retried upload whose answer was lost, which the device treats as
   delivered; nothing is merged twice;
4. a window whose bundle the server never published to this device (nor to one of its cohorts):
   :class:`~tinymlops.errors.InvalidInputError` naming the bundle;
5. a window whose span intersects a window already stored for the same device and bundle (a
   replayed window inside a re-signed batch, a clock set back): :class:`~tinymlops.errors.WindowOverlapError`
   (409) naming both. Spans are half-open (a window ending at ``t`` and the next starting at ``t``
   do not overlap; a point window overlaps the identical point window).

Steps 3-5 and the writes run in one transaction that starts by writing the device's row, which
serialises the ingestion of one device (a row lock on PostgreSQL, the database's write lock on
SQLite): two batches checked at the same time cannot both pass step 5. Two identical batches at
once store one — the second finds the first's digest, or (another server process) hits the unique
(device, digest) constraint, which is turned into the same :class:`DuplicateBatchError`.

Which bundles a device may report about: a bundle of one of its release assignments that was
published (``release_assignments``), the bundle such an assignment replaced on the device
(``prev_bundle_id``: the baseline of a rollout), the bundle the repository offers it now
(``device_offers``), or a bundle published in the update repository for the device's own target or
one of its cohorts (its tags). Each window is stored with what the server knows, not what the device
claims: the release, the variant ref (and from it, with :func:`tinymlops.registry.refs.parse_ref`,
the model name and base version), the device's profile and tags at ingestion, the energy and peak
memory, and the spec's performance/inputs/privacy sections as JSON (latency stays as its buckets:
every reader merges buckets across windows, so no per-window percentile is stored).

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from tinymlops.devices.records import DeviceRecord
from tinymlops.devices.schema import DeviceRow
from tinymlops.devices.service import aware
from tinymlops.errors import (
    DuplicateBatchError,
    InvalidInputError,
    ModelRefError,
    NotFoundError,
    SpecError,
    UsageError,
    WindowOverlapError,
)
from tinymlops.observe.schema import TelemetryBatchRow, TelemetryWindowRow
from tinymlops.observe.sealing import MAX_BODY_BYTES, OpenedBatch, open_batch
from tinymlops.registry.db import session_factory
from tinymlops.registry.refs import parse_ref
from tinymlops.release.schema import DeviceOfferRow, ReleaseAssignmentRow
from tinymlops.spec.telemetry import StoreStatus, TelemetryWindow
from tinymlops.spec.update import TargetPath

log = logging.getLogger("tinymlops.observe")

Clock = Callable[[], datetime]
#: looks a target up in the update repository (None: the repository is not consulted)
TargetLookup = Callable[[TargetPath], Any]


@dataclass(frozen=True)
class BundleOrigin:
    """What the server published a bundle as: its release, variant ref, model name and base version."""

    bundle_id: str
    release_id: str | None = None
    ref: str | None = None
    model: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class IngestResult:
    """A batch accepted: its row id, digest, windows stored and when; the releases its windows are about."""

    batch_id: int
    digest: str
    windows: int
    accepted_at: datetime
    release_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "digest": self.digest,
            "windows": self.windows,
            "accepted_at": self.accepted_at.isoformat(),
        }


@dataclass(frozen=True)
class TelemetryBatchRecord:
    """One stored batch (the ``telemetry_batches`` row), with the upload-store status it carried."""

    id: int
    device_id: str
    digest: str
    signature: str
    spec_version: str
    created_at: float
    received_at: datetime
    windows: int
    payload_bytes: int
    body_bytes: int
    store: StoreStatus | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "digest": self.digest,
            "signature": self.signature,
            "spec_version": self.spec_version,
            "created_at": self.created_at,
            "received_at": self.received_at.isoformat(),
            "windows": self.windows,
            "payload_bytes": self.payload_bytes,
            "body_bytes": self.body_bytes,
            "store": None if self.store is None else self.store.to_dict(),
        }


def batch_record(row: TelemetryBatchRow) -> TelemetryBatchRecord:
    store = None
    if row.store_status is not None:
        store = StoreStatus(
            status=row.store_status,
            pending_windows=row.store_pending or 0,
            merged_windows=row.store_merged or 0,
            dropped_windows=row.store_dropped or 0,
            error=row.store_error,
        )
    received = aware(row.received_at)
    assert received is not None
    return TelemetryBatchRecord(
        id=row.id,
        device_id=row.device_id,
        digest=row.digest,
        signature=row.signature,
        spec_version=row.spec_version,
        created_at=row.created_at,
        received_at=received,
        windows=row.windows,
        payload_bytes=row.payload_bytes,
        body_bytes=row.body_bytes,
        store=store,
    )


def window_row(
    batch_id: int,
    *,
    device_id: str,
    profile_name: str,
    tags: list[str],
    origin: BundleOrigin,
    window: TelemetryWindow,
    received_at: datetime,
) -> TelemetryWindowRow:
    """The ``telemetry_windows`` row of one window of an accepted batch: the columns queries filter and
    chart on, and the spec's sections as JSON."""
    perf = window.performance
    energy = perf.energy
    return TelemetryWindowRow(
        batch_id=batch_id,
        device_id=device_id,
        profile_name=profile_name,
        tags=tags,
        bundle_id=window.bundle_id,
        release_id=origin.release_id,
        ref=origin.ref,
        model=origin.model,
        version=origin.version,
        window_start=window.window_start,
        window_end=window.window_end,
        requests=perf.requests,
        errors=perf.errors,
        energy_j=None if energy is None else energy.joules_per_inference,
        energy_method=None if energy is None else energy.method,
        energy_inferences=None if energy is None else energy.inferences,
        peak_memory_bytes=perf.peak_memory_bytes,
        rows=0 if window.inputs is None else window.inputs.rows,
        performance=perf.to_dict(),
        inputs=None if window.inputs is None else window.inputs.to_dict(),
        privacy=window.privacy.to_dict(),
        received_at=received_at,
    )


def _origin(bundle_id: str, release_id: str | None, ref: str | None) -> BundleOrigin:
    model = version = None
    if ref:
        try:
            parsed = parse_ref(ref)
        except ModelRefError:
            log.warning("bundle %s: the ref %r it was published with does not parse", bundle_id, ref)
        else:
            model, version = parsed.name, parsed.version
    return BundleOrigin(bundle_id, release_id, ref, model, version)


def _target_paths(device: DeviceRow) -> list[TargetPath]:
    paths = [TargetPath.device(device.id)]
    for tag in device.tags or ():
        try:
            paths.append(TargetPath.cohort(tag))
        except SpecError:  # a tag that cannot name a cohort has no cohort bundle
            continue
    return paths


def _check_batch_spans(windows: tuple[TelemetryWindow, ...]) -> None:
    for j, w in enumerate(windows):
        for i in range(j):
            v = windows[i]
            if v.bundle_id == w.bundle_id and _intersects(v.window_start, v.window_end, w.window_start, w.window_end):
                raise SpecError(
                    f"telemetry batch: windows[{i}] [{v.window_start}, {v.window_end}] and windows[{j}] "
                    f"[{w.window_start}, {w.window_end}] of bundle {w.bundle_id} overlap",
                    bundle_id=w.bundle_id,
                )


def _intersects(a0: float, a1: float, b0: float, b1: float) -> bool:
    return (a0 < b1 and b0 < a1) or (a0 == b0 and a1 == b1)


class TelemetryIngest:
    """Accepts sealed telemetry batches into one metadata database (see the module doc).

    ``targets`` looks a target up in the update repository (for bundles published to a cohort or
    straight to the device, outside a release); ``max_body_bytes`` caps the compressed body."""

    def __init__(
        self,
        engine: Engine,
        *,
        targets: TargetLookup | None = None,
        clock: Clock | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._sessions = session_factory(engine)
        self._targets = targets
        self._clock = clock or (lambda: datetime.now(UTC))
        self.max_body_bytes = max_body_bytes

    def _now(self) -> datetime:
        now = self._clock()
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)

    # --- the door -----------------------------------------------------------------------------
    def ingest(self, device: DeviceRecord, body: bytes, signature: str | None) -> IngestResult:
        """Check, resolve and store one sealed batch from ``device`` (see the module doc)."""
        if not isinstance(device, DeviceRecord):
            raise UsageError(f"ingest needs the authenticated DeviceRecord, got {type(device).__name__}")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise UsageError(f"ingest needs the body as bytes, got {type(body).__name__}")
        opened = open_batch(bytes(body), signature, device.signing_public, max_body_bytes=self.max_body_bytes)
        batch = opened.batch
        if batch.device_id != device.id:  # open_batch ties the batch to the key; the key is the device's
            raise SpecError(f"telemetry batch: names device {batch.device_id}, but was sent by device {device.id}")
        _check_batch_spans(batch.windows)
        try:
            return self._store(device, opened)
        except DBIntegrityError:
            # another server process stored the same digest between our check and our insert
            with self._sessions() as session:
                if self._stored_batch(session, device.id, opened.digest) is not None:
                    raise self._duplicate(device.id, opened.digest) from None
            raise

    @staticmethod
    def _duplicate(device_id: str, digest: str) -> DuplicateBatchError:
        return DuplicateBatchError(
            f"telemetry batch {digest} from device {device_id} was already accepted; it is not merged again",
            digest=digest,
        )

    @staticmethod
    def _stored_batch(session: Any, device_id: str, digest: str) -> int | None:
        return session.scalar(
            select(TelemetryBatchRow.id).where(
                TelemetryBatchRow.device_id == device_id, TelemetryBatchRow.digest == digest
            )
        )

    def _store(self, device: DeviceRecord, opened: OpenedBatch) -> IngestResult:
        batch = opened.batch
        with self._sessions() as session:
            # first statement: a write, so one device's batches are ingested one at a time
            locked = session.execute(
                update(DeviceRow)
                .where(DeviceRow.id == device.id)
                .values(status=DeviceRow.status)
                .execution_options(synchronize_session=False)
            )
            if locked.rowcount != 1:
                raise NotFoundError(f"no device with id {device.id!r}", device_id=device.id)
            row = session.get(DeviceRow, device.id)
            assert row is not None
            if self._stored_batch(session, device.id, opened.digest) is not None:
                raise self._duplicate(device.id, opened.digest)
            origins = self._resolve(session, row, {w.bundle_id for w in batch.windows})
            for index, window in enumerate(batch.windows):
                self._check_stored_spans(session, device.id, index, window)
            now = self._now()
            store = batch.store
            batch_row = TelemetryBatchRow(
                device_id=device.id,
                digest=opened.digest,
                signature=opened.signature,
                spec_version=batch.spec_version,
                created_at=batch.created_at,
                received_at=now,
                windows=len(batch.windows),
                payload_bytes=opened.payload_bytes,
                body_bytes=opened.body_bytes,
                store_status=None if store is None else store.status,
                store_pending=None if store is None else store.pending_windows,
                store_merged=None if store is None else store.merged_windows,
                store_dropped=None if store is None else store.dropped_windows,
                store_error=None if store is None else store.error,
            )
            session.add(batch_row)
            session.flush()
            for window in batch.windows:
                session.add(
                    window_row(
                        batch_row.id,
                        device_id=row.id,
                        profile_name=row.profile_name,
                        tags=list(row.tags or ()),
                        origin=origins[window.bundle_id],
                        window=window,
                        received_at=now,
                    )
                )
            session.commit()
            releases = sorted({o.release_id for o in origins.values() if o.release_id is not None})
            return IngestResult(batch_row.id, opened.digest, len(batch.windows), now, tuple(releases))

    @staticmethod
    def _check_stored_spans(session: Any, device_id: str, index: int, window: TelemetryWindow) -> None:
        s, e = window.window_start, window.window_end
        W = TelemetryWindowRow
        stored = session.execute(
            select(W.window_start, W.window_end, W.batch_id)
            .where(
                W.device_id == device_id,
                W.bundle_id == window.bundle_id,
                or_(and_(W.window_start < e, W.window_end > s), and_(W.window_start == s, W.window_end == e)),
            )
            .order_by(W.window_start)
            .limit(1)
        ).first()
        if stored is not None:
            raise WindowOverlapError(
                f"telemetry batch: windows[{index}] [{s}, {e}] of bundle {window.bundle_id} overlaps the window "
                f"[{stored[0]}, {stored[1]}] stored from batch {stored[2]}; the batch is refused and nothing of it "
                "is stored",
                window=index,
                bundle_id=window.bundle_id,
                window_start=s,
                window_end=e,
                stored_start=stored[0],
                stored_end=stored[1],
                stored_batch_id=stored[2],
            )

    # --- which bundles the device may report about ----------------------------------------------
    def _resolve(self, session: Any, device: DeviceRow, bundle_ids: set[str]) -> dict[str, BundleOrigin]:
        wanted = sorted(bundle_ids)
        out: dict[str, BundleOrigin] = {}
        A = ReleaseAssignmentRow
        for release_id, ref, bundle_id in session.execute(
            select(A.release_id, A.ref, A.bundle_id).where(
                A.device_id == device.id,
                A.bundle_id.in_(wanted),
                A.status == "published",
                A.published_at.is_not(None),
            )
        ).all():
            out[bundle_id] = _origin(bundle_id, release_id, ref)
        missing = [b for b in wanted if b not in out]
        if missing:  # the bundle a release replaced on the device (a rollout's baseline)
            for prev_release, prev_bundle in session.execute(
                select(A.prev_release_id, A.prev_bundle_id).where(
                    A.device_id == device.id, A.prev_bundle_id.in_(missing)
                )
            ).all():
                ref = None
                if prev_release is not None:
                    ref = session.scalar(
                        select(A.ref).where(
                            A.release_id == prev_release, A.device_id == device.id, A.bundle_id == prev_bundle
                        )
                    )
                out.setdefault(prev_bundle, _origin(prev_bundle, prev_release, ref))
            missing = [b for b in wanted if b not in out]
        if missing:  # offered now (e.g. restored by a rollback)
            offer = session.get(DeviceOfferRow, device.id)
            if offer is not None and offer.bundle_id in missing:
                out[offer.bundle_id] = _origin(offer.bundle_id, offer.release_id, None)
            missing = [b for b in wanted if b not in out]
        if missing and self._targets is not None:  # published in the repository for it or its cohorts
            for path in _target_paths(device):
                target = self._targets(path)
                info = getattr(target, "info", None)
                if info is not None and info.bundle_id in missing and info.bundle_id not in out:
                    origin = BundleOrigin(info.bundle_id, info.release_id, info.ref, info.model, info.version)
                    out[info.bundle_id] = origin
            missing = [b for b in wanted if b not in out]
        if missing:
            raise InvalidInputError(
                f"telemetry batch: bundle {', '.join(missing)} was not published to device {device.id} "
                "(nor to a cohort it belongs to); the batch is refused",
                bundle_id=missing[0],
            )
        return out


__all__ = [
    "BundleOrigin",
    "IngestResult",
    "TelemetryBatchRecord",
    "TelemetryIngest",
    "batch_record",
]
