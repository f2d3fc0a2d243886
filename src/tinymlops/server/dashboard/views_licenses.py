"""What the license pages show, from the service the API and the CLI use
(:class:`~tinymlops.metering.licensing.LicenseService`; no HTML here).

* :func:`licenses_view` — the licenses (by default each chain's latest: active or revoked; ``all``
  adds the superseded ones) with their chain's usage, and the flags reconciliation raised: alerts
  first, then newest first; clone and rollback rows are marked :attr:`FlagRow.highlight`.
* :func:`license_detail` — one license, every license of its chain (root first), the chain's
  acknowledged position (branches, ``next_seq``, head) and the chain's flags; which actions its state
  allows (top up the chain's latest, revoke an active chain).

Server side (SQLAlchemy through the service): the edge closure never imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinymlops.metering.licensing import LicenseService

#: the flags the pages read at most (newest first); the audit endpoint pages through more
MAX_FLAGS = 500
#: the licenses the list page reads at most (newest first): a fleet's every license is tens of thousands
MAX_LICENSES = 500
#: the flag kinds a person must look at first: a device restored its ledger, or two devices share one
HIGHLIGHT_KINDS = frozenset({"clone", "rollback"})
#: the list's filters: each chain's latest license (default), or every license
SHOW = ("latest", "all")


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class LicenseRow:
    license_id: str
    device_id: str
    model: str
    status: str  # active | superseded | revoked
    queries: int
    previous_license_id: str | None
    root_license_id: str
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    used: int  # the chain's used queries: reserved on every branch (billed)
    licensed: int  # the chain's licensed queries
    remaining: int  # what the current branch may still reserve (LicenseView.chain_remaining)
    last_report_at: datetime | None
    alerts: int
    revoked_at: datetime | None
    revoke_reason: str | None
    min_version: int | None
    max_version: int | None
    issuer_key_id: str

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> LicenseRow:
        """From a ``LicenseView.to_dict()``."""
        return cls(
            license_id=doc["license_id"],
            device_id=doc["device_id"],
            model=doc["model"],
            status=doc["status"],
            queries=doc["queries"],
            previous_license_id=doc["previous_license_id"],
            root_license_id=doc["root_license_id"],
            valid_from=datetime.fromtimestamp(doc["valid_from"], UTC),
            valid_until=datetime.fromtimestamp(doc["valid_until"], UTC),
            issued_at=datetime.fromtimestamp(doc["issued_at"], UTC),
            used=doc["chain_used"],
            licensed=doc["chain_licensed"],
            remaining=doc["chain_remaining"],
            last_report_at=_at(doc["last_report_at"]),
            alerts=doc["alerts"],
            revoked_at=_at(doc["revoked_at"]),
            revoke_reason=doc["revoke_reason"],
            min_version=doc["min_version"],
            max_version=doc["max_version"],
            issuer_key_id=doc["issuer_key_id"],
        )


@dataclass(frozen=True)
class FlagRow:
    id: int
    device_id: str
    model: str | None
    license_id: str | None
    kind: str
    severity: str  # alert | info
    seq: int | None
    detail: str
    report_id: int | None
    created_at: datetime  # the first raising
    repeats: int  # times raised (coalesced into this row)
    last_at: datetime  # the last raising

    @property
    def highlight(self) -> bool:
        return self.kind in HIGHLIGHT_KINDS

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> FlagRow:
        """From a ``FlagView.to_dict()``."""
        return cls(
            id=doc["id"],
            device_id=doc["device_id"],
            model=doc["model"],
            license_id=doc["license_id"],
            kind=doc["kind"],
            severity=doc["severity"],
            seq=doc["seq"],
            detail=doc["detail"],
            report_id=doc["report_id"],
            created_at=datetime.fromtimestamp(doc["created_at"], UTC),
            repeats=doc["repeats"],
            last_at=datetime.fromtimestamp(doc["last_at"], UTC),
        )


def alerts_first(flags: list[FlagRow]) -> list[FlagRow]:
    """Alerts before infos, each newest first (the service lists newest first; the sort is stable)."""
    return sorted(flags, key=lambda f: f.severity != "alert")


@dataclass(frozen=True)
class ChainRow:
    device_id: str
    model: str
    root_license_id: str
    latest_license_id: str
    status: str  # active | revoked
    licensed: int
    reserved: int  # used: reserved on every branch (ChainView.reserved)
    next_seq: int
    head: str | None
    branches: int
    reports: int
    last_report_at: datetime | None
    alerts: int

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> ChainRow:
        """From a ``ChainView.to_dict()``."""
        return cls(
            device_id=doc["device_id"],
            model=doc["model"],
            root_license_id=doc["root_license_id"],
            latest_license_id=doc["latest_license_id"],
            status=doc["status"],
            licensed=doc["licensed"],
            reserved=doc["reserved"],
            next_seq=doc["next_seq"],
            head=doc["head"],
            branches=doc["branches"],
            reports=doc["reports"],
            last_report_at=_at(doc["last_report_at"]),
            alerts=doc["alerts"],
        )


@dataclass(frozen=True)
class LicensesView:
    show: str  # latest | all
    licenses: list[LicenseRow]
    flags: list[FlagRow]  # alerts first, then newest first
    chains: int  # distinct (device, model) chains among the licenses
    alerts: int  # alert flags listed
    truncated: bool = False  # more than ``read`` licenses: only the newest were read
    read: int = 0  # the most licenses read (MAX_LICENSES)


def licenses_view(licenses: LicenseService, *, show: str = "latest") -> LicensesView:
    """Each chain's latest license (``show="latest"``) or every license (``"all"``) among the newest
    :data:`MAX_LICENSES`, newest first, and the newest :data:`MAX_FLAGS` flags, alerts first."""
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}")
    rows = [LicenseRow.of(v.to_dict()) for v in licenses.list(limit=MAX_LICENSES + 1)]
    truncated = len(rows) > MAX_LICENSES
    rows = rows[:MAX_LICENSES]
    if show == "latest":
        rows = [r for r in rows if r.status != "superseded"]
    flags = alerts_first([FlagRow.of(f.to_dict()) for f in licenses.audit(limit=MAX_FLAGS)])
    return LicensesView(
        show=show,
        licenses=rows,
        flags=flags,
        chains=len({(r.device_id, r.model) for r in rows}),
        alerts=sum(1 for f in flags if f.severity == "alert"),
        truncated=truncated,
        read=MAX_LICENSES,
    )


@dataclass(frozen=True)
class LicenseDetail:
    license: LicenseRow
    chain_licenses: list[LicenseRow]  # root first, then each top-up
    chain: ChainRow
    flags: list[FlagRow]  # the chain's: alerts first, then newest first
    can_top_up: bool  # the chain's latest license (revoked included: a top-up reinstates the chain)
    can_revoke: bool  # an active chain's latest license


def license_detail(licenses: LicenseService, license_id: str) -> LicenseDetail:
    """License ``license_id`` with its chain; :class:`~tinymlops.errors.NotFoundError` for an unknown id."""
    row = LicenseRow.of(licenses.get(license_id).to_dict())
    same = [LicenseRow.of(v.to_dict()) for v in licenses.list(device_id=row.device_id, model=row.model)]
    chain_licenses = _chain_order([r for r in same if r.root_license_id == row.root_license_id])
    chain = ChainRow.of(licenses.chain(license_id).to_dict())
    flags = [FlagRow.of(f.to_dict()) for f in licenses.audit(license_id=license_id, limit=MAX_FLAGS)]
    return LicenseDetail(
        license=row,
        chain_licenses=chain_licenses,
        chain=chain,
        flags=alerts_first(flags),
        can_top_up=row.status != "superseded",
        can_revoke=row.status == "active",
    )


def _chain_order(rows: list[LicenseRow]) -> list[LicenseRow]:
    """The chain's licenses from the root along ``previous_license_id`` links (any left over: by issue time)."""
    by_previous = {r.previous_license_id: r for r in rows}
    out: list[LicenseRow] = []
    current = by_previous.get(None)
    while current is not None and current not in out:
        out.append(current)
        current = by_previous.get(current.license_id)
    rest = sorted((r for r in rows if r not in out), key=lambda r: r.issued_at)
    return out + rest


__all__ = [
    "HIGHLIGHT_KINDS",
    "MAX_FLAGS",
    "MAX_LICENSES",
    "SHOW",
    "ChainRow",
    "FlagRow",
    "LicenseDetail",
    "LicenseRow",
    "LicensesView",
    "alerts_first",
    "license_detail",
    "licenses_view",
]
