"""Releases: choose a variant per device, build a bundle encrypted to it, publish them all through
the TUF repository in one commit, and record what the devices report back.

:meth:`ReleaseService.create_release` (the control-plane half of a release):

1. **which model** — ``model_or_ref`` is a model (``digits``), a version (``digits:3``) or a
   full variant ref (``digits:3/int8-static``). A full variant ref is used as given for every
   device (``explicit``); otherwise the variant is *selected* per device among the version's
   candidates (:func:`~tinymlops.targets.registry_candidates.candidates_for`) with
   :func:`~tinymlops.targets.selection.select_variant` for the device's enrolled profile and a
   default :class:`~tinymlops.spec.context.DeviceContext`; the selection's reason and
   explanations are recorded with the assignment.
2. **which devices** — the ``devices`` named (each must exist and be active: an unknown id is a
   :class:`NotFoundError`), narrowed to those carrying every one of ``tags``; with no ``devices``,
   every active device carrying ``tags`` (every active device when no tags either). A revoked device
   named is a :class:`ConflictError`; no device left to release to, a :class:`NotFoundError`.
3. **build** — one bundle per device, its content key wrapped to the device's X25519 key,
   written to ``<workspace>/releases/<release id>/<device id>.tmlb``. Every bundle carries a
   telemetry policy (:mod:`tinymlops.release.telemetry`: enabled unless ``telemetry`` turns it
   off, with the reference profile's sketch settings and the model's class count); it is checked
   before anything is built, and recorded with each assignment (``selection["telemetry"]``) and on
   the release (:attr:`ReleaseRecord.telemetry`). A device whose profile no
   variant fits (or that has no profile in the workspace's catalog) is *skipped* with the reason,
   never fatal; it keeps whatever was published for it before.
4. **publish** — every bundle in ONE :meth:`UpdateRepository.edit
   <tinymlops.release.repository.UpdateRepository.edit>` (one new snapshot and timestamp), inside
   the database transaction that records the release and its assignments; then
   :meth:`~tinymlops.release.repository.UpdateRepository.refresh`. Any other failure while building
   or publishing (a store error, a bundle that does not verify) publishes nothing, records
   nothing and removes the release directory. The one window left is a database commit failing
   after the repository committed: devices then receive bundles of a release that is not
   recorded (their install reports are still stored, with no release id).

:meth:`ReleaseService.record_install` stores an agent's
:class:`~tinymlops.spec.install_report.InstallReport` (append-only), links it to the release that
published that bundle to that device, and updates the device's deployment (the bundle it runs,
its last status).

:meth:`ReleaseService.keep_fresh` keeps the repository's timestamp valid: it re-signs (with
:meth:`~tinymlops.release.repository.UpdateRepository.refresh`) once less than half of the
timestamp's validity is left. The server calls it whenever a device asks for ``timestamp.json``
(the first request of every update check), so a running server never lets its timestamp expire
— no background task, nothing to lose when the server is killed, and a restarted server catches
up on its first request. The moment it is next due is remembered in memory, so most calls cost
one comparison.

Server side: imports the registry, targets, bundle builder and SQLAlchemy.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.devices.records import DeviceRecord
from tinymlops.devices.service import DeviceService, aware
from tinymlops.errors import (
    AccessDeniedError,
    ConflictError,
    IncompatibleError,
    NotFoundError,
    SpecError,
    StoreError,
    TargetNotFoundError,
    UsageError,
    WorkspaceError,
)
from tinymlops.registry.db import session_factory
from tinymlops.registry.refs import parse_ref
from tinymlops.release.health import HealthReportRecord, HealthReports
from tinymlops.release.metering import metering_table
from tinymlops.release.repository import RefreshResult, UpdateRepository
from tinymlops.release.rollouts import Rollouts
from tinymlops.release.schema import (
    DeviceDeploymentRow,
    InstallReportRow,
    ReleaseAssignmentRow,
    ReleaseRow,
    RolloutRow,
)
from tinymlops.release.telemetry import common_table, telemetry_table
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport
from tinymlops.spec.install_report import InstallReport
from tinymlops.spec.profile import DeviceProfile
from tinymlops.spec.rollout import RolloutPlan
from tinymlops.spec.update import TargetPath
from tinymlops.targets.registry_candidates import candidates_for
from tinymlops.targets.selection import Candidate, select_variant

if TYPE_CHECKING:
    from tinymlops.workspace.workspace import Workspace

log = logging.getLogger("tinymlops.release")

RELEASES_DIR = "releases"
BUNDLE_SUFFIX = ".tmlb"
#: the path devices use for the repository on the control-plane server
REPOSITORY_PATH = "/v1/tuf"
MAX_LIST = 1000

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


# --- records handed to callers --------------------------------------------------------------
@dataclass(frozen=True)
class InstallReportRecord:
    id: int
    device_id: str
    release_id: str | None
    report: InstallReport
    received_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device_id": self.device_id,
            "release_id": self.release_id,
            "received_at": _iso(self.received_at),
            **self.report.to_dict(),
        }


@dataclass(frozen=True)
class Deployment:
    """What a device last reported: the bundle it runs (and the release that published it)."""

    device_id: str
    bundle_id: str | None
    release_id: str | None
    last_status: str
    last_reason: str
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "bundle_id": self.bundle_id,
            "release_id": self.release_id,
            "last_status": self.last_status,
            "last_reason": self.last_reason,
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class Assignment:
    """One device in one release: published (ref, bundle) or skipped (reason)."""

    release_id: str
    device_id: str
    profile_name: str
    status: str  # published | skipped
    reason: str
    ref: str | None
    bundle_id: str | None
    bundle_sha256: str | None
    size_bytes: int | None
    target_path: str | None
    selection: dict[str, Any]
    latest_report: InstallReportRecord | None = None
    deployment: Deployment | None = None
    stage: int | None = None  # the first rollout stage that includes the device
    published_at: datetime | None = None  # when its bundle was offered (None: its stage is not reached yet)
    withdrawn_at: datetime | None = None  # when a rollback took it back

    @property
    def telemetry(self) -> dict[str, Any] | None:
        """The telemetry table its bundle's manifest carries (None: skipped, or released before bundles had one)."""
        table = self.selection.get("telemetry")
        return dict(table) if isinstance(table, Mapping) else None

    @property
    def metering(self) -> dict[str, Any] | None:
        """The metering table its bundle's manifest carries (None: not metered)."""
        table = self.selection.get("metering")
        return dict(table) if isinstance(table, Mapping) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "profile": self.profile_name,
            "status": self.status,
            "reason": self.reason,
            "ref": self.ref,
            "bundle_id": self.bundle_id,
            "bundle_sha256": self.bundle_sha256,
            "size_bytes": self.size_bytes,
            "target_path": self.target_path,
            "selection": self.selection,
            "stage": self.stage,
            "published_at": _iso(self.published_at),
            "withdrawn_at": _iso(self.withdrawn_at),
            "latest_report": None if self.latest_report is None else self.latest_report.to_dict(),
            "deployment": None if self.deployment is None else self.deployment.to_dict(),
        }


@dataclass(frozen=True)
class ReleaseRecord:
    id: str
    model: str
    requested: str
    explicit: bool
    devices: tuple[str, ...] | None
    tags: tuple[str, ...]
    urgent: bool
    status: str  # published | empty (every device skipped)
    created_by: str
    created_at: datetime
    snapshot_version: int | None
    assignments: tuple[Assignment, ...] = field(default_factory=tuple)
    #: status, stage and stage name of the release's rollout (None for an empty release)
    rollout: dict[str, Any] | None = None
    #: only devices of these profiles were targeted (empty: any profile)
    profiles: tuple[str, ...] = ()
    #: the telemetry policy its bundles carry (what they all say alike; None: no bundle recorded one)
    telemetry: dict[str, Any] | None = None
    #: the metering policy its bundles carry (None: not metered)
    metering: dict[str, Any] | None = None

    @property
    def published(self) -> list[Assignment]:
        return [a for a in self.assignments if a.status == "published"]

    @property
    def skipped(self) -> list[Assignment]:
        return [a for a in self.assignments if a.status == "skipped"]

    def assignment(self, device_id: str) -> Assignment:
        for a in self.assignments:
            if a.device_id == device_id:
                return a
        raise KeyError(device_id)

    def to_dict(self, *, assignments: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "requested": self.requested,
            "explicit": self.explicit,
            "devices": None if self.devices is None else list(self.devices),
            "tags": list(self.tags),
            "profiles": list(self.profiles),
            "urgent": self.urgent,
            "status": self.status,
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "snapshot_version": self.snapshot_version,
            "published": len(self.published),
            "skipped": len(self.skipped),
            "rollout": self.rollout,
            "telemetry": self.telemetry,
            "metering": self.metering,
        }
        if assignments:
            out["assignments"] = [a.to_dict() for a in self.assignments]
        return out


def _report_record(row: InstallReportRow) -> InstallReportRecord:
    report = InstallReport(
        status=row.status,
        reason=row.reason,
        bundle_id=row.bundle_id,
        sha256=row.sha256,
        slot=row.slot,
        active_bundle_id=row.active_bundle_id,
        error=row.error,
        timings=dict(row.timings or {}),
        at=row.reported_at,
    )
    received = aware(row.received_at)
    assert received is not None
    return InstallReportRecord(row.id, row.device_id, row.release_id, report, received)


def _deployment(row: DeviceDeploymentRow) -> Deployment:
    updated = aware(row.updated_at)
    assert updated is not None
    return Deployment(row.device_id, row.bundle_id, row.release_id, row.last_status, row.last_reason, updated)


@dataclass
class _Planned:
    device: DeviceRecord
    profile_name: str
    status: str
    reason: str = ""
    ref: str | None = None
    path: Path | None = None
    bundle_id: str | None = None
    sha256: str | None = None
    size: int | None = None
    selection: dict[str, Any] = field(default_factory=dict)


def _rollout_plan(plan: RolloutPlan | Mapping[str, Any] | None) -> RolloutPlan | None:
    if plan is None or isinstance(plan, RolloutPlan):
        return plan
    if isinstance(plan, Mapping):
        return RolloutPlan.from_dict(plan)  # SpecError names what is wrong
    raise UsageError(f"plan must be a RolloutPlan, a rollout plan document or None, got {type(plan).__name__}")


# --- the service ------------------------------------------------------------------------------
class ReleaseService:
    """Releases, install reports and the update repository of one workspace.

    ``clock`` (UTC ``datetime``) is the time the repository signs metadata at and the release
    records carry; the repository is created in the workspace on first use if there is none."""

    def __init__(self, workspace: Workspace, *, clock: Clock | None = None) -> None:
        self.workspace = workspace
        self._clock = clock or _utcnow
        self._sessions = session_factory(workspace.engine)
        self._devices = DeviceService(workspace.engine)
        self.health = HealthReports(workspace.engine, clock=self._now)
        self.rollouts = Rollouts(self)
        self._repo: UpdateRepository | None = None
        self._repo_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._fresh_until: datetime | None = None

    def _now(self) -> datetime:
        now = self._clock()
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)

    # --- the repository ---------------------------------------------------------------------
    @property
    def repository(self) -> UpdateRepository:
        """The workspace's update repository (created with the default expiry policy if absent)."""
        if self._repo is None:
            with self._repo_lock:
                if self._repo is None:
                    root = self.workspace.root
                    if not UpdateRepository.exists(root):
                        try:
                            UpdateRepository.init(root, clock=self._clock)
                        except WorkspaceError:
                            if not UpdateRepository.exists(root):  # not a lost race: a real problem
                                raise
                    self._repo = UpdateRepository.open(root, clock=self._clock)
        return self._repo

    def trust_anchor(self) -> tuple[bytes, list[bytes]]:
        """What a newly enrolled device needs: the repository's current root metadata (exact bytes)
        and the release public keys bundles are signed with."""
        return self.repository.root_bytes(), [release_public_key(self.workspace)]

    def _timestamp(self) -> tuple[int, int, datetime]:
        """(version, snapshot version, expiry) of the committed timestamp."""
        path = self.repository.metadata_dir / "timestamp.json"
        try:
            signed = json.loads(path.read_bytes())["signed"]
            return (
                int(signed["version"]),
                int(signed["meta"]["snapshot.json"]["version"]),
                datetime.fromisoformat(signed["expires"]).astimezone(UTC),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable timestamp metadata: {exc}") from exc

    def keep_fresh(self) -> RefreshResult | None:
        """Re-sign the timestamp (and whatever else is due) once less than half of its validity is
        left; None when nothing was due. Cheap when called often (see the module docstring)."""
        now = self._now()
        due = self._fresh_until
        if due is not None and now < due:
            return None
        with self._refresh_lock:
            repo = self.repository
            half = repo.expiry.timestamp / 2
            _, _, expires = self._timestamp()
            result = None
            if expires - now < half:
                result = repo.refresh()
                _, _, expires = self._timestamp()
            self._fresh_until = expires - half
            return result

    # --- creating releases ----------------------------------------------------------------------
    def _targets(
        self, devices: Sequence[str] | None, tags: Sequence[str], profiles: Sequence[str] = ()
    ) -> list[DeviceRecord]:
        wanted = set(tags)
        kinds = set(profiles)
        if devices is not None:
            if not devices:
                raise UsageError("'devices' is an empty list: name at least one device, or leave it out")
            chosen: list[DeviceRecord] = []
            for device_id in dict.fromkeys(devices):
                record = self._devices.get(device_id)  # NotFoundError for an unknown device
                if not record.active:
                    raise ConflictError(
                        f"device {device_id} is revoked; a release cannot target it", device_id=device_id
                    )
                chosen.append(record)
        else:
            chosen = self._devices.list(status="active")
        out = [d for d in chosen if wanted <= set(d.tags) and (not kinds or d.profile_name in kinds)]
        if not out:
            what = []
            if wanted:
                what.append(f"carrying tag(s) {', '.join(sorted(wanted))}")
            if kinds:
                what.append(f"of profile(s) {', '.join(sorted(kinds))}")
            raise NotFoundError(
                f"no active device {' and '.join(what) or 'enrolled'} matches this release", tags=sorted(wanted)
            )
        return out

    def _plan(
        self,
        device: DeviceRecord,
        *,
        explicit_ref: str | None,
        candidates: list[Candidate],
        out_dir: Path,
        telemetry: Callable[[str], dict[str, Any]],
        metering: dict[str, Any] | None = None,
    ) -> _Planned:
        plan = _Planned(device, device.profile_name, "skipped")
        try:
            profile = DeviceProfile.from_dict(device.profile, source=f"profile of device {device.id}")
        except SpecError as exc:
            plan.reason = f"the device's enrolled profile does not parse: {exc.message}"
            return plan
        plan.profile_name = profile.name
        context = self.health.latest_context(device.id) or DeviceContext()
        if explicit_ref is not None:
            plan.ref = explicit_ref
            plan.selection = {"explicit": True, "reason": "a full variant ref was given"}
        else:
            try:
                sel = select_variant(candidates, profile, context)
            except IncompatibleError as exc:
                plan.reason = f"no variant fits profile {profile.name}: {exc.message}"
                plan.selection = {"explicit": False, "context": context.to_dict()}
                return plan
            plan.ref = sel.chosen.ref
            plan.selection = {
                "explicit": False,
                "chosen": sel.chosen.ref,
                "reason": sel.reason,
                "explanations": dict(sel.explanations),
                "context": context.to_dict(),
            }
        path = out_dir / f"{device.id}{BUNDLE_SUFFIX}"
        table = telemetry(plan.ref)
        try:
            built = build_bundle(
                self.workspace,
                plan.ref,
                target=profile.name,
                device_public_key=device.wrapping_public,
                out=path,
                policies={"telemetry": table} if metering is None else {"telemetry": table, "metering": metering},
            )
        except TargetNotFoundError:
            plan.reason = (
                f"profile {profile.name} is not in this workspace's target catalog (bundles are built for catalog "
                "profiles: add it under targets/)"
            )
            return plan
        except IncompatibleError as exc:
            plan.reason = f"{plan.ref} cannot run on {profile.name}: {exc.message}"
            return plan
        plan.status = "published"
        plan.selection["telemetry"] = table
        if metering is not None:
            plan.selection["metering"] = metering
        plan.path = built.path
        plan.bundle_id = built.manifest.bundle_id
        plan.sha256 = built.sha256
        plan.size = built.size
        return plan

    def create_release(
        self,
        model_or_ref: str,
        *,
        devices: Sequence[str] | None = None,
        tags: Iterable[str] = (),
        profiles: Iterable[str] = (),
        urgent: bool = False,
        created_by: str = "",
        plan: RolloutPlan | Mapping[str, Any] | None = None,
        telemetry: Mapping[str, Any] | None = None,
        metering: Mapping[str, Any] | None = None,
    ) -> ReleaseRecord:
        """Select, build and publish a release (see the module docstring); returns it as recorded.

        With a rollout ``plan`` only the first stage's devices are published to now; the rest follow
        stage by stage (:mod:`tinymlops.release.rollouts`). Without one, every device at once.
        ``telemetry`` sets the bundles' telemetry policy (:mod:`tinymlops.release.telemetry`:
        ``enabled``, ``inputs``, ``privacy``; None: the default — on, inputs profiled, exact
        histograms); a bad value is a SpecError naming it, raised before anything is built.
        ``metering`` (``{"block": N}``, ``{}`` for the default block; None: free) makes every bundle
        metered (:mod:`tinymlops.release.metering`): devices serve it only under a license."""
        if not isinstance(urgent, bool):
            raise UsageError(f"urgent must be true or false, got {urgent!r}")
        tag_list = sorted(set(tags))
        parsed = parse_ref(model_or_ref)  # ModelRefError for a malformed ref
        registry = self.workspace.registry
        explicit_ref: str | None = None
        candidates: list[Candidate] = []
        if parsed.variant:
            explicit_ref = registry.resolve(parsed).ref  # ModelNotFoundError
        else:
            _, candidates = candidates_for(registry, str(parsed))
        profile_list = sorted(set(profiles))
        targets = self._targets(devices, tag_list, profile_list)
        rollout_plan = _rollout_plan(plan)
        telemetry_table(telemetry)  # checked before any bundle is built (the per-model tables are checked again)
        metering_policy = metering_table(metering, parsed.name)
        tables: dict[str, dict[str, Any]] = {}

        def table_for(ref: str) -> dict[str, Any]:
            if ref not in tables:
                tables[ref] = telemetry_table(telemetry, registry.resolve(ref).info.outputs)
            return tables[ref]

        with self._sessions() as session:
            busy = self.rollouts.busy_devices(session, [d.id for d in targets])
        if busy:
            held = ", ".join(f"{d} (release {r})" for d, r in sorted(busy.items())[:5])
            raise ConflictError(
                f"{len(busy)} device(s) are in a rollout that has not finished: {held}; complete, roll back or "
                "let it finish first",
                devices=sorted(busy),
            )

        release_id = secrets.token_hex(8)
        out_dir = self.workspace.root / RELEASES_DIR / release_id
        try:
            out_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise StoreError(f"{out_dir}: cannot create the release directory: {exc.strerror or exc}") from exc
        try:
            plans = [
                self._plan(
                    d,
                    explicit_ref=explicit_ref,
                    candidates=candidates,
                    out_dir=out_dir,
                    telemetry=table_for,
                    metering=metering_policy,
                )
                for d in targets
            ]
            published = [p for p in plans if p.status == "published"]
            now = self._now()
            with self._sessions() as session:
                session.add(
                    ReleaseRow(
                        id=release_id,
                        model=parsed.name,
                        requested=model_or_ref,
                        explicit=explicit_ref is not None,
                        device_filter=None if devices is None else list(dict.fromkeys(devices)),
                        tag_filter=tag_list,
                        profile_filter=profile_list or None,
                        urgent=urgent,
                        status="published" if published else "empty",
                        created_by=created_by[:64],
                        created_at=now,
                    )
                )
                session.flush()
                for p in plans:
                    session.add(
                        ReleaseAssignmentRow(
                            release_id=release_id,
                            device_id=p.device.id,
                            profile_name=p.profile_name,
                            status=p.status,
                            reason=p.reason,
                            ref=p.ref,
                            bundle_id=p.bundle_id,
                            bundle_sha256=p.sha256,
                            size_bytes=p.size,
                            target_path=TargetPath.device(p.device.id).path if p.status == "published" else None,
                            selection=p.selection,
                        )
                    )
                session.flush()
                if published:
                    repo = self.repository
                    with repo.edit() as edit:
                        self.rollouts.create(session, edit, release_id, rollout_plan, actor=created_by or "unknown")
                    release_row = session.get(ReleaseRow, release_id)
                    assert release_row is not None
                    release_row.snapshot_version = self._timestamp()[1]
                session.commit()
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        if published:
            self.repository.refresh()
            self._fresh_until = None
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
        return self.get_release(release_id)

    # --- reading releases ---------------------------------------------------------------------
    def _assemble(self, session: Any, rows: Sequence[ReleaseRow], *, reports: bool) -> list[ReleaseRecord]:
        ids = [r.id for r in rows]
        if not ids:
            return []
        assignment_rows = session.scalars(
            select(ReleaseAssignmentRow)
            .where(ReleaseAssignmentRow.release_id.in_(ids))
            .order_by(ReleaseAssignmentRow.release_id, ReleaseAssignmentRow.device_id)
        ).all()
        latest: dict[tuple[str, str], InstallReportRecord] = {}
        deployments: dict[str, Deployment] = {}
        if reports and assignment_rows:
            device_ids = sorted({a.device_id for a in assignment_rows})
            bundle_ids = sorted({a.bundle_id for a in assignment_rows if a.bundle_id})
            if bundle_ids:
                for row in session.scalars(
                    select(InstallReportRow)
                    .where(InstallReportRow.device_id.in_(device_ids), InstallReportRow.bundle_id.in_(bundle_ids))
                    .order_by(InstallReportRow.id)
                ).all():
                    latest[(row.device_id, row.bundle_id)] = _report_record(row)
            for row in session.scalars(
                select(DeviceDeploymentRow).where(DeviceDeploymentRow.device_id.in_(device_ids))
            ).all():
                deployments[row.device_id] = _deployment(row)
        by_release: dict[str, list[Assignment]] = {i: [] for i in ids}
        shipped: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        metered: dict[str, dict[str, Any]] = {}
        for a in assignment_rows:
            by_release[a.release_id].append(
                Assignment(
                    release_id=a.release_id,
                    device_id=a.device_id,
                    profile_name=a.profile_name,
                    status=a.status,
                    reason=a.reason,
                    ref=a.ref,
                    bundle_id=a.bundle_id,
                    bundle_sha256=a.bundle_sha256,
                    size_bytes=a.size_bytes,
                    target_path=a.target_path,
                    selection=dict(a.selection or {}),
                    latest_report=latest.get((a.device_id, a.bundle_id or "")),
                    deployment=deployments.get(a.device_id),
                    stage=a.stage,
                    published_at=aware(a.published_at),
                    withdrawn_at=aware(a.withdrawn_at),
                )
            )
            table = by_release[a.release_id][-1].telemetry
            if a.status == "published" and table is not None:
                shipped[a.release_id].append(table)
            metering = by_release[a.release_id][-1].metering
            if metering is not None:  # one table for the whole release (create_release builds one)
                metered[a.release_id] = metering
        rollouts = {
            row.release_id: {
                "status": row.status,
                "stage": row.stage,
                "stage_name": RolloutPlan.from_dict(row.plan).stages[row.stage].name,
                "stages": len(row.plan.get("stages", ())),
            }
            for row in session.scalars(select(RolloutRow).where(RolloutRow.release_id.in_(ids))).all()
        }
        out = []
        for r in rows:
            created = aware(r.created_at)
            assert created is not None
            out.append(
                ReleaseRecord(
                    id=r.id,
                    model=r.model,
                    requested=r.requested,
                    explicit=r.explicit,
                    devices=None if r.device_filter is None else tuple(r.device_filter),
                    tags=tuple(r.tag_filter or ()),
                    profiles=tuple(r.profile_filter or ()),
                    urgent=r.urgent,
                    status=r.status,
                    created_by=r.created_by,
                    created_at=created,
                    snapshot_version=r.snapshot_version,
                    assignments=tuple(by_release[r.id]),
                    rollout=rollouts.get(r.id),
                    telemetry=common_table(shipped[r.id]),
                    metering=metered.get(r.id),
                )
            )
        return out

    def get_release(self, release_id: str) -> ReleaseRecord:
        """A release with every device assignment, its latest install report and the device's deployment."""
        with self._sessions() as session:
            row = session.get(ReleaseRow, release_id)
            if row is None:
                raise NotFoundError(f"no release with id {release_id!r}", release_id=release_id)
            return self._assemble(session, [row], reports=True)[0]

    def list_releases(self, *, limit: int = 100) -> list[ReleaseRecord]:
        """The newest ``limit`` releases, newest first (assignments without reports)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise UsageError(f"limit must be an integer from 1 to {MAX_LIST}, got {limit!r}")
        with self._sessions() as session:
            rows = session.scalars(
                select(ReleaseRow).order_by(ReleaseRow.created_at.desc(), ReleaseRow.id).limit(limit)
            ).all()
            return self._assemble(session, rows, reports=False)

    # --- install reports ------------------------------------------------------------------------
    def record_install(self, device_id: str, report: InstallReport) -> InstallReportRecord:
        """Store what a device's agent reported and update the device's deployment."""
        if not isinstance(report, InstallReport):
            raise UsageError(f"record_install needs an InstallReport, got {type(report).__name__}")
        now = self._now()
        with self._sessions() as session:

            def release_of(bundle_id: str | None) -> str | None:
                if bundle_id is None:
                    return None
                return session.scalar(
                    select(ReleaseAssignmentRow.release_id)
                    .join(ReleaseRow, ReleaseRow.id == ReleaseAssignmentRow.release_id)
                    .where(ReleaseAssignmentRow.device_id == device_id, ReleaseAssignmentRow.bundle_id == bundle_id)
                    .order_by(ReleaseRow.created_at.desc())
                    .limit(1)
                )

            current = report.active_bundle_id
            if current is None and report.status == "installed":
                current = report.bundle_id
            report_release = release_of(report.bundle_id)
            current_release = report_release if current == report.bundle_id else release_of(current)
            row = InstallReportRow(
                device_id=device_id,
                release_id=report_release,
                status=report.status,
                reason=report.reason,
                bundle_id=report.bundle_id,
                sha256=report.sha256,
                slot=report.slot,
                active_bundle_id=report.active_bundle_id,
                error=report.error,
                timings=dict(report.timings),
                reported_at=report.at,
                received_at=now,
            )
            session.add(row)
            deployment = session.get(DeviceDeploymentRow, device_id, with_for_update=True)
            if deployment is None:
                deployment = DeviceDeploymentRow(device_id=device_id, bundle_id=current, release_id=current_release)
                session.add(deployment)
            elif current is not None and current != deployment.bundle_id:
                deployment.bundle_id = current
                deployment.release_id = current_release
            deployment.last_status = report.status
            deployment.last_reason = report.reason
            deployment.updated_at = now
            session.commit()
            record = _report_record(row)
        self.advance_quietly(record.release_id)
        return record

    def advance_quietly(self, release_id: str | None) -> None:
        """Judge the rollout a device's report (install, health, telemetry) is about; its failure
        never fails the report (logged: the report is stored and the next report or poll tries again)."""
        if release_id is None:
            return
        try:
            self.rollouts.advance(release_id, wait=False)
        except Exception:  # logged: the report is stored and the next report or poll tries again
            log.exception("advancing the rollout of release %s failed", release_id)

    def record_health(self, device_id: str, report: HealthReport) -> HealthReportRecord:
        """Store an agent's health report about the bundle it runs (see :mod:`tinymlops.release.health`)."""
        record = self.health.record(device_id, report)
        self.advance_quietly(record.release_id)
        return record

    def tick(self) -> None:
        """What the server does when a device polls: keep the timestamp fresh, move rollouts along
        (throttled; errors are logged, never passed to the device)."""
        try:
            self.rollouts.tick()
        except Exception:
            log.exception("advancing rollouts failed")

    def deployment(self, device_id: str) -> Deployment | None:
        with self._sessions() as session:
            row = session.get(DeviceDeploymentRow, device_id)
            return None if row is None else _deployment(row)

    # --- what a device may fetch ----------------------------------------------------------------
    @staticmethod
    def check_target_access(device: DeviceRecord, served_name: str) -> TargetPath:
        """The target a device asks for (``devices/<id>/<sha256>.bundle.tmlb`` as served): its own, or
        a cohort's it belongs to (one of its tags); anything else is :class:`AccessDeniedError`."""
        target, _ = TargetPath.from_served_name(served_name)  # SpecError (400) for anything malformed
        if target.scope == "devices" and target.name != device.id:
            raise AccessDeniedError(
                f"device {device.id} may not fetch another device's bundle ({target.path})", device_id=device.id
            )
        if target.scope == "cohorts" and target.name not in device.tags:
            raise AccessDeniedError(
                f"device {device.id} is not in cohort {target.name!r} and may not fetch its bundle",
                device_id=device.id,
            )
        return target


__all__ = [
    "REPOSITORY_PATH",
    "Assignment",
    "Deployment",
    "InstallReportRecord",
    "ReleaseRecord",
    "ReleaseService",
]
