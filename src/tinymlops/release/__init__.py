"""Releasing bundles to devices: the TUF update repository (and, later, rollout plans).

The repository (:class:`UpdateRepository`) publishes signed bundles per device
(``devices/<id>/bundle.tmlb``) or per cohort (``cohorts/<name>/bundle.tmlb``) with python-tuf's
metadata API; devices follow it with :class:`tinymlops.edge.updates.UpdateClient`.
Server side: not part of the edge closure.
"""

from tinymlops.release.keystore import ROLES, TufKeyStore
from tinymlops.release.repository import (
    ExpiryPolicy,
    PruneResult,
    PublishedTarget,
    RefreshResult,
    RepositoryEdit,
    RepositoryStatus,
    UpdateRepository,
)

__all__ = [
    "ROLES",
    "ExpiryPolicy",
    "PruneResult",
    "PublishedTarget",
    "RefreshResult",
    "RepositoryEdit",
    "RepositoryStatus",
    "TufKeyStore",
    "UpdateRepository",
]
