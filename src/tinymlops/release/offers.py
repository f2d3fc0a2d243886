"""What the update repository offers each device, kept in step with the repository.

Every change of what a device is offered goes through here, inside the caller's database
transaction and the caller's :class:`~tinymlops.release.repository.RepositoryEdit` (so the TUF
commit and the rows it describes are one change):

* :func:`publish` — a release's bundle becomes the device's offer. The assignment remembers what
  the device was offered just before (release, bundle, file): that is what a rollback offers again.
* :func:`withdraw` — a release is taken back from a device. If the device is still offered this
  release, the previous bundle is published again (marked urgent: going back must not wait for
  Wi-Fi, and the agent usually switches to its other A/B slot without downloading anything); with
  no previous bundle the device's target is removed and the device keeps what it runs. If a newer
  release has replaced this one for the device since, nothing is published.

``device_offers`` holds one row per device; files are workspace-relative paths of the bundle files
under ``releases/<release id>/``, which are never deleted by the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tinymlops.release.repository import RepositoryEdit
from tinymlops.release.schema import DeviceOfferRow, ReleaseAssignmentRow, ReleaseRow
from tinymlops.spec.update import TargetPath


@dataclass(frozen=True)
class WithdrawOutcome:
    """What :func:`withdraw` did for one device: ``restored`` (the previous bundle is offered again),
    ``removed`` (no previous bundle: the target is gone), ``superseded`` (a newer release owns the
    device's offer; nothing changed) or ``missing`` (the previous bundle file is gone: removed)."""

    device_id: str
    action: str
    previous_release_id: str | None = None


def _legacy_previous(session: Any, device_id: str, release_id: str) -> ReleaseAssignmentRow | None:
    """For devices published to before offers were recorded: their newest published assignment."""
    return session.scalars(
        select(ReleaseAssignmentRow)
        .join(ReleaseRow, ReleaseRow.id == ReleaseAssignmentRow.release_id)
        .where(
            ReleaseAssignmentRow.device_id == device_id,
            ReleaseAssignmentRow.release_id != release_id,
            ReleaseAssignmentRow.status == "published",
            ReleaseAssignmentRow.published_at.is_not(None),
            ReleaseAssignmentRow.withdrawn_at.is_(None),
        )
        .order_by(ReleaseAssignmentRow.published_at.desc())
        .limit(1)
    ).first()


def bundle_file(release_id: str, device_id: str) -> str:
    """The workspace-relative path of a release's bundle for one device."""
    return f"releases/{release_id}/{device_id}.tmlb"


def publish(
    session: Any,
    edit: RepositoryEdit,
    root: Path,
    row: ReleaseAssignmentRow,
    *,
    urgent: bool,
    now: datetime,
) -> None:
    """Offer ``row``'s bundle to its device (see the module docstring)."""
    assert row.status == "published" and row.bundle_id and row.bundle_sha256
    offer = session.get(DeviceOfferRow, row.device_id, with_for_update=True)
    if offer is not None:
        row.prev_release_id, row.prev_bundle_id = offer.release_id, offer.bundle_id
        row.prev_sha256, row.prev_file = offer.sha256, offer.file
    else:
        legacy = _legacy_previous(session, row.device_id, row.release_id)
        if legacy is not None:
            row.prev_release_id, row.prev_bundle_id = legacy.release_id, legacy.bundle_id
            row.prev_sha256, row.prev_file = legacy.bundle_sha256, bundle_file(legacy.release_id, legacy.device_id)
    file = bundle_file(row.release_id, row.device_id)
    edit.publish(root / file, device=row.device_id, urgent=urgent, release_id=row.release_id)
    row.published_at = now
    if offer is None:
        session.add(
            DeviceOfferRow(
                device_id=row.device_id,
                release_id=row.release_id,
                bundle_id=row.bundle_id,
                sha256=row.bundle_sha256,
                file=file,
                updated_at=now,
            )
        )
    else:
        offer.release_id, offer.bundle_id, offer.sha256 = row.release_id, row.bundle_id, row.bundle_sha256
        offer.file, offer.updated_at = file, now


def withdraw(
    session: Any, edit: RepositoryEdit, root: Path, row: ReleaseAssignmentRow, *, now: datetime
) -> WithdrawOutcome:
    """Take ``row``'s release back from its device (see the module docstring)."""
    row.withdrawn_at = now
    offer = session.get(DeviceOfferRow, row.device_id, with_for_update=True)
    if offer is None or offer.release_id != row.release_id:
        return WithdrawOutcome(row.device_id, "superseded")
    target = TargetPath.device(row.device_id)
    previous = root / row.prev_file if row.prev_file else None
    if previous is not None and previous.is_file() and row.prev_bundle_id and row.prev_sha256:
        edit.publish(previous, device=row.device_id, urgent=True, release_id=row.prev_release_id)
        offer.release_id, offer.bundle_id, offer.sha256 = row.prev_release_id, row.prev_bundle_id, row.prev_sha256
        offer.file, offer.updated_at = row.prev_file, now  # type: ignore[assignment]
        return WithdrawOutcome(row.device_id, "restored", row.prev_release_id)
    if edit.get(target) is not None:
        edit.unpublish(target)
    session.delete(offer)
    return WithdrawOutcome(row.device_id, "missing" if previous is not None else "removed")


__all__ = ["WithdrawOutcome", "bundle_file", "publish", "withdraw"]
